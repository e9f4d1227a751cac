"""Compiled loops for the sorted ordered difference (difference.py): a counting sort by an 8-bit key, and its inverse
fused with undoing the difference, reading the elements either whole or as the byte planes of codec 3 (huff.py).

Why loops: the stable argsort of 8-bit keys is a counting sort, O(n): one histogram pass, then one pass over the
elements that reads (or writes) the 256 key buckets as sequential streams. numpy has no such primitive: its stable
argsort of the keys takes 11 ms per 512 Ki elements (a 1 MiB BF16 chunk) and a sort of packed keys 5-7 ms, then
applying the permutation 2-3 ms more. Here un-sorting that chunk and undoing its difference take ~1.3 ms, sorting
it ~2 ms. The decoder never builds the permutation: it fetches each element's difference from its key's bucket,
then undoes the difference in a second pass (faster than in the same loop, as one cursor per key is faster than four
runs of the elements walked side by side to break the chain of increments of one cursor).

Why the planes: codec 3 decodes a chunk into byte planes, sign-rotated for floats. Interleaving them back into
elements in numpy took 0.7 ms per 1 MiB BF16 chunk, more than half the un-sort; here it takes 0.06 ms (0.1 ms for
FP32), as a sequential pass that writes the sorted elements before the un-sort reads them (reading each element's
bytes from the planes in the un-sort's gather instead took 0.4-0.5 ms more: width times as many streams).

Why numba: it compiles these few loops at run time from the Python source, so building or testing the package needs
no C compiler. ``cache=True`` keeps the machine code in ``__pycache__`` (or the user's cache directory when the package
is read-only), so only the first call on a machine compiles (~1 s per element width); the first call in each process
still pays ~0.7 s of numba's own start-up, after its ~0.4 s import. difference.py therefore imports this module only
when a sorted difference is encoded or decoded. ``nogil=True`` lets the FUSE read threads decode in parallel.

The kernels take 1-D arrays of uint16/uint32/uint64 elements (numba compiles a version per type, the width a constant
in each), and planes as one read-only (width, n) uint8 array, and only read them; they check no bounds, so their
callers check the lengths. An element's key is difference.exponent_key, its top 9 bits without the sign.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import numba
import numpy as np
from numba.extending import overload

F = TypeVar("F", bound=Callable[..., object])
_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_BYTE = np.uint64(0xFF)
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _bits(elements: np.ndarray) -> int:
    """The bits of one element of ``elements``, a constant when compiled (:func:`_bits_constant`)."""
    return int(elements.dtype.itemsize * 8)


@overload(_bits)
def _bits_constant(elements) -> Callable[[np.ndarray], int]:
    """A constant per array type, so LLVM folds the shifts and masks and undoes the difference in uint16 lanes for
    BF16 instead of uint64 ones: 0.06 ms per 512 Ki elements instead of 0.33 ms with the width as a variable.
    ``elements`` (a numba type) has no annotation because numba requires the implementation's parameters to equal
    these, annotations included."""
    bits = elements.dtype.bitwidth
    return lambda elements: bits


def _jit(fn: F) -> F:
    """njit, caching the machine code when some cache directory is writable. When none is (a read-only package, no
    writable user cache, no NUMBA_CACHE_DIR) numba raises RuntimeError at decoration; then each process compiles."""
    try:
        return cast(F, numba.njit(cache=True, nogil=True)(fn))
    except RuntimeError:
        return cast(F, numba.njit(nogil=True)(fn))


@_jit
def _shift(elements: np.ndarray) -> np.uint64:
    """The bit position of the key: ``(element >> shift) & 0xFF`` is difference.exponent_key."""
    return np.uint64(_bits(elements) - 9)


@_jit
def _starts(base: np.ndarray) -> np.ndarray:
    """Per key, the index of its first element in the stable order: the exclusive prefix sum of the histogram. Four
    interleaved histograms, because a run of one exponent would otherwise chain every increment on the one before."""
    s = _shift(base)
    h = np.zeros((4, 256), dtype=np.uint64)
    n = base.size
    quads = n - n % 4
    for i in range(0, quads, 4):
        h[0, (np.uint64(base[i]) >> s) & _BYTE] += _ONE
        h[1, (np.uint64(base[i + 1]) >> s) & _BYTE] += _ONE
        h[2, (np.uint64(base[i + 2]) >> s) & _BYTE] += _ONE
        h[3, (np.uint64(base[i + 3]) >> s) & _BYTE] += _ONE
    for i in range(quads, n):
        h[0, (np.uint64(base[i]) >> s) & _BYTE] += _ONE
    starts = np.empty(256, dtype=np.uint64)
    total = _ZERO
    for k in range(256):
        starts[k] = total
        total += h[0, k] + h[1, k] + h[2, k] + h[3, k]
    return starts


@_jit
def sort_by_key(data: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``data`` in the stable order of the keys of ``base`` (as long): ``data[difference.base_order(base)]``."""
    s = _shift(base)
    pos = _starts(base)
    out = np.empty_like(data)
    for i in range(base.size):
        k = (np.uint64(base[i]) >> s) & _BYTE
        c = pos[k]
        out[c] = data[i]
        pos[k] = c + _ONE
    return out


