"""Ordered-difference frames stored in the order of the base's exponents (FLAG_SORT_BY_BASE): round trips for every
float width, the permutation itself, damage detection, golden bytes, the ingest choosing them, and codec 3's frames
undone straight from their byte planes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.codec import frame as frame_module
from modelfs.codec.bytegroup import split_planes
from modelfs.codec.difference import (
    base_order,
    exponent_key,
    sort_by_base,
    sub_delta,
    undo_sorted_sub_delta,
    undo_sorted_sub_delta_planes,
    undo_sub_delta,
    unsort_by_base,
)
from modelfs.codec.frame import (
    FLAG_SORT_BY_BASE,
    FLAG_SUB_MASK,
    HEADER_SIZE,
    decode_chunk,
    encode_chunk,
    read_header,
)
from modelfs.codec.huff import merge_decoded, rotate_sign
from modelfs.codec.registry import BYTEGROUP_HUFF, RAW
from modelfs.dtypes import DTYPES
from modelfs.errors import IntegrityError
from modelfs.ingest import _encode

FLOATS = ["BF16", "F16", "F32", "F64"]
NUMPY = {"BF16": None, "F16": "<f2", "F32": "<f4", "F64": "<f8"}


def family_chunk(dtype: str, n: int, seed: int) -> tuple[bytes, bytes]:
    """(fine-tune, base) bytes of ``n`` elements: normal weights, half of them moved by ~1% of the scale."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 0.05, n).astype("<f4")
    ft = base + rng.normal(0.0, 5e-4, n).astype("<f4") * (rng.random(n) < 0.5)
    if dtype == "BF16":
        return (ft.view("<u4") >> 16).astype("<u2").tobytes(), (base.view("<u4") >> 16).astype("<u2").tobytes()
    t = NUMPY[dtype]
    return ft.astype(t).tobytes(), base.astype(t).tobytes()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sort", [False, True])
def test_round_trip_every_float_width(dtype: str, sort: bool) -> None:
    d = DTYPES[dtype]
    raw, base = family_chunk(dtype, 3000, seed=d.itemsize)
    frame = encode_chunk(raw, d, base=base, sub_width=d.itemsize, sort_by_base_exponent=sort)
    flags = read_header(frame).flags
    assert bool(flags & FLAG_SORT_BY_BASE) == sort and flags & FLAG_SUB_MASK
    assert decode_chunk(frame, base=base) == raw


@pytest.mark.parametrize("codec_id", [None, BYTEGROUP_HUFF])
@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FLOATS), st.data())
def test_round_trip_arbitrary_bits(codec_id: int | None, dtype: str, data: st.DataObject) -> None:
    """The dtype's default codec (raw where nothing shrinks), and codec 3 forced: planes that do not shrink are
    stored raw and reach the kernel as views of the frame."""
    d = DTYPES[dtype]
    n = data.draw(st.integers(0, 300))
    raw = data.draw(st.binary(min_size=n * d.itemsize, max_size=n * d.itemsize))
    base = data.draw(st.binary(min_size=n * d.itemsize, max_size=n * d.itemsize))
    frame = encode_chunk(raw, d, base=base, sub_width=d.itemsize, sort_by_base_exponent=True, codec_id=codec_id)
    assert decode_chunk(frame, base=base) == raw


@pytest.mark.parametrize("width", [2, 4, 8])
def test_order_is_the_stable_argsort_of_the_exponent(width: int) -> None:
    base = np.random.default_rng(width).integers(0, 256, 4000 * width, dtype=np.uint8).tobytes()
    u = np.frombuffer(base, dtype=np.uint8).reshape(-1, width).astype(np.int64)
    key = ((u[:, -1] << 1) | (u[:, -2] >> 7)) & 0xFF
    assert (exponent_key(base, width) == key).all()
    expected = np.argsort(key, kind="stable")
    assert (base_order(base, width) == expected).all()
    data = np.random.default_rng(0).integers(0, 256, len(base), dtype=np.uint8).tobytes()
    assert unsort_by_base(sort_by_base(data, base, width), base, width) == data


