"""Ordered-difference frames stored in the order of the base's exponents (FLAG_SORT_BY_BASE): round trips for every
float width, the permutation itself, damage detection, golden bytes, and the ingest choosing them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.codec import difference
from modelfs.codec.difference import base_order, exponent_key, sort_by_base, unsort_by_base
from modelfs.codec.frame import (
    FLAG_SORT_BY_BASE,
    FLAG_SUB_MASK,
    HEADER_SIZE,
    decode_chunk,
    encode_chunk,
    read_header,
)
from modelfs.codec.registry import RAW
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


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FLOATS), st.data())
def test_round_trip_arbitrary_bits(dtype: str, data: st.DataObject) -> None:
    d = DTYPES[dtype]
    n = data.draw(st.integers(0, 300))
    raw = data.draw(st.binary(min_size=n * d.itemsize, max_size=n * d.itemsize))
    base = data.draw(st.binary(min_size=n * d.itemsize, max_size=n * d.itemsize))
    frame = encode_chunk(raw, d, base=base, sub_width=d.itemsize, sort_by_base_exponent=True)
    assert decode_chunk(frame, base=base) == raw


@pytest.mark.parametrize("width", [2, 4, 8])
def test_order_is_the_stable_argsort_of_the_exponent(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    base = np.random.default_rng(width).integers(0, 256, 4000 * width, dtype=np.uint8).tobytes()
    u = np.frombuffer(base, dtype=np.uint8).reshape(-1, width).astype(np.int64)
    key = ((u[:, -1] << 1) | (u[:, -2] >> 7)) & 0xFF
    assert (exponent_key(base, width) == key).all()
    expected = np.argsort(key, kind="stable")
    assert (base_order(base, width) == expected).all()
    monkeypatch.setattr(difference, "_PACKED_MAX", 0)  # the path for chunks of 2**24 elements or more
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
