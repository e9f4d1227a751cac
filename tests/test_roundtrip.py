"""add → export round trips: random safetensors files (hypothesis) and the real MiniLM weights, byte-exact."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfs.dtypes import DTYPES
from modelfs.export import export_model
from modelfs.store import Store

BYTE_DTYPES = sorted(name for name, d in DTYPES.items() if d.bits % 8 == 0)


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """A valid safetensors file with random dtypes, shapes (empty and odd ones too), gaps, padding, key order."""
    count = draw(st.integers(0, 6))
    names = draw(st.lists(st.text("abcxyz._0123456789", min_size=1, max_size=12), min_size=count, max_size=count,
                          unique=True))
    header: dict[str, object] = {}
    data = b""
    entries = []
    for name in names:
        dtype = draw(st.sampled_from(BYTE_DTYPES))
        shape = draw(st.lists(st.integers(0, 37), min_size=0, max_size=3))
        nbytes = math.prod(shape) * DTYPES[dtype].bits // 8
        data += draw(st.binary(min_size=0, max_size=5))  # a gap before the tensor
        start = len(data)
        data += np.random.default_rng(draw(st.integers(0, 2**32))).bytes(nbytes)
        entries.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [start, len(data)]}))
    data += draw(st.binary(max_size=5))  # trailing bytes after the last tensor
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    for name, entry in draw(st.permutations(entries)):
        header[name] = entry
    text = json.dumps(header, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))).encode()
    text += b" " * draw(st.integers(0, 9))
    return len(text).to_bytes(8, "little") + text + data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(safetensors_files(), min_size=1, max_size=3), extra=st.binary(max_size=3000))
def test_random_safetensors_roundtrip(files: list[bytes], extra: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        for i, content in enumerate(files):
            (src / f"model-{i:05d}-of-{len(files):05d}.safetensors").write_bytes(content)
        (src / "notes.bin").write_bytes(extra)
        Store.init(root / "store", chunk_size=4096)
        with Store.open(root / "store") as store:
            store.add(src, "org/m")
            export_model(store, "org/m", root / "out")
            assert store.verify().problems == []
        for path in src.iterdir():
            assert (root / "out" / path.name).read_bytes() == path.read_bytes()


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_real_minilm_roundtrip(tmp_path, minilm_fp32, minilm_bf16):
    Store.init(tmp_path / "store")
    with Store.open(tmp_path / "store") as store:
        store.add(minilm_fp32, "sentence-transformers/all-MiniLM-L6-v2")
        store.add(minilm_bf16, "sentence-transformers/all-MiniLM-L6-v2-bf16")
        for name, src in [("sentence-transformers/all-MiniLM-L6-v2", minilm_fp32),
                          ("sentence-transformers/all-MiniLM-L6-v2-bf16", minilm_bf16)]:
            out = tmp_path / name.replace("/", "_")
            export_model(store, name, out)
            assert _digests(out) == _digests(src)
            shutil.rmtree(out)
        stats = store.stats()
        assert store.verify().problems == []
    # the tokenizer and other non-weight files are identical between the two models: stored once
    assert int(stats["saved_by_dedup"]) >= (minilm_fp32 / "tokenizer.json").stat().st_size
    assert float(stats["ratio"]) < 0.9
