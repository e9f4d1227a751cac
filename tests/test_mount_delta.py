"""Fine-tunes stored as deltas of their base, read through a real mount: the FUSE threads decode delta chunks with
the compiled kernels (codec/_kernels.py) concurrently, and every byte must equal the original."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_delta import base_weights, finetune, xor_chunks
from test_mount import files_of, mounted, random_reads_in_threads, sha256

from modelfs.codec.frame import FLAG_SORT_BY_BASE
from modelfs.delta import base_options
from modelfs.store import Store


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_finetunes_stored_as_deltas_read_exactly_through_the_mount(tmp_path: Path, make_model, dtype: str) -> None:
    base = base_weights(7, dtype)
    cfg = {"config.json": b'{"hidden": 256}'}
    models = {
        "org/base": make_model(tmp_path / "base", base, cfg),
        "org/ft1": make_model(tmp_path / "ft1", finetune(base, 21), cfg),
        "org/ft2": make_model(tmp_path / "ft2", finetune(base, 22), cfg),
    }
    store = tmp_path / "store"
    Store.init(store, chunk_size=64 << 10)
    with Store.open(store) as s:
        for name, src in models.items():
            s.add(src, name, **base_options(s, "auto", src))
        assert s.has_deltas()
        for ft in ("org/ft1", "org/ft2"):
            sorted_chunks, total = xor_chunks(s, ft, FLAG_SORT_BY_BASE)
            assert sorted_chunks >= total // 2, (ft, sorted_chunks, total)
    # A cache of a few chunks: the threads' reads keep decoding delta chunks, and their bases, concurrently.
    with mounted(store, tmp_path / "mnt", "--cache-size", "256K") as mnt:
        weights = {mnt / name / "model.safetensors": (src / "model.safetensors").read_bytes()
                   for name, src in models.items()}
        failures = random_reads_in_threads(weights, reads=60)
        assert not failures, failures[:5]
        # fine-tunes first, so their delta chunks decode before the base's chunks are read for themselves
        for name in ("org/ft1", "org/ft2", "org/base"):
            source, served = files_of(models[name]), files_of(mnt / name)
            assert sorted(served) == sorted(source)
            for rel, path in source.items():
                assert sha256(served[rel]) == sha256(path), (name, rel)

