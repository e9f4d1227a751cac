"""The FUSE operations: a thin adapter from kernel requests to the store's read API.

Paths and stat dicts in, errnos out (errors are translated by ``errno_map.fuse_errors``). The model of the
namespace is a ``Tree`` snapshot; a background thread polls ``store.generation()`` every
``refresh_interval`` seconds, swaps in a new tree when it changed and asks the kernel to forget what it cached
for paths that vanished or changed (``fuse_invalidate_path``), which is what lets the entry and attribute
timeouts be long. An open file keeps its ``FileReader`` (and the packs it pins) until release, so it keeps
serving after its model is removed.

Threading: libfuse calls every method from its worker threads. The tree is swapped by one reference assignment;
the handle table is guarded by a lock; ``FileReader.read`` is thread-safe and decodes with the GIL released.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import mfusepy  # type: ignore[import-untyped]

from .config import MountConfig
from .errno_map import FsError, fuse_errors
from .metrics import Metrics
from .tree import DirEntry, FileEntry, Tree

log = logging.getLogger("modelfs.fuse")

# Entries and attributes never change under a path without the refresher invalidating them, so the kernel may
# keep them long; 300 s only bounds the damage should an invalidation be missed.
ENTRY_TIMEOUT = 300.0
ATTR_TIMEOUT = 300.0
# 0: a model added to the store is found by the first lookup after the refresh, never hidden by a cached miss.
NEGATIVE_TIMEOUT = 0.0
# st_blksize: 1 MiB, the store's chunk size and the largest FUSE request, so that callers that size their
# reads from st_blksize (cp, cat, Python's io) ask for whole chunks.
BLOCK_SIZE = 1 << 20
XATTR_PREFIX = "user.modelfs."


class StoreView(Protocol):
    """What the adapter needs from ``modelfs.store.Store`` (the adapter tests use a fake)."""

    def tree(self) -> Tree: ...
    def generation(self) -> int: ...
    def open_reader(self, entry: FileEntry) -> Any: ...
    def usage(self) -> Any: ...


@dataclass
class ReadStats:
    """Request counters; the mount logs them at unmount and the benchmark reads request sizes from them."""

    requests: int = 0
    bytes: int = 0
    largest: int = 0
    opens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, size: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += size
            self.largest = max(self.largest, size)


@dataclass(frozen=True)
class Handle:
    entry: FileEntry
    reader: Any


class ModelfsOps(mfusepy.Operations):  # type: ignore[misc]
    """Read-only filesystem over a store: every model a directory, every file byte-identical."""

    use_ns = True  # timestamps in integer nanoseconds (mfusepy's non-deprecated mode)

    def __init__(
        self,
        store: StoreView,
        config: MountConfig,
        on_mounted: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.config = config
        self._on_mounted = on_mounted
        self._tree = store.tree()
        self.metrics.set_tree(self._tree.generation, len(self._tree.files()))
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        self._next_fh = itertools.count(1)
        # Last content served under each path: a path whose content changed is opened without keep_cache, so the
        # kernel drops pages of the old content even if an invalidation was missed.
        self._content_of: dict[str, int] = {}
        self._subdirs: dict[str, int] = {}
        self._usage: tuple[int, Any] | None = None
        self._uid = os.getuid() if config.uid is None else config.uid
        self._gid = os.getgid() if config.gid is None else config.gid
        self._umask = 0 if config.umask is None else config.umask
        self.stats = ReadStats()
        self._fuse_ptr: int | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Ask the kernel for 1 MiB reads and long caching; start the refresher and the on-mounted hook."""
        if conn is not None:
            conn.max_read = self.config.max_read
        if config is not None:
            config.entry_timeout = ENTRY_TIMEOUT
            config.attr_timeout = ATTR_TIMEOUT
            config.negative_timeout = NEGATIVE_TIMEOUT
            config.kernel_cache = 0  # keep_cache is decided per open (see ``open``)
            config.auto_cache = 0
            config.direct_io = 0  # mmap needs the page cache
        self._fuse_ptr = _current_fuse()
        self._refresher = threading.Thread(target=self._refresh_loop, name="modelfs-refresh", daemon=True)
        self._refresher.start()
        if self._on_mounted is not None:
            # Not inline: the kernel answers requests on the mount only after init returns.
            threading.Thread(target=self._on_mounted, name="modelfs-mounted", daemon=True).start()

    def destroy(self, path: str) -> None:
        self._stop.set()
        with self._handles_lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for handle in handles:
            handle.reader.close()
        s = self.stats
        log.info(
            "served %d reads, %d bytes, mean request %d KiB, largest %d KiB, %d opens",
            s.requests, s.bytes, s.bytes // max(1, s.requests) >> 10, s.largest >> 10, s.opens,
        )

    # -- namespace ---------------------------------------------------------------------------------------------

    @property
    def tree(self) -> Tree:
        return self._tree

    def refresh(self) -> list[str]:
        """Load a new tree if the store's generation moved; return the paths the kernel must forget."""
        generation = self.store.generation()
        old = self._tree
        if generation == old.generation:
            return []
        new = self.store.tree()
        self._subdirs = {}
        self._usage = None
        self._tree = new
        self.metrics.set_tree(new.generation, len(new.files()))
        stale = [path for path in _all_paths(old) if new.lookup(path) != old.lookup(path)]
        log.info("store generation %d -> %d: %d paths changed", old.generation, new.generation, len(stale))
        return stale

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.config.refresh_interval):
            try:
                for path in self.refresh():
                    self._invalidate(path)
            except Exception:
                log.exception("refreshing the tree failed; serving the previous one")

    def _invalidate(self, path: str) -> None:
        if self._fuse_ptr is None:
            return
        # Drops the inode's cached attributes and pages; a path libfuse never handed out has nothing to drop.
        _libfuse_invalidate(self._fuse_ptr, ("/" + path).encode("utf-8", "surrogateescape"))

    def _lookup(self, path: str) -> FileEntry | DirEntry:
        entry = self._tree.lookup(path.strip("/"))
        if entry is None:
            raise FsError(errno.ENOENT)
        return entry

    @fuse_errors
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        handle = self._handles.get(fh.fh) if fh is not None else None
        entry = handle.entry if handle is not None else self._lookup(path)
        return self._stat(entry)

    def _stat(self, entry: FileEntry | DirEntry) -> dict[str, Any]:
        mtime = int(entry.mtime * 1e9)
        st: dict[str, Any] = {
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": mtime,
            "st_ctime": mtime,
            "st_atime": mtime,
            "st_blksize": BLOCK_SIZE,
        }
        if isinstance(entry, FileEntry):
            perms = 0o444 | (entry.mode & 0o111)  # readable by all who may enter the mount; x bits kept
            st.update(
                st_mode=stat.S_IFREG | (perms & ~self._umask),
                st_nlink=1,
                st_size=entry.size,
                st_blocks=(entry.size + 511) // 512,  # 512-byte units, of the logical size (tar, cp trust it)
            )
        else:
            st.update(st_mode=stat.S_IFDIR | (0o555 & ~self._umask), st_nlink=2 + self._subdir_count(entry.path))
        return st

    def _subdir_count(self, path: str) -> int:
        count = self._subdirs.get(path)
        if count is None:
            tree = self._tree
            prefix = path + "/" if path else ""
            count = sum(isinstance(tree.lookup(prefix + name), DirEntry) for name in tree.listdir(path))
            self._subdirs[path] = count
        return count

    @fuse_errors
    def readdir(self, path: str, fh: int) -> list[Any]:
        tree = self._tree
        rel = path.strip("/")
        prefix = rel + "/" if rel else ""
        out: list[Any] = [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
        for name in tree.listdir(rel):
            kind = stat.S_IFDIR if isinstance(tree.lookup(prefix + name), DirEntry) else stat.S_IFREG
            out.append((name, {"st_mode": kind}, 0))
        return out

    @fuse_errors
    def statfs(self, path: str) -> dict[str, int]:
        generation = self._tree.generation
        if self._usage is None or self._usage[0] != generation:
            self._usage = (generation, self.store.usage())
        usage = self._usage[1]
        frsize = 4096
        files = len(self._tree.files())
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": frsize,
            "f_blocks": (usage.disk_bytes + frsize - 1) // frsize,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": files,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # -- xattrs --------------------------------------------------------------------------------------------------

    def _xattrs(self, entry: FileEntry | DirEntry) -> dict[str, bytes]:
        if not isinstance(entry, FileEntry):
            return {}
        return {
            XATTR_PREFIX + "stored_size": str(entry.stored_size).encode(),
            XATTR_PREFIX + "codecs": entry.codecs.encode(),
            XATTR_PREFIX + "content_id": str(entry.content_id).encode(),
        }

    @fuse_errors
    def listxattr(self, path: str) -> list[str]:
        return sorted(self._xattrs(self._lookup(path)))

    @fuse_errors
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if path == "/" and (status := self.metrics.root_xattr(name)) is not None:
            return status
        value = self._xattrs(self._lookup(path)).get(name)
        if value is None:
            raise FsError(errno.ENODATA)  # never ENOSYS: that makes libfuse stop asking for any xattr
        return value

    # -- files ---------------------------------------------------------------------------------------------------

    @fuse_errors
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY or fi.flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        entry = self._lookup(path)
        if not isinstance(entry, FileEntry):
            raise FsError(errno.EISDIR)
        reader = self.store.open_reader(entry)
        fh = next(self._next_fh)
        rel = entry.path
        with self._handles_lock:
            self._handles[fh] = Handle(entry, reader)
            previous = self._content_of.get(rel)
            self._content_of[rel] = entry.content_id
            self.stats.opens += 1
        fi.fh = fh
        fi.direct_io = 0
        fi.keep_cache = 1 if previous in (None, entry.content_id) else 0
        self.metrics.file_opened()
        return 0

    @fuse_errors
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise FsError(errno.EBADF)
        self.stats.add(size)
        start = time.perf_counter()
        try:
            data = bytes(handle.reader.read(offset, size))
        except Exception as exc:
            self.metrics.record_error(exc)
            raise
        self.metrics.record_read(len(data), time.perf_counter() - start, path, offset)
        return data

    def open_paths(self) -> list[str]:
        """Paths of the files open now (what a refused unmount reports)."""
        with self._handles_lock:
            return sorted(handle.entry.path for handle in self._handles.values())

    @fuse_errors
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            handle.reader.close()
            self.metrics.file_closed()
        return 0

    # -- everything that writes: the filesystem is read-only -----------------------------------------------------

    def _read_only(self, *args: Any, **kwargs: Any) -> int:
        raise FsError(errno.EROFS)

    write = create = mkdir = mknod = unlink = rmdir = symlink = link = rename = _read_only
    chmod = chown = truncate = utimens = setxattr = removexattr = fallocate = _read_only


def _all_paths(tree: Tree) -> list[str]:
    """Every file and directory path of a tree (directories from the file paths)."""
    paths: set[str] = set()
    for entry in tree.files():
        parts = entry.path.split("/")
        paths.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    return sorted(paths)


def _current_fuse() -> int | None:
    """The ``struct fuse *`` of the running filesystem (only valid inside a FUSE callback)."""
    try:
        return int(mfusepy._libfuse.fuse_get_context().contents.fuse or 0) or None
    except (AttributeError, ValueError):  # no libfuse context (not inside a callback)
        return None


def _libfuse_invalidate(fuse_ptr: int, path: bytes) -> None:
    fn = mfusepy._libfuse.fuse_invalidate_path
    fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    fn.restype = ctypes.c_int
    result = fn(ctypes.c_void_p(fuse_ptr), path)
    if result not in (0, -errno.ENOENT):
        log.debug("invalidating %r: errno %d", path, -result)

