"""The chunk frame: a self-describing envelope around one compressed chunk.

Layout (little-endian, 24-byte header then the payload)::

    0  4s  magic        b"MFch"
    4  u8  version      1
    5  u8  codec_id     see registry.py (0 raw, 1 zstd, 2 bytegroup-zstd, ...)
    6  u16 flags        bit 0 FLAG_XOR_BASE: the decoded payload is XORed with the base chunk's raw bytes;
                        bits 1-2 (FLAG_SUB_MASK) 1/2/3: the decoded payload is the ordered difference against the
                        base chunk (codec/difference.py) of 2/4/8-byte elements; at most one delta kind is set;
                        bit 3 FLAG_SORT_BY_BASE (only with bits 1-2): the differences are stored in the stable order
                        of the base elements' exponents (difference.base_order)
    8  u32 raw_len      bytes of the chunk once decoded
    12 u32 payload_len  bytes that follow the header
    16 u64 checksum     xxh3_64 of the final raw bytes (after undoing the XOR)

Every encode is decoded and compared before it is returned (restic's habit), and every decode checks the
checksum: a damaged frame is an :class:`IntegrityError`, never wrong bytes. A sorted difference coded by codec 3
(bytegroup-huff) in one plane per byte of its elements, as ingest writes them, is decoded to its byte planes and
undone from them in one kernel, never merged into a buffer of elements first: that merge was a quarter of its
decode time. Thread-safe.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import xxhash

from ..dtypes import DType
from ..errors import IntegrityError
from .difference import sort_by_base, sub_delta, undo_sorted_sub_delta, undo_sorted_sub_delta_planes, undo_sub_delta
from .huff import BytegroupHuffCodec, merge_decoded
from .registry import CODECS, RAW, Codec, default_codec_id

MAGIC = b"MFch"
VERSION = 1
FLAG_XOR_BASE = 1
FLAG_SUB_SHIFT = 1
FLAG_SUB_MASK = 0b110
SUB_WIDTHS = {1: 2, 2: 4, 3: 8}
FLAG_SORT_BY_BASE = 1 << 3
FLAGS_NEED_BASE = FLAG_XOR_BASE | FLAG_SUB_MASK
KNOWN_FLAGS = FLAG_XOR_BASE | FLAG_SUB_MASK | FLAG_SORT_BY_BASE
_HEADER = struct.Struct("<4sBBHIIQ")
HEADER_SIZE = _HEADER.size  # 24
# Chunks are 256 KiB-1 MiB; a header claiming more than this is damage, and must not make us allocate it.
MAX_RAW_LEN = 1 << 28

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class FrameHeader:
    codec_id: int
    flags: int
    raw_len: int
    payload_len: int
    checksum: int
    version: int = VERSION


def checksum(raw: Buffer) -> int:
    return xxhash.xxh3_64_intdigest(raw)


def read_header(buf: Buffer, chunk_id: int | None = None) -> FrameHeader:
    """Parse and sanity-check a frame header (magic, version, size bounds)."""
    if len(buf) < HEADER_SIZE:
        msg = f"frame truncated: {len(buf)} bytes, header needs {HEADER_SIZE}"
        raise IntegrityError(_where(chunk_id, msg), chunk_id)
    magic, version, codec_id, flags, raw_len, payload_len, digest = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise IntegrityError(_where(chunk_id, f"bad frame magic {magic!r}"), chunk_id)
    if version != VERSION:
        raise IntegrityError(_where(chunk_id, f"unsupported frame version {version}"), chunk_id)
    return FrameHeader(codec_id, flags, raw_len, payload_len, digest, version)


def encode_chunk(
    raw: Buffer,
    dtype: DType | None,
    *,
    base: Buffer | None = None,
    codec_id: int | None = None,
    sub_width: int | None = None,
    sort_by_base_exponent: bool = False,
) -> bytes:
    """Frame ``raw`` (optionally as the XOR against ``base``, or with ``sub_width`` as the ordered difference of
    elements of that many bytes, stored in the order of the base's exponents if ``sort_by_base_exponent``), verified
    by decoding it back.

    With ``codec_id`` None the dtype's default codec is used and a payload that does not shrink is stored raw;
    an explicit ``codec_id`` is used as given.
    """
    view = memoryview(raw).cast("B")
    n = len(view)
    if n > MAX_RAW_LEN:
        raise ValueError(f"chunk of {n} bytes exceeds the frame limit of {MAX_RAW_LEN}")
    flags = 0
    data = view
    if base is not None:
        if len(base) != n:
            raise ValueError(f"base chunk is {len(base)} bytes, chunk is {n}")
        if sub_width is None:
            if sort_by_base_exponent:
                raise ValueError("sorting by the base needs an ordered difference (sub_width)")
            data = memoryview(_xor(view, base))
            flags |= FLAG_XOR_BASE
        else:
            code = {w: c for c, w in SUB_WIDTHS.items()}.get(sub_width)
            if code is None or n % sub_width:
                raise ValueError(f"no ordered difference of {sub_width}-byte elements for a {n}-byte chunk")
            data = memoryview(sub_delta(view, base, sub_width))
            flags |= code << FLAG_SUB_SHIFT
            if sort_by_base_exponent:
                data = memoryview(sort_by_base(data, base, sub_width))
                flags |= FLAG_SORT_BY_BASE
    elif sort_by_base_exponent:
        raise ValueError("sorting by the base needs a base chunk")
    cid = default_codec_id(dtype) if codec_id is None else codec_id
    codec = CODECS.get(cid)
    if codec is None:
        raise ValueError(f"unknown codec id {cid}")
    payload = codec.encode(data, dtype)
    if codec_id is None and cid != RAW and len(payload) >= n:
        cid, payload = RAW, bytes(data)
    frame = _HEADER.pack(MAGIC, VERSION, cid, flags, n, len(payload), checksum(view)) + payload
    try:
        # bytes == bytes is a memcmp; bytes == memoryview compares element by element (5 ms per MiB)
        ok = decode_chunk(frame, base=base) == (raw if isinstance(raw, bytes) else view.tobytes())
    except IntegrityError as e:
        raise IntegrityError(f"codec {codec.name} failed to round-trip a {n}-byte chunk ({e})") from None
    if not ok:
        raise IntegrityError(f"codec {codec.name} failed to round-trip a {n}-byte chunk")
    return frame


def decode_chunk(
    frame: Buffer,
    *,
    base: Buffer | None = None,
    expected_checksum: int | None = None,
    chunk_id: int | None = None,
) -> bytes:
    """The raw bytes of a frame; any damage or inconsistency raises :class:`IntegrityError`."""
    h = read_header(frame, chunk_id)

    def fail(msg: str) -> IntegrityError:
        return IntegrityError(_where(chunk_id, msg), chunk_id)

    if len(frame) != HEADER_SIZE + h.payload_len:
        raise fail(f"frame is {len(frame)} bytes, header says {HEADER_SIZE + h.payload_len}")
    if h.raw_len > MAX_RAW_LEN:
        raise fail(f"frame claims {h.raw_len} raw bytes, over the limit of {MAX_RAW_LEN}")
    if (
        h.flags & ~KNOWN_FLAGS
        or (h.flags & FLAG_XOR_BASE and h.flags & FLAG_SUB_MASK)
        or (h.flags & FLAG_SORT_BY_BASE and not h.flags & FLAG_SUB_MASK)
    ):
        raise fail(f"frame has unknown flags {h.flags:#x}")
    sub_width = SUB_WIDTHS.get((h.flags & FLAG_SUB_MASK) >> FLAG_SUB_SHIFT)
    if sub_width is not None and h.raw_len % sub_width:
        raise fail(f"difference frame of {h.raw_len} bytes is not whole {sub_width}-byte elements")
    if expected_checksum is not None and expected_checksum != h.checksum:
        raise fail("frame checksum differs from the catalog's")
    codec = CODECS.get(h.codec_id)
    if codec is None:
        raise fail(f"unknown codec id {h.codec_id}")
    if h.flags & FLAGS_NEED_BASE:
        if base is None:
            raise fail("delta frame decoded without its base chunk")
        if len(base) != h.raw_len:
            raise fail(f"base chunk is {len(base)} bytes, frame needs {h.raw_len}")
    payload = memoryview(frame).cast("B")[HEADER_SIZE:]
    try:
        data = _decode_payload(codec, payload, h, base, sub_width)
    except IntegrityError as e:
        raise fail(f"{codec.name} payload damaged: {e}") from None
    except (ValueError, struct.error, IndexError, MemoryError) as e:
        raise fail(f"{codec.name} payload damaged: {type(e).__name__}: {e}") from None
    if checksum(data) != h.checksum:
        raise fail("checksum mismatch: chunk data is damaged")
    return data


def _decode_payload(
    codec: Codec, payload: memoryview, h: FrameHeader, base: Buffer | None, sub_width: int | None
) -> bytes:
    """The chunk's bytes, before the checksum: the payload decoded and any delta against ``base`` undone.
    decode_chunk has checked the header, and that ``base`` is there and as long as the chunk if the flags need it."""
    if h.flags & FLAG_SORT_BY_BASE and isinstance(codec, BytegroupHuffCodec):
        assert base is not None and sub_width is not None
        planes, tail, rotated = codec.decode_planes(payload, h.raw_len)
        # The planes are the dtype's bytes, the differences sub_width's: as many in every frame ingest writes. The
        # frames encode_chunk writes for a sub_width that is not the dtype's size take the merged bytes' path below.
        if len(planes) == sub_width:
            return undo_sorted_sub_delta_planes(planes, rotated, base, sub_width)
        data = merge_decoded(planes, tail, rotated)
    else:
        data = codec.decode(payload, h.raw_len)
    if len(data) != h.raw_len:
        raise IntegrityError(f"decoded to {len(data)} bytes, expected {h.raw_len}")
    if h.flags & FLAG_XOR_BASE:
        assert base is not None
        return _xor(data, base)
    if sub_width is None:
        return data
    assert base is not None
    if h.flags & FLAG_SORT_BY_BASE:
        return undo_sorted_sub_delta(data, base, sub_width)
    return undo_sub_delta(data, base, sub_width)


def _xor(a: Buffer, b: Buffer) -> bytes:
    return np.bitwise_xor(np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)).tobytes()


def _where(chunk_id: int | None, msg: str) -> str:
    return msg if chunk_id is None else f"chunk {chunk_id}: {msg}"