@_jit
def unsort_by_key(sorted_: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Inverse of :func:`sort_by_key`."""
    s = _shift(base)
    pos = _starts(base)
    out = np.empty_like(sorted_)
    for i in range(base.size):
        k = (np.uint64(base[i]) >> s) & _BYTE
        c = pos[k]
        out[i] = sorted_[c]
        pos[k] = c + _ONE
    return out


@_jit
def unsort_undo_difference(sorted_: np.ndarray, base: np.ndarray) -> np.ndarray:
    """difference.undo_sub_delta of :func:`unsort_by_key`: the gathered zigzagged difference of each element is
    added to its base element as ordered integers."""
    out = unsort_by_key(sorted_, base)
    bits = _bits(base)
    top = np.uint64(bits - 1)  # the sign bit
    low = (_ONE << top) - _ONE  # the magnitude bits, flipped in negative values to order them (an involution)
    mask = _ALL >> np.uint64(64 - bits)
    for i in range(base.size):
        b = np.uint64(base[i])
        z = np.uint64(out[i])
        d = (z >> _ONE) ^ (_ZERO - (z & _ONE))
        o = ((b ^ (low & (_ZERO - (b >> top)))) + d) & mask
        out[i] = o ^ (low & (_ZERO - (o >> top)))
    return out


@_jit
def _unrotation(bits: int, rotated: bool) -> tuple[np.uint64, np.uint64, np.uint64]:
    """Masks ``(keep, sign, exponent)`` that undo huff.rotate_sign on an element's top 16 bits, stored as
    ``[e7..e0 s m6..m0]``: ``(x & keep) | ((x << 8) & sign) | ((x >> 1) & exponent)`` moves the sign back to the top
    and the exponent down one bit. Without the rotation they keep every bit, so the loop has no branch."""
    if not rotated:
        return _ALL, _ZERO, _ZERO
    shift = np.uint64(bits - 16)
    keep = (_ALL >> np.uint64(64 - bits)) & ~(np.uint64(0xFF80) << shift)
    return keep, np.uint64(0x8000) << shift, np.uint64(0x7F80) << shift


@_jit
def _merge_planes(planes: np.ndarray, base: np.ndarray, rotated: bool) -> np.ndarray:
    """The elements (of ``base``'s type) whose byte ``j`` is ``planes[j]``, the sign rotation undone if ``rotated``."""
    bits = _bits(base)
    keep, sign, exponent = _unrotation(bits, rotated)
    out = np.empty_like(base)
    for c in range(base.size):
        x = _ZERO
        for j in range(bits // 8):
            x |= np.uint64(planes[j, c]) << np.uint64(8 * j)
        out[c] = (x & keep) | ((x << np.uint64(8)) & sign) | ((x >> _ONE) & exponent)
    return out


@_jit
def planes_unsort_undo_difference(planes: np.ndarray, base: np.ndarray, rotated: bool) -> np.ndarray:
    """:func:`unsort_undo_difference` of the sorted differences held as byte planes (``planes[j]`` byte ``j`` of
    each, the top two sign-rotated if ``rotated``): what codec 3 decodes, without interleaving them in numpy."""
    return unsort_undo_difference(_merge_planes(planes, base, rotated), base)
