"""The ordered-difference delta: a fine-tuned float minus its base, as a small integer per element.

Float bits are sign-magnitude; flipping the magnitude bits of negative values gives integers whose two's-complement
order is the float order (an involution). The difference of those integers, zigzagged, is ~2k for a weight that moved
by k ulps, where XOR turns every carry across a mantissa boundary into a run of set bits. On the MiniLM-L6 BF16
fine-tune (bench/compress.py) it codes to 0.280 of the size against XOR's 0.326.

The differences can also be put in the order of the base's exponents (:func:`base_order`): the reader has the base
chunk, so it recomputes the permutation for free, and a weight's movement depends strongly on its magnitude, so
sorted planes make each 128 KiB Huffman block homogeneous. On the MiniLM-L6 BF16 fine-tunes that takes ft1 from
0.280 to 0.230 and ft2 from 0.309 to 0.257 (the bound of the 16-bit symbol given the base exponent is 0.219).
Pure functions, thread-safe.
"""

from __future__ import annotations

import numpy as np

Buffer = bytes | bytearray | memoryview
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
WIDTHS = tuple(_UINT)


def _ordered(u: np.ndarray, width: int) -> np.ndarray:
    t = _UINT[width]
    return u ^ ((u >> t(8 * width - 1)) * t((1 << (8 * width - 1)) - 1))


def sub_delta(raw: Buffer, base: Buffer, width: int) -> bytes:
    """Per element: zigzag((ordered(raw) - ordered(base)) mod 2**bits); ``len(raw)`` must be whole elements."""
    t = _UINT[width]
    a, b = np.frombuffer(raw, dtype=t), np.frombuffer(base, dtype=t)
    d = _ordered(a, width) - _ordered(b, width)
    return ((d << t(1)) ^ (t(0) - (d >> t(8 * width - 1)))).tobytes()


def undo_sub_delta(data: Buffer, base: Buffer, width: int) -> bytes:
    """Inverse of :func:`sub_delta`."""
    t = _UINT[width]
    z, b = np.frombuffer(data, dtype=t), np.frombuffer(base, dtype=t)
    d = (z >> t(1)) ^ (t(0) - (z & t(1)))
    return _ordered(_ordered(b, width) + d, width).tobytes()


# Keys of 8 bits and element indices under 2**24 fit one uint32 whose plain sort is the stable argsort of the keys:
# 5.5-7 ms per 512 Ki elements (a 1 MiB BF16 chunk of MiniLM) against 11 ms for np.argsort(kind="stable") of the
# keys (numpy 2.4, one core).
_PACKED_MAX = 1 << 24


def exponent_key(base: Buffer, width: int) -> np.ndarray:
    """Per element of ``base``: its top 9 bits without the sign, ``(hi << 1 | lo >> 7) & 0xFF`` of its two top bytes
    (the 8 exponent bits of BF16/F32; F16: 5 exponent + 3 mantissa bits; F64: the exponent's top 8 bits).

    On the MiniLM-L6 BF16 ft1 this key codes to 0.2304 of the size, the top byte (sign + 7 exponent bits) to 0.2436;
    adding mantissa bits gains under 0.001 (the Huffman tables are per 128 KiB block, coarser than the key).
    """
    u = np.frombuffer(base, dtype=np.uint8).reshape(-1, width)
    hi, lo = u[:, width - 1], u[:, width - 2]
    return (hi << np.uint8(1)) | (lo >> np.uint8(7))


def base_order(base: Buffer, width: int) -> np.ndarray:
    """The stable argsort of :func:`exponent_key` of ``base``: the order in which sorted delta elements are stored."""
    key = exponent_key(base, width)
    n = key.size
    if n >= _PACKED_MAX:
        return np.argsort(key, kind="stable")
    packed = key.astype(np.uint32)  # then in place: one 2 MiB buffer per 1 MiB BF16 chunk, not four
    packed <<= np.uint32(24)
    packed |= np.arange(n, dtype=np.uint32)
    packed.sort()
    packed &= np.uint32(_PACKED_MAX - 1)
    return packed


def sort_by_base(data: Buffer, base: Buffer, width: int) -> bytes:
    """``data``'s elements in :func:`base_order` of ``base``; ``len(data)`` must be whole elements."""
    return np.frombuffer(data, dtype=_UINT[width])[base_order(base, width)].tobytes()


def unsort_by_base(data: Buffer, base: Buffer, width: int) -> bytes:
    """Inverse of :func:`sort_by_base`."""
    sorted_ = np.frombuffer(data, dtype=_UINT[width])
    out = np.empty_like(sorted_)
    out[base_order(base, width)] = sorted_
    return out.tobytes()
