"""Codec 3, bytegroup-huff: sign rotation, literal-only (Huffman) planes, golden frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.codec import HEADER_SIZE, decode_chunk, encode_chunk, read_header
from modelfs.codec.bytegroup import merge_planes
from modelfs.codec.huff import MODE_HUFF, merge_unrotated, rotate_sign
from modelfs.codec.registry import BYTEGROUP_HUFF, BYTEGROUP_ZSTD
from modelfs.dtypes import DTYPES
from modelfs.errors import IntegrityError

BF16 = DTYPES["BF16"]


def lcg_bf16(n: int) -> bytes:
    """Deterministic BF16-like elements: a skewed sign/exponent byte and a near-constant low byte."""
    x, out = 12345, bytearray()
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        r = (x >> 16) & 0xFF
        hi = 0x3C if r < 128 else 0x3D if r < 192 else 0xBC if r < 224 else 0xBD if r < 240 else 0x3B
        out += bytes([0x80 if r & 1 else 0, hi])
    return bytes(out)


GOLDEN = [
    (
        "bf16-huff-plane",
        lcg_bf16(256),
        "BF16",
        (
            "4d4663680103000000020000d9000000f47f1c097315e8f001020268000000026500000028b52ffd600000f5020054028000"
            "808000800080800000808000008080808080008000800080000000800080800080008018002b59b44a0016600a29a5078890"
            "c1660170b52a1360df0a091c7209ce222a793f5da43c50d5c3301f060e596288a91a5818ac31002c28b52ffd600000dd0200"
            "928f1408e0e932a501805a03855da49e9e3844cfc62b259943a7569b497816ada2343f178c15a55fc9c541100867d0452a93"
            "2a5dadf40908b1ac4b27db16b3a9cb8a6164a5d0fbcc684721cb4cb28d22d3cce5c60a0100c3360b52"
        ),
    ),
    (
        "f32-odd",
        bytes(b for i in range(32) for b in ((i * 37) & 0xFF, (i * 11) & 0xFF, 0x80 | (i & 1), 0x3D)) + b"xyz",
        "F32",
        (
            "4d46636801030000830000007b0000008e7a26033c578fb20104002000000000200000000211000000021100000000254a6f"
            "94b9de03284d7297bce1062b50759abfe4092e53789dc2e70c31567b000b16212c37424d58636e79848f9aa5b0bbc6d1dce7"
            "f2fd08131e29343f4a5528b52ffd20204500001000010100890e0b28b52ffd2020450000107b7b010022c00278797a"
        ),
    ),
    (
        "i16-no-reorder",
        bytes(b for i in range(64) for b in (i & 0xFF, 0)),
        "I16",
        ("4d46636801030000800000005d000000b3e41f1355027cab000200400000000111000000000102030405060708090a0b0c0d"
        "0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "28b52ffd20404500001000000100930016"),
    ),
]


@pytest.mark.parametrize(("case", "raw", "dtype", "hexframe"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_frames(case: str, raw: bytes, dtype: str, hexframe: str) -> None:
    frame = bytes.fromhex(hexframe)
    assert decode_chunk(frame) == raw
    assert encode_chunk(raw, DTYPES[dtype], codec_id=BYTEGROUP_HUFF) == frame


def test_golden_plane_modes() -> None:
    bf16 = bytes.fromhex(GOLDEN[0][3])[HEADER_SIZE:]
    assert bf16[0] == 1 and bf16[1] == 2  # reorder on, two planes
    assert (bf16[2], bf16[7]) == (MODE_HUFF, MODE_HUFF)
    i16 = bytes.fromhex(GOLDEN[2][3])[HEADER_SIZE:]
    assert i16[0] == 0 and i16[1] == 2  # integers: no reorder, and zstd-3 is tried too
    assert (i16[2], i16[7]) == (0, 1)


def test_rotation_moves_exponent_into_top_plane() -> None:
    # BF16 1.0 = 0x3F80 (exp 127), -2.0 = 0xC000 (exp 128, sign set), 0.5 = 0x3F00 (exp 126)
    values = np.array([0x3F80, 0xC000, 0x3F00, 0x0001], dtype=np.uint16)
    lo = (values & 0xFF).astype(np.uint8)
    hi = (values >> 8).astype(np.uint8)
    exp, rest = rotate_sign(hi, lo)
    assert exp.tolist() == [127, 128, 126, 0]
    assert rest.tolist() == [0x00, 0x80, 0x00, 0x01]


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8), st.binary(min_size=0, max_size=64), st.data())
def test_merge_unrotated_inverts_rotation(width: int, seed: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 50))
    rng = np.random.default_rng(list(seed) or [0])
    planes = [rng.integers(0, 256, n, dtype=np.uint8) for _ in range(width)]
    tail = data.draw(st.binary(max_size=width - 1))
    exp, rest = rotate_sign(planes[-1], planes[-2])
    rotated = [p.tobytes() for p in planes[:-2]] + [rest.tobytes(), exp.tobytes()]
    assert merge_unrotated(list(rotated), tail) == merge_planes(planes, tail)


def trained_like_bf16(n: int, seed: int) -> bytes:
    w = (np.random.default_rng(seed).standard_normal(n) * 0.04).astype(np.float32)
    return ((w.view(np.uint32) + 0x7FFF + ((w.view(np.uint32) >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def test_beats_v1_on_trained_like_weights_and_picks_modes() -> None:
    raw = trained_like_bf16(1 << 17, 1)
    v1 = encode_chunk(raw, BF16, codec_id=BYTEGROUP_ZSTD)
    v3 = encode_chunk(raw, BF16)
    assert read_header(v3).codec_id == BYTEGROUP_HUFF
    assert len(v3) < 0.95 * len(v1)
    payload = v3[HEADER_SIZE:]
    modes = {1: payload[2], 2: payload[7]}  # plane 0 = sign + mantissa, plane 1 = exponent
    assert modes == {1: 0, 2: MODE_HUFF}
    assert decode_chunk(v3) == raw


@pytest.mark.parametrize("name", ["F16", "BF16", "F32", "F64", "C64"])
def test_float_round_trip_with_xor_base(name: str) -> None:
    dtype = DTYPES[name]
    base = trained_like_bf16(10_000, 2)[: 10_000 - 10_000 % dtype.itemsize + 3]
    raw = trained_like_bf16(10_000, 3)[: len(base)]
    for b in (None, base):
        frame = encode_chunk(raw, dtype, base=b, codec_id=BYTEGROUP_HUFF)
        assert decode_chunk(frame, base=b) == raw


def test_bad_reorder_byte_is_integrity_error() -> None:
    frame = bytearray(encode_chunk(trained_like_bf16(4096, 4), BF16))
    assert read_header(bytes(frame)).codec_id == BYTEGROUP_HUFF
    frame[HEADER_SIZE] = 2
    with pytest.raises(IntegrityError, match="reorder byte"):
        decode_chunk(bytes(frame))
