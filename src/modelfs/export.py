"""Write a stored model back out as ordinary files, byte-identical to what was added.

Each file is written to a temporary name beside its target, fsynced and renamed, so an interrupted export never
leaves a file that looks complete but is not; modes and mtimes are restored.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import BadInputError
from .store import Store


def export_model(store: Store, name: str, dest: Path) -> int:
    """Export model ``name`` into ``dest`` (created if missing; existing files are not overwritten)."""
    entries = store.model_files(name)
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"{dest} exists and is not a directory")
    prefix = len(name) + 1
    targets = [(entry, dest / entry.path[prefix:]) for entry in entries]
    clashes = [str(t) for _, t in targets if t.exists()]
    if clashes:
        raise BadInputError(f"{clashes[0]} already exists; export into a new or empty directory")
    for entry, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.modelfs-tmp")
        with open(tmp, "wb") as out:
            out.writelines(store.iter_file(entry))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, entry.mode)
        os.utime(tmp, (entry.mtime, entry.mtime))
        os.replace(tmp, target)
    return len(targets)
