"""The FUSE adapter against a fake store: paths and stat dicts in, errnos out, no mount and no libfuse loop."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelfs.config import MountConfig
from modelfs.errno_map import FsError, errno_for
from modelfs.errors import (
    AlreadyExistsError,
    BadInputError,
    IntegrityError,
    InUseError,
    NotAStoreError,
    NotFoundError,
    ReadTimeoutError,
)
from modelfs.fuse_ops import BLOCK_SIZE, ModelfsOps
from modelfs.tree import FileEntry, Tree


@dataclass
class FakeUsage:
    logical_bytes: int
    stored_bytes: int
    disk_bytes: int


class FakeReader:
    """Serves bytes; raises what the fake store planted for a byte range."""

    def __init__(self, data: bytes, fail: tuple[int, int, BaseException] | None) -> None:
        self.data = data
        self.fail = fail
        self.closed = False

    def read(self, offset: int, size: int) -> bytes:
        assert not self.closed
        if self.fail is not None:
            start, end, exc = self.fail
            if offset < end and offset + size > start:
                raise exc
        return self.data[offset : offset + size]

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """The read contract of ``Store``: tree snapshots, a generation, readers that outlive the tree."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.gen = 0
        self.next_content = 1
        self.readers: list[FakeReader] = []
        self.fail: dict[int, tuple[int, int, BaseException]] = {}

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.files[path] = (data, mode)
        self._contents = getattr(self, "_contents", {})
        self._contents[self.next_content] = data
        self._ids = getattr(self, "_ids", {})
        self._ids[path] = self.next_content
        self.next_content += 1
        self.gen += 1

    def remove(self, prefix: str) -> None:
        for path in [p for p in self.files if p.startswith(prefix + "/")]:
            del self.files[path]
        self.gen += 1

    def tree(self) -> Tree:
        entries = [
            FileEntry(path, len(data), 1700000000.5, mode, len(data) // 2, self._ids[path], "bytegroup-zstd")
            for path, (data, mode) in self.files.items()
        ]
        return Tree(entries, self.gen)

    def generation(self) -> int:
        return self.gen

    def open_reader(self, entry: FileEntry) -> FakeReader:
        reader = FakeReader(self._contents[entry.content_id], self.fail.get(entry.content_id))
        self.readers.append(reader)
        return reader

    def usage(self) -> FakeUsage:
        logical = sum(len(d) for d, _ in self.files.values())
        return FakeUsage(logical, logical // 2, 10 * 4096 + 1)


DATA = bytes(range(256)) * 4096  # 1 MiB
CONFIG = b'{"hidden_size": 384}'


@pytest.fixture
def store() -> FakeStore:
    s = FakeStore()
    s.put("org/model/model.safetensors", DATA)
    s.put("org/model/config.json", CONFIG)
    s.put("org/model/sub/tokenizer.json", b"{}", mode=0o755)
    return s


@pytest.fixture
def ops(store: FakeStore) -> ModelfsOps:
    return ModelfsOps(store, MountConfig(store=Path("/s"), mountpoint=Path("/m"), uid=1000, gid=100))


def fi(flags: int = os.O_RDONLY) -> Any:
    return SimpleNamespace(flags=flags, fh=0, keep_cache=0, direct_io=1)


def errno_of(excinfo: pytest.ExceptionInfo[BaseException]) -> int | None:
    assert isinstance(excinfo.value, OSError)
    return excinfo.value.errno


def test_getattr_of_root_dirs_and_files(ops: ModelfsOps) -> None:
    root = ops.getattr("/")
    assert stat.S_ISDIR(root["st_mode"]) and root["st_nlink"] == 3  # one subdirectory: org
    model = ops.getattr("/org/model")
    assert stat.S_ISDIR(model["st_mode"]) and model["st_mode"] & 0o777 == 0o555 and model["st_nlink"] == 3
    f = ops.getattr("/org/model/model.safetensors")
    assert stat.S_ISREG(f["st_mode"]) and f["st_mode"] & 0o777 == 0o444
    assert f["st_size"] == len(DATA)
    assert f["st_blocks"] == len(DATA) // 512
    assert f["st_blksize"] == BLOCK_SIZE >= 1 << 20
    assert f["st_mtime"] == 1700000000_500000000  # nanoseconds (use_ns)
    assert (f["st_uid"], f["st_gid"]) == (1000, 100)
    assert ops.getattr("/org/model/sub/tokenizer.json")["st_mode"] & 0o777 == 0o555  # x bits kept, w dropped
    assert ops.getattr("/org/model/config.json")["st_blocks"] == 1


def test_missing_path_is_enoent(ops: ModelfsOps) -> None:
    for path in ("/nope", "/org/model/nope", "/org/model/config.json/x"):
        with pytest.raises(OSError) as excinfo:
            ops.getattr(path)
        assert errno_of(excinfo) == errno.ENOENT


def test_readdir_lists_names_with_types(ops: ModelfsOps) -> None:
    entries = {name: attrs["st_mode"] for name, attrs, _ in ops.readdir("/org/model", 0)}
    assert set(entries) == {".", "..", "model.safetensors", "config.json", "sub"}
    assert stat.S_ISDIR(entries["sub"]) and stat.S_ISREG(entries["config.json"])
    assert [name for name, _, _ in ops.readdir("/", 0)] == [".", "..", "org"]


def test_open_read_release(ops: ModelfsOps, store: FakeStore) -> None:
    f = fi()
    assert ops.open("/org/model/model.safetensors", f) == 0
    assert f.fh > 0 and f.keep_cache == 1 and f.direct_io == 0
    assert ops.read("/org/model/model.safetensors", 4096, 1000, f) == DATA[1000:5096]
    assert ops.read("/org/model/model.safetensors", 1 << 20, len(DATA) - 10, f) == DATA[-10:]
    assert ops.read("/org/model/model.safetensors", 4096, len(DATA) + 5, f) == b""
    assert ops.getattr("/whatever", f)["st_size"] == len(DATA)  # fgetattr answers from the handle
    ops.release("/org/model/model.safetensors", f)
    assert store.readers[-1].closed
    with pytest.raises(OSError) as excinfo:
        ops.read("/org/model/model.safetensors", 10, 0, f)
    assert errno_of(excinfo) == errno.EBADF


def test_open_for_writing_or_a_directory_is_refused(ops: ModelfsOps) -> None:
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(OSError) as excinfo:
            ops.open("/org/model/config.json", fi(flags))
        assert errno_of(excinfo) == errno.EROFS
    with pytest.raises(OSError) as excinfo:
        ops.open("/org/model", fi())
    assert errno_of(excinfo) == errno.EISDIR


@pytest.mark.parametrize(
    "call",
    [
        lambda o: o.write("/org/model/config.json", b"x", 0, 1),
        lambda o: o.create("/org/model/new", 0o644, fi()),
        lambda o: o.mkdir("/org/new", 0o755),
        lambda o: o.unlink("/org/model/config.json"),
        lambda o: o.rmdir("/org/model"),
        lambda o: o.rename("/org/model/config.json", "/org/model/c"),
        lambda o: o.symlink("/org/l", "x"),
        lambda o: o.link("/org/l", "/org/model/config.json"),
        lambda o: o.chmod("/org/model/config.json", 0o777),
        lambda o: o.chown("/org/model/config.json", 0, 0),
        lambda o: o.truncate("/org/model/config.json", 0),
        lambda o: o.utimens("/org/model/config.json", None),
        lambda o: o.setxattr("/org/model/config.json", "user.x", b"1", 0),
        lambda o: o.removexattr("/org/model/config.json", "user.modelfs.codecs"),
    ],
)
def test_every_write_is_erofs(ops: ModelfsOps, call: Any) -> None:
    with pytest.raises(OSError) as excinfo:
        call(ops)
    assert errno_of(excinfo) == errno.EROFS


def test_xattrs(ops: ModelfsOps) -> None:
    path = "/org/model/model.safetensors"
    names = ops.listxattr(path)
    assert names == ["user.modelfs.codecs", "user.modelfs.content_id", "user.modelfs.stored_size"]
    assert ops.getxattr(path, "user.modelfs.stored_size") == str(len(DATA) // 2).encode()
    assert ops.getxattr(path, "user.modelfs.codecs") == b"bytegroup-zstd"
    with pytest.raises(OSError) as excinfo:
        ops.getxattr(path, "user.other")
    assert errno_of(excinfo) == errno.ENODATA  # never ENOSYS
    assert ops.listxattr("/org/model") == []
    with pytest.raises(OSError) as excinfo:
        ops.getxattr("/org/model", "user.modelfs.codecs")
    assert errno_of(excinfo) == errno.ENODATA
    with pytest.raises(OSError) as excinfo:
        ops.listxattr("/nope")
    assert errno_of(excinfo) == errno.ENOENT


def test_statfs_reports_store_usage(ops: ModelfsOps) -> None:
    st = ops.statfs("/")
    assert st["f_frsize"] == 4096 and st["f_blocks"] == 11  # 10 * 4096 + 1 bytes, rounded up
    assert st["f_bfree"] == st["f_bavail"] == 0
    assert st["f_files"] == 3


def test_integrity_error_is_eio_and_logged_with_chunk(
    ops: ModelfsOps, store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    content = store._ids["org/model/model.safetensors"]
    store.fail[content] = (4096, 8192, IntegrityError("chunk 4242: checksum mismatch", 4242))
    f = fi()
    ops.open("/org/model/model.safetensors", f)
    with caplog.at_level(logging.ERROR, logger="modelfs"), pytest.raises(OSError) as excinfo:
        ops.read("/org/model/model.safetensors", 4096, 4096, f)
    assert errno_of(excinfo) == errno.EIO
    assert "chunk 4242" in caplog.text and "model.safetensors" in caplog.text
    assert ops.read("/org/model/model.safetensors", 4096, 0, f) == DATA[:4096]
    assert ops.read("/org/model/model.safetensors", 4096, 8192, f) == DATA[8192:12288]


def test_unexpected_exception_is_eio_and_logged(
    ops: ModelfsOps, store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.fail[store._ids["org/model/config.json"]] = (0, 1 << 30, ZeroDivisionError("bug"))
    f = fi()
    ops.open("/org/model/config.json", f)
    with caplog.at_level(logging.ERROR, logger="modelfs"), pytest.raises(OSError) as excinfo:
        ops.read("/org/model/config.json", 100, 0, f)
    assert errno_of(excinfo) == errno.EIO  # not mfusepy's EINVAL
    assert "ZeroDivisionError" in caplog.text


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFoundError("x"), errno.ENOENT),
        (IntegrityError("x", 1), errno.EIO),
        (ReadTimeoutError("x"), errno.EIO),
        (NotAStoreError("x"), errno.EIO),
        (BadInputError("x"), errno.EINVAL),
        (AlreadyExistsError("x"), errno.EEXIST),
        (InUseError("x"), errno.EBUSY),
        (OSError(errno.EMFILE, "too many"), errno.EMFILE),
        (ValueError("x"), errno.EIO),
    ],
)
def test_errno_map(exc: BaseException, code: int) -> None:
    assert errno_for(exc) == code


def test_fs_error_is_what_mfusepy_expects() -> None:
    import mfusepy

    err = FsError(errno.EROFS)
    assert isinstance(err, OSError) and err.errno == errno.EROFS
    assert issubclass(mfusepy.FuseOSError, OSError)


def test_refresh_swaps_tree_and_names_stale_paths(ops: ModelfsOps, store: FakeStore) -> None:
    f = fi()
    ops.open("/org/model/model.safetensors", f)
    assert ops.refresh() == []  # generation unchanged: nothing to do
    store.remove("org/model")
    store.put("org/other/model.safetensors", b"new")
    stale = ops.refresh()
    assert "org/model" in stale and "org/model/model.safetensors" in stale and "org" not in stale
    assert "org/other/model.safetensors" not in stale  # new paths were never cached by the kernel
    with pytest.raises(OSError) as excinfo:
        ops.getattr("/org/model/model.safetensors")
    assert errno_of(excinfo) == errno.ENOENT
    assert ops.getattr("/org/other/model.safetensors")["st_size"] == 3
    # The file opened before the removal keeps serving until release.
    assert ops.read("/org/model/model.safetensors", 100, 0, f) == DATA[:100]
    ops.release("/org/model/model.safetensors", f)


def test_changed_content_under_a_path_is_opened_without_keep_cache(ops: ModelfsOps, store: FakeStore) -> None:
    first = fi()
    ops.open("/org/model/config.json", first)
    assert first.keep_cache == 1
    store.put("org/model/config.json", b'{"hidden_size": 768}')
    ops.refresh()
    second = fi()
    ops.open("/org/model/config.json", second)
    assert second.keep_cache == 0  # the kernel must drop the old content's pages
    assert ops.read("/org/model/config.json", 100, 0, second) == b'{"hidden_size": 768}'
    assert ops.read("/org/model/config.json", 100, 0, first) == CONFIG
    third = fi()
    ops.open("/org/model/config.json", third)
    assert third.keep_cache == 1


def test_destroy_closes_open_readers(ops: ModelfsOps, store: FakeStore) -> None:
    ops.open("/org/model/config.json", fi())
    ops.destroy("/")
    assert all(r.closed for r in store.readers)
