"""Real mounts through the CLI: ``modelfs mount`` as a subprocess, bytes compared with the originals.

One store and one background mount serve the read-only checks; tests that damage a store, kill a daemon or
change the store while mounted make their own. Every mount waits for ``os.path.ismount`` with a timeout.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from modelfs.mount import DEFAULT_READ_AHEAD_KB
from modelfs.samples import bf16_array, write_safetensors
from modelfs.store import Store

MODELFS = [shutil.which("modelfs") or sys.executable, *([] if shutil.which("modelfs") else ["-m", "modelfs.cli"])]
MOUNT_WAIT = 20.0


def cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODELFS, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(predicate, timeout: float = MOUNT_WAIT) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def umount(mnt: Path) -> None:
    for _ in range(50):
        if not os.path.ismount(mnt) and not _in_mountinfo(mnt):
            return
        if cli("umount", mnt).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"could not unmount {mnt}")


def _in_mountinfo(mnt: Path) -> bool:
    return f" {mnt} " in Path("/proc/self/mountinfo").read_text()


@contextmanager
def mounted(store: Path, mnt: Path, *options: str) -> Iterator[Path]:
    """A background mount via ``modelfs mount``: the command returns only once the mount is live."""
    mnt.mkdir(exist_ok=True)
    result = cli("mount", store, mnt, *options)
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(mnt)  # no polling needed: run_mount returned after the mount went live
    try:
        yield mnt
    finally:
        umount(mnt)


@contextmanager
def foreground(store: Path, mnt: Path, log: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """A ``--foreground`` daemon whose log goes to ``log``."""
    mnt.mkdir(exist_ok=True)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*MODELFS, "mount", str(store), str(mnt), "--foreground", "--log-level", "info", *options],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        assert wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None), log.read_text()
        assert os.path.ismount(mnt), log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            umount(mnt)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if _in_mountinfo(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def files_of(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def build_model(path: Path, seed: int = 0) -> Path:
    """A few-MB HF-style model: two shards (numpy-loadable and BF16), config and tokenizer files."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    save_file(
        {
            "embed.weight": (rng.standard_normal((1000, 384)) * 0.05).astype(np.float32),
            "layer.0.dense.weight": (rng.standard_normal((1536, 384)) * 0.02).astype(np.float16),
            "layer.0.dense.bias": rng.standard_normal(1536).astype(np.float32),
            "position_ids": np.arange(512, dtype=np.int64).reshape(1, 512),
        },
        str(path / "model-00001-of-00002.safetensors"),
    )
    write_safetensors(
        path / "model-00002-of-00002.safetensors",
        {"layer.1.dense.weight": bf16_array((768, 1024), seed=seed + 1), "scale": rng.standard_normal(7).astype(np.float32)},
    )
    (path / "config.json").write_text(f'{{"hidden_size": 384, "num_hidden_layers": 2, "seed": {seed}}}\n')
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "vocab.txt").write_text("\n".join(f"tok{i}_{seed}" for i in range(5000)))
    if seed == 0:
        (path / "empty.txt").write_bytes(b"")
    return path


