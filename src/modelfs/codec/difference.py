"""The ordered-difference delta: a fine-tuned float minus its base, as a small integer per element.

Float bits are sign-magnitude; flipping the magnitude bits of negative values gives integers whose two's-complement
order is the float order (an involution). The difference of those integers, zigzagged, is ~2k for a weight that moved
by k ulps, where XOR turns every carry across a mantissa boundary into a run of set bits. On the MiniLM-L6 BF16
fine-tune (bench/compress.py) it codes to 0.280 of the size against XOR's 0.326.

The differences can also be put in the order of the base's exponents (:func:`base_order`): the reader has the base
chunk, so it recomputes the permutation for free, and a weight's movement depends strongly on its magnitude, so
sorted planes make each 128 KiB Huffman block homogeneous. On the MiniLM-L6 BF16 fine-tunes that takes ft1 from
0.280 to 0.230 and ft2 from 0.309 to 0.257 (the bound of the 16-bit symbol given the base exponent is 0.219).
The permutation is a counting sort by the 8-bit key, compiled with numba (_kernels.py, which says why). A sorted
difference coded by codec 3 is undone straight from its byte planes (:func:`undo_sorted_sub_delta_planes`), which
saves interleaving them into elements first. Pure functions, thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _elements(buf: Buffer, width: int) -> np.ndarray:
    """``buf`` as read-only elements: the kernels never write their inputs, and one array type per width means one
    compiled version per width instead of one more for every writable buffer."""
    a = np.frombuffer(buf, dtype=_UINT[width])
    a.flags.writeable = False
    return a


def _pair(data: Buffer, base: Buffer, width: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_elements` of both; the kernels do not check bounds, so unequal lengths must stop here."""
    a, b = _elements(data, width), _elements(base, width)
    if a.size != b.size:
        raise ValueError(f"{a.size} elements against a base of {b.size}")
    return a, b


def exponent_key(base: Buffer, width: int) -> np.ndarray:
    """Per element of ``base``: its top 9 bits without the sign, ``(hi << 1 | lo >> 7) & 0xFF`` of its two top bytes
    (the 8 exponent bits of BF16/F32; F16: 5 exponent + 3 mantissa bits; F64: the exponent's top 8 bits).

    On the MiniLM-L6 BF16 ft1 this key codes to 0.2304 of the size, the top byte (sign + 7 exponent bits) to 0.2436;
    adding mantissa bits gains under 0.001 (the Huffman tables are per 128 KiB block, coarser than the key).
    """
    t = _UINT[width]
    return (np.frombuffer(base, dtype=t) >> t(8 * width - 9)).astype(np.uint8)


def base_order(base: Buffer, width: int) -> np.ndarray:
    """The stable argsort of :func:`exponent_key` of ``base``: the order in which sorted delta elements are stored.

    The format's definition, in numpy; encoding and decoding never build it, the kernels below apply it in place.
    """
    return np.argsort(exponent_key(base, width), kind="stable")


# The functions below import the numba kernels when first called, not with this module: numba's import and start-up
# take ~1 s, which the CLI and every process that never meets a sorted difference should not pay.


def sort_by_base(data: Buffer, base: Buffer, width: int) -> bytes:
    """``data``'s elements in :func:`base_order` of ``base``; ``data`` and ``base`` must be as many whole elements."""
    from ._kernels import sort_by_key

    return sort_by_key(*_pair(data, base, width)).tobytes()


def unsort_by_base(data: Buffer, base: Buffer, width: int) -> bytes:
    """Inverse of :func:`sort_by_base`."""
    from ._kernels import unsort_by_key

    return unsort_by_key(*_pair(data, base, width)).tobytes()


def warm_up() -> None:
    """Load (or compile) the decode kernels for every width now: a mount with deltas calls this in the background so
    that its first delta read does not wait ~1 s for numba."""
    for width in WIDTHS:
        zero = bytes(width)
        undo_sorted_sub_delta(zero, zero, width)
        undo_sorted_sub_delta_planes([bytes(1)] * width, True, zero, width)


def undo_sorted_sub_delta(data: Buffer, base: Buffer, width: int) -> bytes:
    """``undo_sub_delta(unsort_by_base(data, base, width), base, width)`` in one compiled kernel."""
    from ._kernels import unsort_undo_difference

    return unsort_undo_difference(*_pair(data, base, width)).tobytes()


def undo_sorted_sub_delta_planes(planes: Sequence[Buffer], rotated: bool, base: Buffer, width: int) -> bytes:
    """:func:`undo_sorted_sub_delta` of the sorted differences given as ``width`` byte planes (plane ``j`` byte ``j``
    of each element; the top two as huff.rotate_sign made them if ``rotated``), as codec 3 decodes them: one kernel
    reads the planes, so they are never interleaved into a buffer of elements."""
    from ._kernels import planes_unsort_undo_difference

    b = _elements(base, width)
    if len(planes) != width or any(len(p) != b.size for p in planes):
        sizes = [len(p) for p in planes]
        raise ValueError(f"planes of {sizes} bytes for a base of {b.size} {width}-byte elements")
    # one (width, n) array: one argument type per width whatever buffers the planes are; the join costs 0.04 ms/MiB
    joined = np.frombuffer(b"".join(planes), dtype=np.uint8).reshape(width, b.size)
    joined.flags.writeable = False
    return planes_unsort_undo_difference(joined, b, rotated).tobytes()