# Six BF16 elements; base exponents 7f 78 80 78 7e 7f (sign ignored), so the stored order is elements 1 3 4 0 5 2.
# Zigzagged differences in element order: 2 0 0 4 0 1 (element 5, -1.0, grew one ulp in magnitude: ordered -1 -> 1);
# stored: 0 4 0 2 1 0.
GOLDEN_BASE = np.array([0x3F80, 0xBC00, 0x4000, 0x3C00, 0x3F00, 0xBF80], "<u2").tobytes()
GOLDEN_FT = np.array([0x3F81, 0xBC00, 0x4000, 0x3C02, 0x3F00, 0xBF81], "<u2").tobytes()
# Header (24 bytes: magic, version 1, codec 0 raw, flags 0x0a, raw_len 12, payload_len 12, xxh3), then the payload.
GOLDEN_FRAME = "4d46636801000a000c0000000c000000c1e69a89da8ac0af000004000000020001000000"


def test_golden_sorted_frame() -> None:
    frame = bytes.fromhex(GOLDEN_FRAME)
    assert read_header(frame).flags == FLAG_SORT_BY_BASE | (1 << 1)  # sorted, difference of 2-byte elements
    assert frame[HEADER_SIZE:] == np.array([0, 4, 0, 2, 1, 0], "<u2").tobytes()
    assert decode_chunk(frame, base=GOLDEN_BASE) == GOLDEN_FT
    bf16 = DTYPES["BF16"]
    assert (
        encode_chunk(GOLDEN_FT, bf16, base=GOLDEN_BASE, sub_width=2, sort_by_base_exponent=True, codec_id=RAW) == frame
    )


def test_damage_is_an_integrity_error() -> None:
    d = DTYPES["BF16"]
    raw, base = family_chunk("BF16", 4096, seed=7)
    frame = bytearray(encode_chunk(raw, d, base=base, sub_width=2, sort_by_base_exponent=True))
    with pytest.raises(IntegrityError, match="without its base"):
        decode_chunk(bytes(frame))
    other = family_chunk("BF16", 4096, seed=8)[1]
    with pytest.raises(IntegrityError):  # a wrong base permutes and un-differences wrongly: the checksum catches it
        decode_chunk(bytes(frame), base=other)
    flipped = bytearray(frame)
    flipped[-5] ^= 0x40
    with pytest.raises(IntegrityError):
        decode_chunk(bytes(flipped), base=base)
    for bad in (FLAG_SORT_BY_BASE, FLAG_SORT_BY_BASE | 1):  # sorted without a difference, or with XOR
        forged = bytearray(frame)
        forged[6:8] = bad.to_bytes(2, "little")
        with pytest.raises(IntegrityError, match="unknown flags"):
            decode_chunk(bytes(forged), base=base)


def test_sorting_needs_a_difference() -> None:
    raw, base = family_chunk("BF16", 16, seed=1)
    with pytest.raises(ValueError):
        encode_chunk(raw, DTYPES["BF16"], base=base, sort_by_base_exponent=True)
    with pytest.raises(ValueError):
        encode_chunk(raw, DTYPES["BF16"], sub_width=2, sort_by_base_exponent=True)


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_ingest_keeps_the_sorted_frame_when_smaller(dtype: str) -> None:
    d = DTYPES[dtype]
    raw, base = family_chunk(dtype, 1 << 16, seed=3)
    frame = _encode(raw, d, lambda: base)
    unsorted = encode_chunk(raw, d, base=base, sub_width=d.itemsize)
    assert read_header(frame).flags & FLAG_SORT_BY_BASE
    assert len(frame) < len(unsorted)
    assert decode_chunk(frame, base=base) == raw


# The compiled kernels (codec/_kernels.py) against a pure-numpy reference of the same permutation.


def reference_order(base: bytes, width: int) -> np.ndarray:
    u = np.frombuffer(base, dtype=np.uint8).reshape(-1, width).astype(np.int64)
    return np.argsort(((u[:, -1] << 1) | (u[:, -2] >> 7)) & 0xFF, kind="stable")


