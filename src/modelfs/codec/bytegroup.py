"""Byte grouping: split each element's bytes into planes and code every plane on its own.

In a little-endian float tensor, byte ``i`` of every element forms plane ``i``: for BF16/F16 plane 1 holds the
sign and the exponent's high bits (low entropy in trained weights) and plane 0 the mantissa side (near random);
FP32 gives 4 planes, F64/I64 8. Each plane is coded by whichever of the allowed plane coders makes it smallest,
or stored raw when none pays; the choice is one mode byte per plane, so decoding needs nothing but the payload.

Payload of a byte-grouped chunk (little-endian)::

    u8 width                              element bytes = number of planes
    width x (u8 mode, u32 stored_len)     plane table
    plane data, in plane order            each decodes to n = raw_len // width bytes
    tail                                  raw_len - n * width bytes kept raw (a chunk that is not whole elements)

Stateless apart from the per-thread zstd contexts; thread-safe.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..dtypes import DType
from ..errors import IntegrityError
from . import _zstd

_WIDTH = struct.Struct("<B")
_PLANE = struct.Struct("<BI")
MODE_RAW = 0
MODE_ZSTD = 1


class PlaneCoder(Protocol):
    """Codes one plane; ``mode`` is the byte written in the plane table (stable, part of the format)."""

    mode: int

    def encode(self, plane: bytes) -> bytes: ...

    def decode(self, data: memoryview, n: int) -> bytes: ...


class ZstdPlane:
    mode = MODE_ZSTD

    def encode(self, plane: bytes) -> bytes:
        return _zstd.compress(plane)

    def decode(self, data: memoryview, n: int) -> bytes:
        return _zstd.decompress(data, n)


def plane_width(dtype: DType | None) -> int:
    """Bytes per element to group by: complex numbers are pairs of floats, so they group like their parts."""
    if dtype is None:
        return 1
    if dtype.kind == "complex":
        return max(1, dtype.itemsize // 2)
    return dtype.itemsize


def split_planes(raw: memoryview | bytes, width: int) -> tuple[list[bytes], bytes]:
    """Planes (each ``len(raw) // width`` bytes) and the tail that does not fill an element."""
    n = len(raw) // width
    arr = np.frombuffer(raw, dtype=np.uint8, count=n * width).reshape(n, width)
    planes = np.ascontiguousarray(arr.T)
    return [planes[i].tobytes() for i in range(width)], bytes(raw[n * width :])


def merge_planes(planes: Sequence[bytes | memoryview | np.ndarray], tail: bytes) -> bytes:
    """Inverse of :func:`split_planes`."""
    width = len(planes)
    n = len(planes[0]) if planes else 0
    out = np.empty((n, width), dtype=np.uint8)
    for i, p in enumerate(planes):
        out[:, i] = np.frombuffer(p, dtype=np.uint8)
    return out.tobytes() + tail if tail else out.tobytes()


def encode_planes(raw: memoryview, width: int, coders: Sequence[PlaneCoder]) -> bytes:
    """Split ``raw`` into ``width`` planes and code each with the coder that shrinks it most (raw if none does)."""
    planes, tail = split_planes(raw, width)
    return encode_plane_list(planes, tail, coders)


def encode_plane_list(planes: Sequence[bytes], tail: bytes, coders: Sequence[PlaneCoder]) -> bytes:
    """The byte-group payload of already split planes (all of one length)."""
    table = [_WIDTH.pack(len(planes))]
    body: list[bytes] = []
    for plane in planes:
        mode, data = MODE_RAW, plane
        for coder in coders:
            coded = coder.encode(plane)
            if len(coded) < len(data):
                mode, data = coder.mode, coded
        table.append(_PLANE.pack(mode, len(data)))
        body.append(data)
    return b"".join(table + body + [tail])


def decode_planes(payload: memoryview, raw_len: int, coders: Sequence[PlaneCoder]) -> bytes:
    """Inverse of :func:`encode_planes`; any inconsistency is an :class:`IntegrityError`."""
    return merge_planes(*decode_plane_list(payload, raw_len, coders))


def decode_plane_list(
    payload: memoryview, raw_len: int, coders: Sequence[PlaneCoder]
) -> tuple[list[bytes | memoryview], bytes]:
    """Inverse of :func:`encode_plane_list`: the planes (raw ones as views of ``payload``) and the tail."""
    if len(payload) < _WIDTH.size:
        raise IntegrityError("byte-group payload is empty")
    (width,) = _WIDTH.unpack_from(payload, 0)
    if width == 0:
        raise IntegrityError("byte-group payload has width 0")
    pos = _WIDTH.size + width * _PLANE.size
    if len(payload) < pos:
        raise IntegrityError("byte-group plane table is truncated")
    n = raw_len // width
    tail_len = raw_len - n * width
    by_mode = {c.mode: c for c in coders}
    planes: list[bytes | memoryview] = []
    for i in range(width):
        mode, size = _PLANE.unpack_from(payload, _WIDTH.size + i * _PLANE.size)
        data = payload[pos : pos + size]
        if len(data) != size:
            raise IntegrityError(f"byte-group plane {i} is truncated")
        pos += size
        if mode == MODE_RAW:
            if size != n:
                raise IntegrityError(f"raw byte-group plane {i} is {size} bytes, expected {n}")
            planes.append(data)
            continue
        coder = by_mode.get(mode)
        if coder is None:
            raise IntegrityError(f"byte-group plane {i} has unknown mode {mode}")
        plane = coder.decode(data, n)
        if len(plane) != n:
            raise IntegrityError(f"byte-group plane {i} decoded to {len(plane)} bytes, expected {n}")
        planes.append(plane)
    if len(payload) - pos != tail_len:
        raise IntegrityError(f"byte-group tail is {len(payload) - pos} bytes, expected {tail_len}")
    return planes, bytes(payload[pos:])


class BytegroupZstdCodec:
    """Codec v1 for multi-byte dtypes: byte planes, each zstd -3 or raw."""

    id = 2
    name = "bytegroup-zstd"
    _coders: tuple[PlaneCoder, ...] = (ZstdPlane(),)

    def encode(self, raw: memoryview, dtype: DType | None) -> bytes:
        return encode_planes(raw, plane_width(dtype), self._coders)

    def decode(self, payload: memoryview, raw_len: int) -> bytes:
        return decode_planes(payload, raw_len, self._coders)
