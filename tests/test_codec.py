"""The chunk frame and the v1 codecs (codec/frame.py, registry.py, basic.py, bytegroup.py)."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.codec import CODECS, FLAG_XOR_BASE, HEADER_SIZE, decode_chunk, encode_chunk, read_header
from modelfs.codec.bytegroup import merge_planes, split_planes
from modelfs.codec.registry import BYTEGROUP_HUFF, BYTEGROUP_ZSTD, RAW, ZSTD, default_codec_id
from modelfs.dtypes import DTYPES, DType
from modelfs.errors import IntegrityError

BF16 = DTYPES["BF16"]
F32 = DTYPES["F32"]
BF16_SAMPLE = bytes(b for i in range(64) for b in ((i * 37) & 0xFF, 0x3F))
F32_SAMPLE = bytes(b for i in range(32) for b in ((i * 37) & 0xFF, (i * 11) & 0xFF, 0x80 | (i & 1), 0x3D)) + b"xyz"

# Exact frames, pinned: decoding them must keep working forever (old stores). Encoding is pinned too; the zstd
# parts could legitimately change with a new libzstd, in which case only the encode half may be re-pinned.
GOLDEN: list[tuple[str, bytes, DType | None, int | None, bytes | None, str]] = [
    ("raw", b"modelfs", None, RAW, None, "4d466368010000000700000007000000f17dc4638f47a25d6d6f64656c6673"),
    (
        "zstd",
        b"ab" * 64,
        None,
        ZSTD,
        None,
        "4d466368010100008000000012000000d65d06869fb9dbfe28b52ffd20804d00001061620100bbd46101",
    ),
    (
        "bytegroup-bf16",
        BF16_SAMPLE,
        BF16,
        BYTEGROUP_ZSTD,
        None,
        ("4d46636801020000800000005c000000b2374131325d5483020040000000011100000000254a6f94b9de03284d7297bce106"
        "2b50759abfe4092e53789dc2e70c31567ba0c5ea0f34597ea3c8ed12375c81a6cbf0153a5f84a9cef3183d6287acd1f61b28"
        "b52ffd2040450000103f3f0100930016"),
    ),
    (
        "bytegroup-f32-odd",
        F32_SAMPLE,
        F32,
        BYTEGROUP_ZSTD,
        None,
        ("4d46636801020000830000007a0000008e7a26033c578fb204002000000000200000000111000000011100000000254a6f94"
        "b9de03284d7297bce1062b50759abfe4092e53789dc2e70c31567b000b16212c37424d58636e79848f9aa5b0bbc6d1dce7f2"
        "fd08131e29343f4a5528b52ffd20204500001080810100890e0b28b52ffd2020450000103d3d010022c00278797a"),
    ),
    (
        "xor-zstd",
        b"ab" * 64,
        None,
        None,
        b"ab" * 60 + b"cd" * 4,
        "4d466368010101008000000019000000d65d06869fb9dbfe28b52ffd208085000050000002060206020602060100330558",
    ),
]


@pytest.mark.parametrize(("case", "raw", "dtype", "codec_id", "base", "hexframe"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_frames(
    case: str, raw: bytes, dtype: DType | None, codec_id: int | None, base: bytes | None, hexframe: str
) -> None:
    frame = bytes.fromhex(hexframe)
    assert decode_chunk(frame, base=base) == raw
    assert encode_chunk(raw, dtype, base=base, codec_id=codec_id) == frame


def test_header_layout() -> None:
    frame = encode_chunk(b"modelfs", None, codec_id=RAW)
    assert HEADER_SIZE == 24
    assert frame[:4] == b"MFch" and frame[4] == 1
    _magic, _version, codec_id, flags, raw_len, payload_len, digest = struct.unpack_from("<4sBBHIIQ", frame)
    assert (codec_id, flags, raw_len, payload_len) == (RAW, 0, 7, 7)
    assert digest == xxhash.xxh3_64_intdigest(b"modelfs")
    h = read_header(frame)
    assert (h.codec_id, h.flags, h.raw_len, h.payload_len, h.checksum, h.version) == (0, 0, 7, 7, digest, 1)
    delta = encode_chunk(b"ab" * 64, None, base=bytes(128))
    assert read_header(delta).flags == FLAG_XOR_BASE
    assert read_header(delta).checksum == xxhash.xxh3_64_intdigest(b"ab" * 64)


def test_default_codec_choice() -> None:
    assert default_codec_id(None) == ZSTD
    for d in DTYPES.values():
        if d.itemsize == 1:
            assert default_codec_id(d) == ZSTD
        else:
            assert default_codec_id(d) == (BYTEGROUP_HUFF if d.kind == "float" else BYTEGROUP_ZSTD)
    bf16 = np.random.default_rng(1).standard_normal(4096).astype(np.float32).view(np.uint32) >> 16
    raw = bf16.astype(np.uint16).tobytes()
    assert read_header(encode_chunk(raw, BF16)).codec_id == BYTEGROUP_HUFF
    assert read_header(encode_chunk(raw, DTYPES["I16"])).codec_id == BYTEGROUP_ZSTD
    assert read_header(encode_chunk(b"a" * 1000, None)).codec_id == ZSTD


def test_incompressible_falls_back_to_raw() -> None:
    raw = os.urandom(5000)
    for dtype in (None, BF16, F32, DTYPES["U8"]):
        frame = encode_chunk(raw, dtype)
        assert read_header(frame).codec_id == RAW and len(frame) == HEADER_SIZE + len(raw)
    # an explicit codec id is used as given, even when it does not pay
    assert read_header(encode_chunk(raw, BF16, codec_id=BYTEGROUP_ZSTD)).codec_id == BYTEGROUP_ZSTD


def test_bytegroup_planes_are_byte_positions() -> None:
    raw = bytes(range(10))
    planes, tail = split_planes(memoryview(raw), 4)
    assert planes == [bytes([0, 4]), bytes([1, 5]), bytes([2, 6]), bytes([3, 7])] and tail == bytes([8, 9])
    assert merge_planes(planes, tail) == raw


def test_bytegroup_stores_mixed_plane_modes() -> None:
    """BF16 of trained-like weights: the mantissa-side plane stays raw, the exponent-side plane is compressed."""
    rng = np.random.default_rng(7)
    f32 = (rng.standard_normal(8192) * 0.05).astype(np.float32)
    raw = (f32.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    frame = encode_chunk(raw, BF16, codec_id=BYTEGROUP_ZSTD)
    payload = frame[HEADER_SIZE:]
    assert payload[0] == 2
    modes = [payload[1], payload[6]]
    assert modes == [0, 1]
    assert len(frame) < 0.8 * len(raw)


def sizes_for(dtype: DType) -> list[int]:
    k = dtype.itemsize
    return [0, 1, k - 1, k, k + 1, 3 * k, 1000 * k + (k - 1), 4099]


def make_raw(n: int, rng: np.random.Generator) -> bytes:
    """Half structured (compressible planes), half random."""
    structured = (rng.standard_normal(n // 8 + 1) * 0.02).astype(np.float64).tobytes()[: n // 2]
    return structured + rng.integers(0, 256, n - len(structured), dtype=np.uint8).tobytes()


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_round_trip_every_dtype_and_codec(dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(len(dtype_name))
    for n in sizes_for(dtype):
        raw = make_raw(n, rng)
        base = make_raw(n, rng)
        for codec_id in [None, *CODECS]:
            for b in (None, base):
                frame = encode_chunk(raw, dtype, base=b, codec_id=codec_id)
                assert decode_chunk(frame, base=b) == raw
                assert read_header(frame).raw_len == n


def test_xor_base_round_trip_and_cancellation() -> None:
    rng = np.random.default_rng(3)
    base_f = rng.standard_normal(65536).astype(np.float32)
    ft_f = base_f + rng.standard_normal(65536).astype(np.float32) * 1e-4
    base, ft = base_f.tobytes(), ft_f.tobytes()
    delta = encode_chunk(ft, F32, base=base)
    plain = encode_chunk(ft, F32)
    assert read_header(delta).flags & FLAG_XOR_BASE
    assert decode_chunk(delta, base=base) == ft
    assert len(delta) < len(plain)
    with pytest.raises(IntegrityError, match="without its base"):
        decode_chunk(delta)
    with pytest.raises(IntegrityError, match="base chunk is 4 bytes"):
        decode_chunk(delta, base=b"abcd")
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        decode_chunk(delta, base=ft)  # wrong base of the right size: never wrong bytes
    with pytest.raises(ValueError):
        encode_chunk(ft, F32, base=base[:-1])


def sample_frames() -> list[tuple[bytes, bytes, bytes | None]]:
    rng = np.random.default_rng(11)
    w = (rng.standard_normal(300) * 0.05).astype(np.float32)
    bf = (w.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    out: list[tuple[bytes, bytes, bytes | None]] = []
    for raw, dtype in ((bf, BF16), (w.tobytes(), F32), (b"config " * 40, None)):
        for codec_id in CODECS:
            out.append((encode_chunk(raw, dtype, codec_id=codec_id), raw, None))
    base = bytes(len(bf))
    out.append((encode_chunk(bf, BF16, base=base), bf, base))
    return out


def test_every_byte_flip_is_detected() -> None:
    for frame, raw, base in sample_frames():
        for i in range(len(frame)):
            for flip in (0x01, 0x80, 0xFF):
                bad = bytearray(frame)
                bad[i] ^= flip
                try:
                    out = decode_chunk(bytes(bad), base=base, chunk_id=42)
                except IntegrityError as e:
                    assert e.chunk_id == 42 and str(e).startswith("chunk 42: ")
                    continue
                assert out == raw, f"byte {i} ^ {flip:#x} gave wrong bytes"


def test_every_truncation_and_extension_is_detected() -> None:
    for frame, _raw, base in sample_frames():
        for cut in range(len(frame)):
            with pytest.raises(IntegrityError):
                decode_chunk(frame[:cut], base=base)
        with pytest.raises(IntegrityError, match="header says"):
            decode_chunk(frame + b"\0", base=base)


def set_header(frame: bytes, **fields: int | bytes) -> bytes:
    names = ["magic", "version", "codec_id", "flags", "raw_len", "payload_len", "checksum"]
    values = dict(zip(names, struct.unpack_from("<4sBBHIIQ", frame)))
    values.update(fields)
    return struct.pack("<4sBBHIIQ", *(values[n] for n in names)) + frame[HEADER_SIZE:]


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"magic": b"MFcx"}, "bad frame magic"),
        ({"version": 2}, "unsupported frame version 2"),
        ({"codec_id": 200}, "unknown codec id 200"),
        ({"flags": 0x8}, "unknown flags"),
        ({"raw_len": 1 << 30}, "over the limit"),
        ({"raw_len": 5}, "payload damaged|decoded to"),
        ({"payload_len": 3}, "header says"),
        ({"checksum": 12345}, "checksum mismatch"),
    ],
)
def test_header_damage_messages(fields: dict[str, int | bytes], pattern: str) -> None:
    frame = encode_chunk(BF16_SAMPLE, BF16)
    with pytest.raises(IntegrityError, match=pattern):
        decode_chunk(set_header(frame, **fields), chunk_id=7)


def test_expected_checksum_is_checked() -> None:
    frame = encode_chunk(BF16_SAMPLE, BF16)
    h = read_header(frame)
    assert decode_chunk(frame, expected_checksum=h.checksum) == BF16_SAMPLE
    with pytest.raises(IntegrityError, match="differs from the catalog"):
        decode_chunk(frame, expected_checksum=h.checksum ^ 1, chunk_id=3)


def test_read_header_rejects_short_buffer() -> None:
    with pytest.raises(IntegrityError, match="frame truncated"):
        read_header(b"MFch")


def test_encode_verifies_by_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    class Liar:
        id = 250
        name = "liar"

        def encode(self, raw: memoryview, dtype: DType | None) -> bytes:
            return bytes(raw)

        def decode(self, payload: memoryview, raw_len: int) -> bytes:
            return bytes(raw_len)

    monkeypatch.setitem(CODECS, 250, Liar())
    with pytest.raises(IntegrityError, match="failed to round-trip"):
        encode_chunk(b"x" * 100, None, codec_id=250)


def test_concurrent_encode_decode() -> None:
    rng = np.random.default_rng(5)
    chunks = [make_raw(65536 + i, rng) for i in range(16)]

    def work(raw: bytes) -> bool:
        return all(decode_chunk(encode_chunk(raw, d)) == raw for d in (BF16, F32, None))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, chunks * 2))


@settings(max_examples=250, deadline=None)
@given(
    st.binary(max_size=3000),
    st.sampled_from(sorted(DTYPES)),
    st.sampled_from([None, *sorted(CODECS)]),
    st.booleans(),
)
def test_property_round_trip(raw: bytes, dtype_name: str, codec_id: int | None, with_base: bool) -> None:
    base = bytes(reversed(raw)) if with_base else None
    frame = encode_chunk(raw, DTYPES[dtype_name], base=base, codec_id=codec_id)
    assert decode_chunk(frame, base=base) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.data())
def test_property_damaged_frames_never_give_wrong_bytes(raw: bytes, data: st.DataObject) -> None:
    codec_id = data.draw(st.sampled_from(sorted(CODECS)))
    frame = bytearray(encode_chunk(raw, BF16, codec_id=codec_id))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    try:
        assert decode_chunk(bytes(frame)) == raw
    except IntegrityError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_property_garbage_payloads(payload: bytes) -> None:
    for codec_id in CODECS:
        frame = struct.pack("<4sBBHIIQ", b"MFch", 1, codec_id, 0, 64, len(payload), 0) + payload
        with pytest.raises(IntegrityError):
            decode_chunk(frame)