def reference_undo_sorted(data: bytes, base: bytes, width: int) -> bytes:
    t = np.dtype(f"<u{width}")
    unsorted = np.empty(len(data) // width, dtype=t)
    unsorted[reference_order(base, width)] = np.frombuffer(data, dtype=t)
    return undo_sub_delta(unsorted.tobytes(), base, width)


def assert_kernels_match(data: bytes, base: bytes, width: int) -> None:
    order = reference_order(base, width)
    t = np.dtype(f"<u{width}")
    assert (base_order(base, width) == order).all()
    sorted_ = sort_by_base(data, base, width)
    assert sorted_ == np.frombuffer(data, dtype=t)[order].tobytes()
    assert unsort_by_base(sorted_, base, width) == data
    assert undo_sorted_sub_delta(data, base, width) == reference_undo_sorted(data, base, width)


def elements(n: int, width: int, seed: int, keys: int = 256) -> bytes:
    """``n`` random elements whose exponent keys take ``keys`` values (1: every key equal)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True) >> np.uint64(64 - 8 * width)
    shift = np.uint64(8 * width - 9)
    key = rng.integers(0, keys, n, dtype=np.uint64) + np.uint64(100 if keys < 256 else 0)
    u = (u & ~(np.uint64(0xFF) << shift)) | (key << shift)
    return u.astype(f"<u{width}").tobytes()


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize(("n", "keys"), [(0, 256), (1, 256), (5000, 1), (5000, 3), (5001, 256)])
def test_kernels_equal_the_numpy_reference(width: int, n: int, keys: int) -> None:
    base = elements(n, width, seed=n + width, keys=keys)
    assert len(set(exponent_key(base, width).tolist())) <= keys
    assert_kernels_match(elements(n, width, seed=1), base, width)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.data())
def test_kernels_equal_the_numpy_reference_on_any_bits(width: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 400))
    base = data.draw(st.binary(min_size=n * width, max_size=n * width))
    assert_kernels_match(data.draw(st.binary(min_size=n * width, max_size=n * width)), base, width)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_kernels_read_any_buffer_and_never_write_it(width: int) -> None:
    raw, base = (elements(3001, width, seed=s) for s in (2, 3))
    diff = sub_delta(raw, base, width)
    expected = reference_undo_sorted(sort_by_base(diff, base, width), base, width)
    assert expected == raw
    sorted_ = bytearray(sort_by_base(bytearray(diff), memoryview(base), width))
    before = bytes(sorted_)
    assert undo_sorted_sub_delta(sorted_, bytearray(base), width) == raw
    assert undo_sorted_sub_delta(memoryview(b"x" + sorted_)[1:], memoryview(b"x" + base)[1:], width) == raw  # unaligned
    assert sorted_ == before


def test_kernels_refuse_unequal_lengths() -> None:
    for fn in (sort_by_base, unsort_by_base, undo_sorted_sub_delta):
        with pytest.raises(ValueError, match="elements against a base"):
            fn(bytes(8), bytes(16), 2)


# Codec 3's planes handed to one kernel (difference.undo_sorted_sub_delta_planes) against the merged bytes' path.


def planes_of(data: bytes, width: int, rotated: bool) -> list[bytes]:
    """``data``'s byte planes as codec 3 stores them: the top two sign-rotated (huff.rotate_sign) if ``rotated``."""
    planes, _ = split_planes(data, width)
    if rotated:
        exp, rest = rotate_sign(np.frombuffer(planes[-1], np.uint8), np.frombuffer(planes[-2], np.uint8))
        planes[-1], planes[-2] = exp.tobytes(), rest.tobytes()
    return planes


def assert_planes_path_matches(data: bytes, base: bytes, width: int) -> None:
    expected = undo_sorted_sub_delta(data, base, width)
    for rotated in (False, True):
        planes = planes_of(data, width, rotated)
        assert merge_decoded(list(planes), b"", rotated) == data
        assert undo_sorted_sub_delta_planes(planes, rotated, base, width) == expected


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize(("n", "keys"), [(0, 256), (1, 256), (5000, 1), (5000, 3), (5001, 256)])
def test_planes_path_equals_the_bytes_path(width: int, n: int, keys: int) -> None:
    assert_planes_path_matches(elements(n, width, seed=5), elements(n, width, seed=n + width + 9, keys=keys), width)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.data())
def test_planes_path_equals_the_bytes_path_on_any_bits(width: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 400))
    base = data.draw(st.binary(min_size=n * width, max_size=n * width))
    assert_planes_path_matches(data.draw(st.binary(min_size=n * width, max_size=n * width)), base, width)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_planes_path_reads_any_buffer_and_refuses_wrong_planes(width: int) -> None:
    data, base = elements(3001, width, seed=6), elements(3001, width, seed=7)
    expected = undo_sorted_sub_delta(data, base, width)
    planes = planes_of(data, width, True)
    views = [memoryview(b"x" + p)[1:] for p in planes[:-1]] + [bytearray(planes[-1])]  # unaligned and writable
    assert undo_sorted_sub_delta_planes(views, True, memoryview(b"x" + base)[1:], width) == expected
    for wrong in (planes[:-1], [*planes, planes[0]], [p[:-1] for p in planes]):
        with pytest.raises(ValueError, match="planes of"):
            undo_sorted_sub_delta_planes(wrong, True, base, width)