def build_store(root: Path, models: dict[str, Path]) -> Path:
    """Through the Store API: the CLI's add is tested elsewhere, and each CLI start costs about a second here."""
    store = root / "store"
    Store.init(store)
    with Store.open(store) as s:
        for name, src in models.items():
            s.add(src, name)
    return store


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(source model dir, mounted model dir) for the read-only checks."""
    root = tmp_path_factory.mktemp("mount")
    src = build_model(root / "src")
    store = build_store(root, {"org/model": src})
    with mounted(store, root / "mnt") as mnt:
        yield src, mnt / "org" / "model"


def test_every_file_hashes_like_the_original(setup: tuple[Path, Path]) -> None:
    src, model = setup
    source, served = files_of(src), files_of(model)
    assert sorted(served) == sorted(source)
    for rel, path in source.items():
        assert sha256(served[rel]) == sha256(path), rel
        assert served[rel].stat().st_size == path.stat().st_size


def test_cp_r_out_of_the_mount_equals_the_source(setup: tuple[Path, Path], tmp_path: Path) -> None:
    src, model = setup
    subprocess.run(["cp", "-r", str(model), str(tmp_path / "copy")], check=True, timeout=60)
    copy = files_of(tmp_path / "copy")
    assert sorted(copy) == sorted(files_of(src))
    for rel, path in files_of(src).items():
        assert copy[rel].read_bytes() == path.read_bytes(), rel


def test_safetensors_loads_identical_arrays(setup: tuple[Path, Path]) -> None:
    src, model = setup
    name = "model-00001-of-00002.safetensors"
    expected = load_file(str(src / name))
    assert load_file(str(model / name)).keys() == expected.keys()
    for key, array in load_file(str(model / name)).items():
        assert array.dtype == expected[key].dtype and np.array_equal(array, expected[key]), key
    with safe_open(str(model / name), framework="np") as f:
        assert set(f.keys()) == set(expected)
        for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
            assert np.array_equal(f.get_tensor(key), expected[key]), key


def test_get_slice_rows_and_columns(setup: tuple[Path, Path]) -> None:
    src, model = setup
    name = "model-00001-of-00002.safetensors"
    expected = load_file(str(src / name))["embed.weight"]
    with safe_open(str(model / name), framework="np") as f:
        s = f.get_slice("embed.weight")
        assert s.get_shape() == [1000, 384]
        assert np.array_equal(s[10:20], expected[10:20])
        assert np.array_equal(s[:, 100:101], expected[:, 100:101])
        assert np.array_equal(s[997:, 5:300:7], expected[997:, 5:300:7])


def test_mmap_of_a_mounted_file(setup: tuple[Path, Path]) -> None:
    src, model = setup
    name = "model-00002-of-00002.safetensors"
    original = (src / name).read_bytes()
    with (model / name).open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert len(m) == len(original)
        assert m[len(original) // 2 : len(original) // 2 + 4096] == original[len(original) // 2 :][:4096]
        assert m[:] == original


def random_reads_in_threads(originals: dict[Path, bytes], reads: int, threads: int = 8) -> list[str]:
    """``threads`` threads of ``reads`` preads each, at random offsets (past the end too) and sizes, of the given
    served files; returns every read that differs from the original bytes or fails (an EIO counts)."""
    paths = sorted(originals)
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        fds = {p: os.open(p, os.O_RDONLY) for p in paths}
        try:
            for _ in range(reads):
                p = rng.choice(paths)
                data = originals[p]
                offset = rng.randrange(0, len(data) + 100)
                size = rng.choice([1, 7, 4096, 65536, 1 << 20, 3 << 20, rng.randrange(1, 200000)])
                try:
                    got = os.pread(fds[p], size, offset)
                except OSError as exc:
                    failures.append(f"{p} {offset} {size}: {exc}")
                    continue
                if got != data[offset : offset + size]:
                    failures.append(f"{p} {offset} {size}")
        finally:
            for fd in fds.values():
                os.close(fd)

    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    return failures


def test_eight_threads_random_reads_are_byte_exact(setup: tuple[Path, Path]) -> None:
    src, model = setup
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer/vocab.txt"]
    failures = random_reads_in_threads({model / n: (src / n).read_bytes() for n in names}, reads=300)
    assert not failures, failures[:5]


def test_two_processes_loading_at_once(setup: tuple[Path, Path]) -> None:
    src, model = setup
    name = "model-00001-of-00002.safetensors"
    script = (
        "import sys, hashlib; from safetensors.numpy import load_file\n"
        "t = load_file(sys.argv[1]); h = hashlib.sha256()\n"
        "for k in sorted(t): h.update(k.encode()); h.update(t[k].tobytes())\n"
        "print(h.hexdigest())\n"
    )
    expected = subprocess.run([sys.executable, "-c", script, str(src / name)], capture_output=True, text=True, check=True)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(model / name)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs == [expected.stdout] * 2 and len(expected.stdout) == 65


def test_metadata_xattrs_statfs_and_read_only(setup: tuple[Path, Path]) -> None:
    src, model = setup
    path = model / "model-00002-of-00002.safetensors"
    st = path.stat()
    assert st.st_blksize >= 1 << 20 and st.st_blocks == (st.st_size + 511) // 512
    assert int(st.st_mtime) == int((src / path.name).stat().st_mtime)
    assert "user.modelfs.stored_size" in os.listxattr(path)
    stored = int(os.getxattr(path, "user.modelfs.stored_size"))
    assert 0 < stored < st.st_size  # BF16 compresses
    assert os.getxattr(path, "user.modelfs.codecs")
    with pytest.raises(OSError) as excinfo:
        os.getxattr(path, "user.nothing")
    assert excinfo.value.errno == errno.ENODATA
    vfs = os.statvfs(model)
    assert vfs.f_blocks * vfs.f_frsize >= stored
    if os.geteuid() == 0:  # the mount's read-ahead is raised to DEFAULT_READ_AHEAD_KB (only root may write it)
        dev = path.stat().st_dev
        ra = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text().strip()
        assert ra == str(DEFAULT_READ_AHEAD_KB) == "512"
    for attempt in (lambda: os.open(path, os.O_RDWR), lambda: (model / "new").write_text("x"), path.unlink,
                    (model / "d").mkdir):
        with pytest.raises(OSError) as excinfo:
            attempt()
        assert excinfo.value.errno == errno.EROFS


def _chunk_to_damage(store: Path, model: str, file: str) -> tuple[int, str, int, int, int, int]:
    """(chunk id, pack, frame offset, frame len, file start, file end) of the 2nd chunk of the file's biggest tensor."""
    db = sqlite3.connect(f"file:{store / 'catalog.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT c.id, p.name, c.pack_offset, c.frame_len, s.file_offset + c.raw_offset, c.raw_len"
            " FROM models m JOIN files f ON f.model_id = m.id JOIN segments s ON s.content_id = f.content_id"
            " JOIN objects o ON o.id = s.object_id JOIN chunks c ON c.object_id = o.id JOIN packs p ON p.id = c.pack_id"
            " WHERE m.name = ? AND f.path = ? AND c.seq = 1 ORDER BY o.size DESC LIMIT 1",
            (model, file),
        ).fetchone()
    finally:
        db.close()
    chunk_id, pack, offset, length, start, raw_len = row
    return chunk_id, pack, offset, length, start, start + raw_len


