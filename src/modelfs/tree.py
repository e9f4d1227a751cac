"""An immutable snapshot of the store's namespace: models as directories, their files as entries.

The mount serves lookups from a ``Tree`` without touching SQLite, and swaps in a new one when the store's
generation changes; entries of a replaced tree stay valid for the readers opened from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NotFoundError


@dataclass(frozen=True)
class FileEntry:
    """A file of a model: ``path`` is 'org/model/relative/path'."""

    path: str
    size: int
    mtime: float
    mode: int
    stored_size: int
    content_id: int
    codecs: str


@dataclass(frozen=True)
class DirEntry:
    """A directory: the root (''), an org, a model, or a subdirectory inside a model."""

    path: str
    mtime: float


class Tree:
    """Path → entry for every file and directory, plus each directory's sorted listing."""

    def __init__(self, files: list[FileEntry], generation: int) -> None:
        self.generation = generation
        self._entries: dict[str, FileEntry | DirEntry] = {}
        children: dict[str, set[str]] = {"": set()}
        dir_mtime: dict[str, float] = {"": 0.0}
        for entry in files:
            self._entries[entry.path] = entry
            parts = entry.path.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                children.setdefault(parent, set()).add(parts[depth])
                dir_mtime[parent] = max(dir_mtime.get(parent, 0.0), entry.mtime)
        for path, mtime in dir_mtime.items():
            self._entries[path] = DirEntry(path, mtime)
        self._listing = {path: sorted(names) for path, names in children.items()}

    def lookup(self, path: str) -> FileEntry | DirEntry | None:
        return self._entries.get(path.strip("/"))

    def listdir(self, path: str) -> list[str]:
        try:
            return self._listing[path.strip("/")]
        except KeyError:
            raise NotFoundError(f"{path} is not a directory") from None

    def files(self) -> list[FileEntry]:
        return [e for e in self._entries.values() if isinstance(e, FileEntry)]
