"""Parsing and validation of safetensors headers (safetensors_format.py)."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from modelfs.dtypes import DTYPES
from modelfs.errors import BadInputError
from modelfs.safetensors_format import (
    MAX_HEADER_LEN,
    SafetensorsLayout,
    looks_like_safetensors,
    parse_safetensors,
)


def build(header: object, data: bytes = b"", *, raw_header: bytes | None = None, pad: int = 0) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text + data


def parse(blob: bytes, name: str = "m.safetensors") -> SafetensorsLayout:
    return parse_safetensors(io.BytesIO(blob), len(blob), name=name)


def entry(dtype: str, shape: list[int], b: int, e: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


def check_tiling(layout: SafetensorsLayout) -> None:
    segs = layout.segments()
    assert segs[0].kind == "header" and segs[0].start == 0 and segs[0].end == layout.data_start
    pos = 0
    for s in segs:
        assert s.start == pos and s.end >= s.start
        if s.kind == "tensor":
            assert s.tensor is not None and (s.tensor.start, s.tensor.end) == (s.start, s.end)
        else:
            assert s.tensor is None and s.end > s.start
        pos = s.end
    assert pos == layout.file_size
    names = [s.tensor.name for s in segs if s.tensor is not None]
    assert sorted(names) == sorted(t.name for t in layout.tensors)


def test_simple_layout_and_segments() -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "b": entry("BF16", [2, 3], 16, 28),
        "a": entry("F32", [4], 0, 16),
        "e": entry("I64", [0, 5], 28, 28),
    }
    blob = build(header, bytes(range(28)) + b"PADPAD")
    layout = parse(blob)
    assert layout.header_len == len(blob) - 28 - 6 - 8
    assert layout.data_start == 8 + layout.header_len
    assert layout.metadata == {"format": "pt"}
    assert [t.name for t in layout.tensors] == ["a", "b", "e"]
    a, b, e = layout.tensors
    assert (a.start, a.end, a.shape, a.dtype.name) == (layout.data_start, layout.data_start + 16, (4,), "F32")
    assert a.numel == 4
    assert (b.start, b.end, b.numel) == (layout.data_start + 16, layout.data_start + 28, 6)
    assert e.start == e.end and e.numel == 0
    kinds = [(s.kind, s.end - s.start) for s in layout.segments()]
    assert kinds == [("header", layout.data_start), ("tensor", 16), ("tensor", 12), ("tensor", 0), ("gap", 6)]
    check_tiling(layout)


def test_gap_between_tensors_and_empty_tensor_at_same_offset() -> None:
    header = {"z": entry("U8", [3], 10, 13), "y": entry("U8", [0], 10, 10), "x": entry("U8", [2], 0, 2)}
    layout = parse(build(header, bytes(13)))
    assert [t.name for t in layout.tensors] == ["x", "y", "z"]
    segs = layout.segments()
    assert [(s.kind, s.start - layout.data_start, s.end - layout.data_start) for s in segs[1:]] == [
        ("tensor", 0, 2),
        ("gap", 2, 10),
        ("tensor", 10, 10),
        ("tensor", 10, 13),
    ]
    check_tiling(layout)


def test_no_tensors_and_header_padding() -> None:
    layout = parse(build({}, pad=7))
    assert layout.tensors == () and layout.metadata is None
    assert [s.kind for s in layout.segments()] == ["header"]
    check_tiling(layout)


BAD_CASES = [
    ("short", b"\x01\x00", r"shorter than the 8-byte header length"),
    ("hdr-too-long", struct.pack("<Q", 100) + b"{}", r"header length 100 is larger than the rest of the file"),
    ("not-utf8", build(None, raw_header=b'{"\xff": 1}'), r"not valid UTF-8"),
    ("bad-json", build(None, raw_header=b'{"a": '), r"not valid JSON"),
    ("not-object", build([1, 2]), r"must be an object, not list"),
    ("dup-key", build(None, raw_header=b'{"a": {}, "a": {}}'), r"duplicate key 'a'"),
    ("deep", build(None, raw_header=b"[" * 100000 + b"]" * 100000), r"nested too deeply|not valid JSON"),
    ("meta-not-dict", build({"__metadata__": [1]}), r"__metadata__ must be an object of strings"),
    ("meta-not-str", build({"__metadata__": {"k": 1}}), r"__metadata__\['k'\] must be a string"),
    ("entry-not-dict", build({"t": 5}), r"tensor 't': entry must be an object"),
    ("entry-missing", build({"t": {"dtype": "F32", "shape": []}}), r"missing \['data_offsets'\]"),
    ("entry-extra", build({"t": {**entry("U8", [1], 0, 1), "x": 1}}, b"\0"), r"unexpected \['x'\]"),
    ("dtype-not-str", build({"t": entry(3, [1], 0, 1)}, b"\0"), r"dtype must be a string"),  # type: ignore[arg-type]
    ("dtype-unknown", build({"t": entry("F12", [1], 0, 1)}, b"\0"), r"unknown dtype 'F12'"),
    ("shape-neg", build({"t": entry("U8", [-1], 0, 1)}, b"\0"), r"shape must be a list of non-negative integers"),
    ("shape-float", build({"t": entry("U8", [1.0], 0, 1)}, b"\0"), r"shape must be a list"),  # type: ignore[list-item]
    ("shape-bool", build({"t": entry("U8", [True], 0, 1)}, b"\0"), r"shape must be a list"),
    ("shape-not-list", build({"t": entry("U8", 1, 0, 1)}, b"\0"), r"shape must be a list"),  # type: ignore[arg-type]
    ("offs-len", build({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"\0"), r"data_offsets must be"),
    ("offs-neg", build({"t": entry("U8", [1], -1, 0)}, b"\0"), r"data_offsets must be"),
    ("offs-backwards", build({"t": entry("U8", [0], 1, 0)}, b"\0"), r"run backwards"),
    ("offs-past-end", build({"t": entry("U8", [4], 0, 4)}, b"\0\0"), r"end 4 is past the end of the data \(2 bytes\)"),
    ("size-mismatch", build({"t": entry("F32", [2], 0, 4)}, bytes(16)), r"needs 8 bytes, but data_offsets span 4"),
    ("huge-shape", build({"t": entry("F32", [2**62, 2**62], 0, 4)}, bytes(4)), r"needs more than the whole file"),
    ("sub-byte", build({"t": entry("F4", [3], 0, 2)}, bytes(2)), r"needs 1.5 bytes"),
    (
        "overlap",
        build({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}, bytes(6)),
        r"tensors 'a' .* and 'b' .* overlap",
    ),
    (
        "empty-inside",
        build({"a": entry("U8", [4], 0, 4), "b": entry("U8", [0], 2, 2)}, bytes(4)),
        r"empty tensor 'b' lies inside tensor 'a'",
    ),
    ("name-empty", build({"": entry("U8", [1], 0, 1)}, b"\0"), r"tensor name '' is empty or contains NUL"),
    ("name-nul", build({"a\x00b": entry("U8", [1], 0, 1)}, b"\0"), r"empty or contains NUL"),
    ("big-int", build(None, raw_header=b'{"t": ' + b"9" * 5000 + b"}"), r"not valid JSON"),
]


@pytest.mark.parametrize(("case", "blob", "pattern"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input(case: str, blob: bytes, pattern: str) -> None:
    with pytest.raises(BadInputError, match=pattern) as info:
        parse(blob, name="org/m/bad.safetensors")
    msg = str(info.value)
    assert msg.startswith("org/m/bad.safetensors: ") and "\n" not in msg


def test_absurd_header_length(tmp_path: Path) -> None:
    n = MAX_HEADER_LEN + 1
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.truncate(n + 8)  # sparse: costs no disk
    with open(path, "rb") as f, pytest.raises(BadInputError, match=r"header length 100000001 is absurd"):
        parse_safetensors(f, n + 8, name="big")


def test_truncated_read_is_bad_input() -> None:
    blob = build({"t": entry("U8", [2], 0, 2)}, b"ab")
    with pytest.raises(BadInputError, match="file truncated"):
        parse_safetensors(io.BytesIO(blob[:20]), len(blob), name="t")


def test_looks_like_safetensors() -> None:
    assert looks_like_safetensors("a/model-00001-of-00002.safetensors")
    assert looks_like_safetensors(Path("x.safetensors"))
    assert not looks_like_safetensors("config.json")
    assert not looks_like_safetensors("model.safetensors.index.json")


def test_matches_safetensors_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "emb.weight": rng.standard_normal((17, 5)).astype(np.float32),
        "h.0.bias": rng.standard_normal(3).astype(np.float16),
        "ids": np.arange(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float64),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "np"})
    blob = path.read_bytes()
    with open(path, "rb") as f:
        layout = parse_safetensors(f, path.stat().st_size, name=str(path))
    assert layout.metadata == {"format": "np"}
    check_tiling(layout)
    by_name = {t.name: t for t in layout.tensors}
    assert set(by_name) == set(tensors)
    with safe_open(str(path), framework="np") as sf:
        names = sf.keys()
        for name in names:
            t = by_name[name]
            arr = sf.get_tensor(name)
            assert t.shape == arr.shape
            assert blob[t.start : t.end] == np.ascontiguousarray(arr).tobytes()
            sl = sf.get_slice(name)
            assert t.dtype.name == sl.get_dtype()


# ---- property-based ------------------------------------------------------------------------------------------

NAMES = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[bytes, dict[str, tuple[str, tuple[int, ...], bytes]]]:
    names = draw(st.lists(NAMES.filter(lambda s: s != "__metadata__"), max_size=6, unique=True))
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    header: dict[str, object] = {}
    data = bytearray()
    dtypes = sorted(n for n, d in DTYPES.items() if d.bits % 8 == 0)
    for name in names:
        dtype = DTYPES[draw(st.sampled_from(dtypes))]
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        nbytes = dtype.itemsize * math.prod(shape)
        data += bytes(draw(st.integers(0, 3)))  # padding before
        raw = draw(st.binary(min_size=nbytes, max_size=nbytes))
        header[name] = entry(dtype.name, list(shape), len(data), len(data) + nbytes)
        data += raw
        tensors[name] = (dtype.name, shape, raw)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(NAMES, st.text(max_size=5), max_size=3))
    data += bytes(draw(st.integers(0, 3)))
    keys = list(header)
    order = draw(st.permutations(keys))
    return build({k: header[k] for k in order}, bytes(data), pad=draw(st.integers(0, 8))), tensors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_files())
def test_random_valid_files_parse_and_tile(case: tuple[bytes, dict[str, tuple[str, tuple[int, ...], bytes]]]) -> None:
    blob, tensors = case
    layout = parse(blob)
    check_tiling(layout)
    assert {t.name for t in layout.tensors} == set(tensors)
    for t in layout.tensors:
        dtype, shape, raw = tensors[t.name]
        assert (t.dtype.name, t.shape) == (dtype, shape)
        assert blob[t.start : t.end] == raw
    starts = [(t.start, t.end, t.name) for t in layout.tensors]
    assert starts == sorted(starts)
    assert b"".join(blob[s.start : s.end] for s in layout.segments()) == blob


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_only_bad_input(blob: bytes) -> None:
    try:
        check_tiling(parse(blob))
    except BadInputError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                    max_leaves=12),
       st.binary(max_size=64))
def test_fuzz_random_json_only_bad_input(header: object, data: bytes) -> None:
    try:
        check_tiling(parse(build(header, data)))
    except BadInputError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_header(data: st.DataObject) -> None:
    blob, _ = data.draw(valid_files())
    i = data.draw(st.integers(0, len(blob) - 1))
    mutated = blob[:i] + bytes([data.draw(st.integers(0, 255))]) + blob[i + 1 :]
    cut = data.draw(st.integers(0, len(mutated)))
    for candidate in (mutated, mutated[:cut]):
        try:
            check_tiling(parse(candidate))
        except BadInputError:
            pass
