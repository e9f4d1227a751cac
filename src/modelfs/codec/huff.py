"""Codec 3, ``bytegroup-huff``: byte planes coded near their order-0 entropy, with the sign moved off the exponent.

zstd at level 3 lands well above a plane's entropy on weight exponents: its 3-6 byte matches cost more than they
save on such data. Forcing zstd to keep everything as literals (min match 7, a tiny hash table, fast strategy)
turns it into per-128 KiB-block Huffman coding (huff0, the same coder ZipNN calls), decoded in C by the ordinary
zstd decoder. Each plane still picks raw, zstd-3 or this literal mode, whichever is smallest.

Byte reorder (ZipNN's idea): in a float, the top byte holds the sign and the exponent's high 7 bits, and the next
byte the exponent's lowest bit. Rotating the top 9 bits ``[s e7..e0] -> [e7..e0 s]`` puts the whole exponent in
the top plane (low entropy, compressible) and the sign next to the mantissa (random anyway). On MiniLM BF16 that
lowers the per-chunk order-0 bound from 0.665 to 0.660 (bench/codecs.py). It is done on the two top planes with
uint8 arithmetic, so it costs little.

Payload: one byte ``reorder`` (0 or 1), then the byte-group payload of bytegroup.py (plane modes 0 raw, 1 zstd-3,
2 literal-only zstd). Thread-safe.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from ..dtypes import DType
from ..errors import IntegrityError
from . import _zstd
from .bytegroup import (
    PlaneCoder,
    ZstdPlane,
    decode_plane_list,
    encode_plane_list,
    merge_planes,
    plane_width,
    split_planes,
)

MODE_HUFF = 2

# Literal-only zstd: min_match 7 (the maximum) with a 64-entry hash table finds almost no matches, so blocks are
# Huffman-coded literals. On MiniLM BF16 exponent planes (512 KiB chunks): 0.330 of their size vs 0.421 at
# level 3 and 0.324 order-0 entropy; level 19 gives 0.330 too at ~40x the encode time.
_HUFF_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=17,
    hash_log=6,
    chain_log=6,
    search_log=1,
    min_match=7,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
    write_content_size=True,
)
_local = threading.local()


def _huff_compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "huff", None)
    if c is None:
        c = _local.huff = zstandard.ZstdCompressor(compression_params=_HUFF_PARAMS)
    return c


class HuffPlane:
    """A plane as literal-only zstd (Huffman). Decodes with the ordinary zstd decoder."""

    mode = MODE_HUFF

    def encode(self, plane: bytes) -> bytes:
        return _huff_compressor().compress(plane)

    def decode(self, data: memoryview, n: int) -> bytes:
        return _zstd.decompress(data, n)


def reorder_applies(dtype: DType | None) -> bool:
    """Floats of 2+ bytes have a sign bit above an exponent that straddles the top two bytes."""
    return dtype is not None and dtype.kind == "float" and dtype.itemsize >= 2


# uint8 multiplies instead of left shifts: numpy's uint8 << is not vectorized (98 us vs 12 us per 256 Ki elements)
_U8_2 = np.uint8(2)
_U8_128 = np.uint8(128)


def rotate_sign(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top plane ``s e7..e1``, next ``e0 m..`` -> exponent plane ``e7..e0``, next ``s m..`` (uint8 wraps)."""
    exp = (hi * _U8_2) | (lo >> 7)
    rest = (hi & 0x80) | (lo & 0x7F)
    return exp, rest


def merge_unrotated(planes: list[bytes | memoryview], tail: bytes) -> bytes:
    """Interleave planes back into elements, undoing :func:`rotate_sign` on the top two while writing them."""
    width = len(planes)
    if width == 2:
        return _merge_unrotated_16(planes[0], planes[1]) + tail
    n = len(planes[0])
    out = np.empty((n, width), dtype=np.uint8)
    for i in range(width - 2):
        out[:, i] = np.frombuffer(planes[i], dtype=np.uint8)
    rest = np.frombuffer(planes[width - 2], dtype=np.uint8)
    exp = np.frombuffer(planes[width - 1], dtype=np.uint8)
    # contiguous temporaries, then one strided store per plane: faster than ufuncs writing strided outputs
    out[:, width - 2] = (exp * _U8_128) | (rest & 0x7F)
    out[:, width - 1] = (rest & 0x80) | (exp >> 1)
    return out.tobytes() + tail if tail else out.tobytes()


def merge_decoded(planes: list[bytes | memoryview], tail: bytes, reorder: bool) -> bytes:
    """The chunk's bytes from what :meth:`BytegroupHuffCodec.decode_planes` returns."""
    return merge_unrotated(planes, tail) if reorder else merge_planes(planes, tail)


def _merge_unrotated_16(rest_plane: bytes | memoryview, exp_plane: bytes | memoryview) -> bytes:
    """:func:`merge_unrotated` of BF16/F16 as uint16 arithmetic: contiguous, where two strided byte stores cost a
    third more (0.41 against 0.55-0.69 ms per 1 MiB chunk)."""
    rest = np.frombuffer(rest_plane, dtype=np.uint8)
    exp = np.frombuffer(exp_plane, dtype=np.uint8)
    out = ((rest & 0x80) | (exp >> 1)).astype("<u2")
    out <<= np.uint16(8)
    out |= (exp * _U8_128) | (rest & 0x7F)
    return out.tobytes()


class BytegroupHuffCodec:
    """Byte planes (sign rotated next to the mantissa for floats), each raw, zstd-3 or Huffman-coded literals."""

    id = 3
    name = "bytegroup-huff"
    _coders: tuple[PlaneCoder, ...] = (ZstdPlane(), HuffPlane())
    # Float planes only try the literal mode: trying zstd-3 as well changed MiniLM's stored size by < 0.01 %
    # (BF16 0.66514 both ways, FP32 0.81881 vs 0.81886) and cost 4x the encode time (108 vs 491 MB/s).
    _float_coders: tuple[PlaneCoder, ...] = (HuffPlane(),)

    def encode(self, raw: memoryview, dtype: DType | None) -> bytes:
        width = plane_width(dtype)
        planes, tail = split_planes(raw, width)
        reorder = reorder_applies(dtype) and width >= 2
        if reorder:
            exp, rest = rotate_sign(_u8(planes[-1]), _u8(planes[-2]))
            planes[-1], planes[-2] = exp.tobytes(), rest.tobytes()
        coders = self._float_coders if dtype is not None and dtype.kind == "float" else self._coders
        return bytes([int(reorder)]) + encode_plane_list(planes, tail, coders)

    def decode(self, payload: memoryview, raw_len: int) -> bytes:
        return merge_decoded(*self.decode_planes(payload, raw_len))

    def decode_planes(self, payload: memoryview, raw_len: int) -> tuple[list[bytes | memoryview], bytes, bool]:
        """The decoded planes, the tail, and whether the top two planes are rotated (:func:`rotate_sign`), without
        merging them: frame.py undoes a sorted difference straight from the planes, saving the merge's time."""
        if len(payload) < 1 or payload[0] > 1:
            raise IntegrityError("bytegroup-huff payload has a bad reorder byte")
        planes, tail = decode_plane_list(payload[1:], raw_len, self._coders)
        reorder = bool(payload[0])
        if reorder and len(planes) < 2:
            raise IntegrityError("bytegroup-huff reorder set on a chunk without two planes")
        return planes, tail, reorder


def _u8(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)