@pytest.mark.parametrize("dtype", FLOATS)
def test_decode_chunk_undoes_codec_3_frames_from_the_planes(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def merged(*args: object) -> bytes:
        raise AssertionError("the planes were merged")

    monkeypatch.setattr(frame_module, "merge_decoded", merged)
    monkeypatch.setattr(frame_module, "undo_sorted_sub_delta", merged)
    d = DTYPES[dtype]
    raw, base = family_chunk(dtype, 3000, seed=11)
    frame = encode_chunk(raw, d, base=base, sub_width=d.itemsize, sort_by_base_exponent=True)
    assert read_header(frame).codec_id == BYTEGROUP_HUFF
    assert frame[HEADER_SIZE] == 1  # the sign rotation is set, and undone by the kernel
    assert decode_chunk(frame, base=base) == raw


@pytest.mark.parametrize(("dtype", "sub_width"), [("F32", 2), ("F64", 4), ("BF16", 4)])
def test_codec_3_planes_of_another_width_take_the_bytes_path(dtype: str, sub_width: int) -> None:
    """encode_chunk lets the difference's width differ from the dtype's, which sets the planes: such frames merge."""
    raw, base = family_chunk(dtype, 3000, seed=12)
    frame = encode_chunk(
        raw, DTYPES[dtype], base=base, sub_width=sub_width, sort_by_base_exponent=True, codec_id=BYTEGROUP_HUFF
    )
    assert decode_chunk(frame, base=base) == raw


@pytest.mark.parametrize("dtype", FLOATS)
def test_damaged_codec_3_planes_are_an_integrity_error(dtype: str) -> None:
    """Every byte of the payload flipped in turn (a sample of them for the wider types): an error or, where the
    flip changes nothing decoded (zstd frame fields), the right bytes; never wrong ones."""
    d = DTYPES[dtype]
    raw, base = family_chunk(dtype, 2048, seed=13)
    frame = encode_chunk(raw, d, base=base, sub_width=d.itemsize, sort_by_base_exponent=True)
    assert read_header(frame).codec_id == BYTEGROUP_HUFF
    errors = 0
    for pos in range(HEADER_SIZE, len(frame), 1 + len(frame) // 1500):
        damaged = bytearray(frame)
        damaged[pos] ^= 0x41
        try:
            assert decode_chunk(bytes(damaged), base=base) == raw
        except IntegrityError:
            errors += 1
    assert errors > 0
    for cut in (len(frame) - 1, HEADER_SIZE + 1):
        truncated = bytearray(frame[:cut])
        truncated[12:16] = (cut - HEADER_SIZE).to_bytes(4, "little")  # a consistent payload_len, a short payload
        with pytest.raises(IntegrityError):
            decode_chunk(bytes(truncated), base=base)
    forged = bytearray(frame)
    forged[HEADER_SIZE] = 2  # no such reorder value
    with pytest.raises(IntegrityError, match="reorder byte"):
        decode_chunk(bytes(forged), base=base)
    forged[HEADER_SIZE] = 0  # the rotation dropped: planes decode, the elements are wrong, the checksum says so
    with pytest.raises(IntegrityError, match="checksum"):
        decode_chunk(bytes(forged), base=base)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)


def test_cli_does_not_import_numba() -> None:
    """numba's import takes ~0.5 s; only decoding or encoding a sorted difference pays it."""
    done = run_python("import sys, modelfs.cli; print('numba' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_kernels_work_without_a_writable_cache() -> None:
    """A read-only install with no writable user cache: numba finds no cache locator and the kernels compile in
    memory instead of failing (simulated by making every cache directory refuse its write probe)."""
    code = """
import numba.core.caching as caching
def refuse(self):
    raise PermissionError("read-only")
caching._CacheLocator.ensure_cache_path = refuse
from modelfs.codec.difference import sort_by_base, undo_sorted_sub_delta, sub_delta
raw, base = bytes(range(200)), bytes(range(56, 256))
sorted_ = sort_by_base(sub_delta(raw, base, 2), base, 2)
assert undo_sorted_sub_delta(sorted_, base, 2) == raw
import modelfs.codec._kernels as k
print(k.unsort_undo_difference._cache.__class__.__name__)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NullCache"