def test_damaged_chunk_is_eio_there_only_and_logged(tmp_path: Path) -> None:
    src = build_model(tmp_path / "src")
    store = build_store(tmp_path, {"org/model": src})
    name = "model-00002-of-00002.safetensors"
    chunk_id, pack, offset, length, start, end = _chunk_to_damage(store, "org/model", name)
    with (store / "packs" / f"{pack}.pack").open("r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    original = (src / name).read_bytes()
    log = tmp_path / "daemon.log"
    with foreground(store, tmp_path / "mnt", log):
        fd = os.open(tmp_path / "mnt" / "org" / "model" / name, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as excinfo:
                os.pread(fd, 4096, start + 8192)
            assert excinfo.value.errno == errno.EIO
            for pos in range(0, len(original), 64 << 10):  # every other range still reads correctly
                if pos + (64 << 10) <= start or pos >= end:
                    assert os.pread(fd, 64 << 10, pos) == original[pos : pos + (64 << 10)], pos
        finally:
            os.close(fd)
    text = log.read_text()
    assert f"chunk {chunk_id}" in text and "integrity error" in text, text


def test_mount_errors_are_one_clear_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    src, model = setup
    store = model.parent.parent.parent / "store"
    mnt = model.parent.parent
    cases = [
        ((store, mnt), "already mounted"),  # second mount of the same mountpoint
        ((store, src), "not empty"),  # a busy mountpoint
        ((tmp_path / "missing", tmp_path), "no such directory"),
        ((src, tmp_path), "not a modelfs store"),
        ((store, tmp_path / "nope"), "does not exist"),
        ((store, src / "config.json"), "not a directory"),
    ]
    for (store_arg, mnt_arg), message in cases:
        result = cli("mount", store_arg, mnt_arg)
        assert result.returncode != 0, (store_arg, mnt_arg)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
    result = cli("umount", tmp_path)
    assert result.returncode != 0 and "not mounted" in result.stderr


def test_umount_after_the_daemon_died(tmp_path: Path) -> None:
    src = build_model(tmp_path / "src")
    store = build_store(tmp_path, {"org/model": src})
    mnt = tmp_path / "mnt"
    with foreground(store, mnt, tmp_path / "log") as proc:
        proc.kill()
        proc.wait(timeout=20)
        with pytest.raises(OSError) as excinfo:
            os.listdir(mnt)
        assert excinfo.value.errno == errno.ENOTCONN
        result = cli("mount", store, mnt)
        assert result.returncode != 0 and "stale mount" in result.stderr
        result = cli("umount", mnt)
        assert result.returncode == 0, result.stderr
        assert not _in_mountinfo(mnt)
    with mounted(store, mnt):  # the mountpoint is usable again
        assert sha256(mnt / "org" / "model" / "config.json") == sha256(src / "config.json")


def test_umount_of_a_busy_mount_says_so(tmp_path: Path) -> None:
    src = build_model(tmp_path / "src")
    store = build_store(tmp_path, {"org/model": src})
    with mounted(store, tmp_path / "mnt") as mnt:
        holder = subprocess.Popen(["sleep", "30"], cwd=mnt / "org")
        try:
            result = cli("umount", mnt)
            assert result.returncode != 0 and "busy" in result.stderr and os.path.ismount(mnt), result.stderr
        finally:
            holder.kill()
            holder.wait()


def test_models_added_and_removed_while_mounted(tmp_path: Path) -> None:
    first = build_model(tmp_path / "first", seed=1)
    second = build_model(tmp_path / "second", seed=2)
    store = build_store(tmp_path, {"org/first": first})
    name = "model-00001-of-00002.safetensors"
    with mounted(store, tmp_path / "mnt", "-o", "refresh_interval=0.2") as mnt:
        assert os.listdir(mnt / "org") == ["first"]
        path = mnt / "org" / "first" / name
        with path.open("rb") as held:
            with Store.open(store) as s:
                s.add(second, "org/second")
            assert wait_for(lambda: (mnt / "org" / "second" / name).exists(), 10)
            assert sha256(mnt / "org" / "second" / name) == sha256(second / name)
            with Store.open(store) as s:
                s.remove("org/first")
                s.gc()
            assert wait_for(lambda: not path.exists(), 10)  # the kernel's cached entry was invalidated
            assert sorted(os.listdir(mnt / "org")) == ["second"]
            assert held.read() == (first / name).read_bytes()  # the open file keeps serving until release
        # Same name, new content: the kernel must not serve the old pages.
        with Store.open(store) as s:
            s.remove("org/second")
            s.add(first, "org/second")
        assert wait_for(lambda: _sha256_or_none(mnt / "org" / "second" / name) == sha256(first / name), 10)


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256(path)
    except FileNotFoundError:
        return None
