"""Store tests: add → read/export round trips, dedup, rm/gc, concurrency, crash safety. No mount."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from modelfs.errors import AlreadyExistsError, BadInputError, NotAStoreError, NotFoundError
from modelfs.export import export_model
from modelfs.store import Store


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pack_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "packs").iterdir())


def store_state(root: Path) -> tuple:
    """Everything a user could observe of a store: catalog rows and the pack and temp files."""
    con = sqlite3.connect(root / "catalog.db")
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    rows = tuple((t, tuple(con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall())) for t in tables)
    con.close()
    packs = tuple(sorted((p.name, p.stat().st_size) for p in (root / "packs").iterdir()))
    tmp = tuple(sorted(p.name for p in (root / "tmp").iterdir()))
    return rows, packs, tmp


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    Store.init(path, chunk_size=64 << 10)
    return path


def model_tensors(seed: int, n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"layer{i}.weight": (rng.standard_normal((96, 130)) * 0.02).astype(np.float32) for i in range(n)
    } | {"bias": rng.standard_normal(7).astype(np.float16), "ids": np.arange(1000, dtype=np.int64)}


def test_add_export_roundtrip_is_byte_exact(tmp_path, store_path, make_model):
    src = make_model(tmp_path / "src", model_tensors(1), {"config.json": b'{"a": 1}', "sub/tok.txt": b"x" * 5000})
    with Store.open(store_path) as store:
        store.add(src, "org/model")
        export_model(store, "org/model", tmp_path / "out")
        assert store.verify().problems == []
    assert tree_digest(tmp_path / "out") == tree_digest(src)
    assert (tmp_path / "out/model.safetensors").stat().st_mtime == pytest.approx(
        (src / "model.safetensors").stat().st_mtime
    )


def test_random_reads_match_original(tmp_path, store_path, make_model):
    src = make_model(tmp_path / "src", model_tensors(2), {})
    original = (src / "model.safetensors").read_bytes()
    with Store.open(store_path, cache_bytes=200_000) as store:
        store.add(src, "m")
        entry = store.lookup_file("m/model.safetensors")
        assert entry.size == len(original)
        rng = random.Random(0)
        with store.open_reader(entry) as reader:
            for _ in range(300):
                off = rng.randrange(0, len(original) + 10)
                size = rng.choice([1, 7, 4096, 65536, 300_000, 1 << 20])
                assert reader.read(off, size) == original[off : off + size]


def test_concurrent_readers_get_exact_bytes(tmp_path, store_path, make_model):
    src = make_model(tmp_path / "src", model_tensors(3, n=8), {})
    original = (src / "model.safetensors").read_bytes()
    with Store.open(store_path, cache_bytes=1 << 20) as store:
        store.add(src, "m")
        entry = store.lookup_file("m/model.safetensors")
        reader = store.open_reader(entry)
        errors: list[str] = []

        def work(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(200):
                off = rng.randrange(len(original))
                size = rng.randrange(1, 200_000)
                if reader.read(off, size) != original[off : off + size]:
                    errors.append(f"mismatch at {off}+{size}")

        threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.close()
    assert errors == []


def test_identical_tensors_are_stored_once(tmp_path, store_path, make_model):
    shared = model_tensors(4)
    a = make_model(tmp_path / "a", shared, {})
    b_tensors = dict(shared)
    b_tensors["extra"] = np.ones((64, 64), dtype=np.float32)
    b = make_model(tmp_path / "b", b_tensors, {})
    with Store.open(store_path) as store:
        store.add(a, "org/a")
        before = store.usage().stored_bytes
        store.add(b, "org/b")
        growth = store.usage().stored_bytes - before
        shared_bytes = sum(t.nbytes for t in shared.values())
        stats = store.stats()
    assert growth < shared_bytes / 4
    assert stats["saved_by_dedup"] >= shared_bytes


def test_identical_files_are_stored_once(tmp_path, store_path, make_model):
    src = make_model(tmp_path / "src", model_tensors(5), {"empty": b"", "sub/also-empty": b""})
    with Store.open(store_path) as store:
        store.add(src, "one")
        store.add(src, "two")
        assert store.catalog.query("SELECT COUNT(*) FROM contents")[0][0] == 2
        export_model(store, "two", tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(src)
    with Store.open(store_path) as store:
        assert store.stats()["unique_bytes"] == (src / "model.safetensors").stat().st_size


def test_rm_and_gc_reclaim_space(tmp_path, store_path, make_model):
    a = make_model(tmp_path / "a", model_tensors(6), {})
    b = make_model(tmp_path / "b", model_tensors(7), {})
    with Store.open(store_path) as store:
        store.add(a, "a")
        after_a = pack_bytes(store_path)
        store.add(b, "b")
        entry = store.lookup_file("b/model.safetensors")
        reader = store.open_reader(entry)
        store.remove("b")
        report = store.gc()
        assert report.bytes_reclaimed > 0
        assert pack_bytes(store_path) == after_a
        assert reader.read(0, entry.size) == (b / "model.safetensors").read_bytes()
        reader.close()
        with pytest.raises(NotFoundError):
            store.lookup_file("b/model.safetensors")
        assert store.verify().problems == []
        export_model(store, "a", tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(a)


def test_errors_on_names_and_store(tmp_path, store_path, make_model):
    src = make_model(tmp_path / "src", model_tensors(8), {})
    with Store.open(store_path) as store:
        store.add(src, "org/m")
        state = store_state(store_path)
        with pytest.raises(AlreadyExistsError):
            store.add(src, "org/m")
        with pytest.raises(BadInputError, match="nest"):
            store.add(src, "org/m/x")
        for bad in ["../x", "/abs", "a//b", "a/./b", "a\x00b", ""]:
            with pytest.raises(BadInputError):
                store.add(src, bad)
        with pytest.raises(BadInputError, match="does not exist"):
            store.add(tmp_path / "missing", "org/n")
        with pytest.raises(NotFoundError):
            store.remove("nope")
        assert store_state(store_path) == state
    with pytest.raises(NotAStoreError):
        Store.open(tmp_path)
    with pytest.raises(NotAStoreError):
        Store.open(tmp_path / "nowhere")


BAD_HEADERS = {
    "truncated": b"\x10\x00",
    "header longer than file": (1000).to_bytes(8, "little") + b"{}",
    "invalid json": (5).to_bytes(8, "little") + b"{nope",
    "unknown dtype": None,
    "out of range": None,
    "overlap": None,
}


def _header_file(header: bytes, data: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header + data


@pytest.mark.parametrize(
    "content",
    [
        b"\x10\x00",
        (1000).to_bytes(8, "little") + b"{}",
        _header_file(b"{nope", b""),
        _header_file(b'{"t": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 8),
        _header_file(b'{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8),
        _header_file(
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
            b' "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}',
            b"\0" * 12,
        ),
        _header_file(b'{"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', b"\0" * 8),
    ],
    ids=["truncated", "length-past-end", "bad-json", "unknown-dtype", "out-of-range", "overlap", "size-mismatch"],
)
def test_bad_safetensors_leave_store_unchanged(tmp_path, store_path, make_model, content):
    good = make_model(tmp_path / "good", model_tensors(9), {})
    bad = make_model(tmp_path / "bad", model_tensors(10), {})
    (bad / "zz-broken.safetensors").write_bytes(content)
    with Store.open(store_path) as store:
        store.add(good, "good")
        state = store_state(store_path)
        with pytest.raises(BadInputError, match="zz-broken"):
            store.add(bad, "bad")
        assert store_state(store_path) == state


def test_concurrent_adds_are_serialised(tmp_path, store_path, make_model):
    srcs = [make_model(tmp_path / f"s{i}", model_tensors(20 + i), {}) for i in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "modelfs.cli", "add", str(store_path), str(s), "--name", f"m{i}"])
        for i, s in enumerate(srcs)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with Store.open(store_path) as store:
        assert sorted(m.name for m in store.models()) == ["m0", "m1", "m2"]
        assert store.verify().problems == []
        for i, s in enumerate(srcs):
            export_model(store, f"m{i}", tmp_path / f"out{i}")
            assert tree_digest(tmp_path / f"out{i}") == tree_digest(s)


def _wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("stage", ["encoding", "0.5s", "1.0s", "2.0s"])
def test_killed_add_leaves_store_consistent(tmp_path, store_path, make_model, stage):
    """Kill an add while it writes packs (or at fixed delays): the model is then absent or complete."""
    rng = np.random.default_rng(30)
    big = {f"w{i}": rng.standard_normal((512, 1024)).astype(np.float32) for i in range(16)}
    src = make_model(tmp_path / "src", big, {})
    proc = subprocess.Popen([sys.executable, "-m", "modelfs.cli", "add", str(store_path), str(src), "--name", "big"])
    if stage == "encoding":
        assert _wait_for(lambda: any((store_path / "tmp").glob("*.pack")))
    else:
        time.sleep(float(stage[:-1]))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store.open(store_path) as store:
        assert store.verify().problems == []
        names = [m.name for m in store.models()]
        if stage == "encoding":
            assert names == []
        if names:
            export_model(store, "big", tmp_path / "out")
            assert tree_digest(tmp_path / "out") == tree_digest(src)
        store.gc()
        assert list((store_path / "tmp").iterdir()) == []
        if not names:
            assert list((store_path / "packs").iterdir()) == []
        store.add(src, "big2")
        assert store.verify().problems == []


def test_corrupt_chunk_is_an_integrity_error(tmp_path, store_path, make_model):
    from modelfs.errors import IntegrityError

    src = make_model(tmp_path / "src", model_tensors(11), {})
    original = (src / "model.safetensors").read_bytes()
    with Store.open(store_path) as store:
        store.add(src, "m")
        entry = store.lookup_file("m/model.safetensors")
        with store.open_reader(entry) as reader:
            target = reader.chunks[len(reader.chunks) // 2]
            start, end = reader.chunk_span(len(reader.chunks) // 2)
        pack = store_path / "packs" / f"{target.pack}.pack"
        with open(pack, "r+b") as f:
            f.seek(target.pack_offset + target.frame_len - 3)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x55]))
    with Store.open(store_path) as store:
        with store.open_reader(entry) as reader:
            with pytest.raises(IntegrityError) as info:
                reader.read(start, end - start)
            assert info.value.chunk_id == target.id
            assert reader.read(0, start) == original[:start]
            assert reader.read(end, entry.size) == original[end:]
        assert store.verify().problems
