"""Pack files: many chunk frames appended to one file, so a store of millions of chunks stays a few files.

A pack starts with a 16-byte header (``PACK_MAGIC``, format version) followed by chunk frames back to back; the
catalog knows where each frame lies. A writer fills packs under ``tmp/``, then fsyncs and renames them into
``packs/`` only when the whole ingest succeeded; packs are never modified afterwards, only deleted by ``gc``.
Readers pin a pack by keeping a file descriptor open, so a pack deleted by ``gc`` keeps serving open files.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PACK_MAGIC = b"MFPACK\x00\x01"
PACK_HEADER = struct.Struct("<8sII")  # magic, format version, reserved
PACK_VERSION = 1


@dataclass(frozen=True)
class FrameLocation:
    """Where a frame went: the pack's file name and the frame's offset and length in it."""

    pack_name: str
    offset: int
    length: int


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PackWriter:
    """Appends frames to packs of about ``target_size`` bytes in ``tmp_dir``; ``commit`` publishes them.

    Sticky on error: after a failed write the writer refuses further use, and ``abort`` removes its files.
    Not thread-safe: one ingest owns one writer.
    """

    def __init__(self, tmp_dir: Path, packs_dir: Path, target_size: int) -> None:
        self._tmp_dir = tmp_dir
        self._packs_dir = packs_dir
        self._target = target_size
        self._file: BinaryIO | None = None
        self._name = ""
        self._offset = 0
        self._closed: list[tuple[str, int]] = []
        self._published: list[str] = []
        self._error: BaseException | None = None

    @property
    def packs(self) -> list[tuple[str, int]]:
        """(name, size) of every pack written so far, for the catalog."""
        return list(self._closed)

    def append(self, frame: bytes) -> FrameLocation:
        if self._error is not None:
            raise RuntimeError("pack writer failed earlier") from self._error
        try:
            if self._file is None:
                self._file = self._open_new()
            self._file.write(frame)
            location = FrameLocation(self._name, self._offset, len(frame))
            self._offset += len(frame)
            if self._offset >= self._target:
                self._close_current()
            return location
        except BaseException as exc:
            self._error = exc
            raise

    def _open_new(self) -> BinaryIO:
        self._name = secrets.token_hex(16)
        path = self._tmp_dir / f"{self._name}.pack"
        f = open(path, "wb")  # noqa: SIM115 - stays open across add() calls; _close_current closes it
        f.write(PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0))
        self._offset = PACK_HEADER.size
        return f

    def _close_current(self) -> None:
        if self._file is None:
            return
        f = self._file
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._closed.append((self._name, self._offset))
        self._file = None

    def publish(self) -> list[tuple[str, int]]:
        """Fsync and move every pack into ``packs/``; the catalog commit must come after this."""
        self._close_current()
        for name, _ in self._closed:
            os.replace(self._tmp_dir / f"{name}.pack", self._packs_dir / f"{name}.pack")
            self._published.append(name)
        fsync_dir(self._packs_dir)
        return self.packs

    def abort(self) -> None:
        """Remove every file this writer made; used when the ingest fails before its commit."""
        if self._file is not None:
            self._file.close()
            self._closed.append((self._name, self._offset))
            self._file = None
        for name, _ in self._closed:
            for where in (self._tmp_dir, self._packs_dir):
                try:
                    os.unlink(where / f"{name}.pack")
                except FileNotFoundError:
                    pass


class PackPool:
    """Reference-counted read-only descriptors of pack files, shared by all readers of one store.

    A descriptor stays open while any reader holds it, so ``gc`` deleting the file does not break open readers.
    """

    def __init__(self, packs_dir: Path) -> None:
        self._dir = packs_dir
        self._lock = threading.Lock()
        self._fds: dict[str, list[int]] = {}

    def acquire(self, name: str) -> int:
        with self._lock:
            entry = self._fds.get(name)
            if entry is None:
                fd = os.open(self._dir / f"{name}.pack", os.O_RDONLY | os.O_CLOEXEC)
                entry = self._fds[name] = [fd, 0]
            entry[1] += 1
            return entry[0]

    def release(self, name: str) -> None:
        with self._lock:
            entry = self._fds[name]
            entry[1] -= 1
            if entry[1] == 0:
                os.close(entry[0])
                del self._fds[name]

    def close_all(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


def read_frame(fd: int, offset: int, length: int) -> bytes:
    """Read one frame; a short read (truncated pack) comes back short and fails the frame check."""
    return os.pread(fd, length, offset)
