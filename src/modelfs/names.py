"""Validation of model names and of the file paths inside a model.

Names become directories of the mount, so they must be plain relative paths: no ``..``, no absolute paths, no NUL,
no empty components. A model name is one or more components such as ``org/model``.
"""

from __future__ import annotations

import re

from .errors import BadInputError

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MAX_NAME = 255


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise BadInputError saying why."""
    if not name:
        raise BadInputError("model name is empty")
    if "\x00" in name:
        raise BadInputError("model name contains a NUL byte")
    if name.startswith("/"):
        raise BadInputError(f"model name {name!r} is absolute; use a relative name such as org/model")
    if len(name) > MAX_NAME:
        raise BadInputError(f"model name is longer than {MAX_NAME} characters")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise BadInputError(f"model name {name!r} has an empty, '.' or '..' component")
        if not _COMPONENT.match(part):
            raise BadInputError(
                f"model name {name!r}: component {part!r} may hold only letters, digits, '.', '_', '+', '-'"
                " and must start with a letter or digit"
            )
    return name


def check_file_path(path: str) -> str:
    """Return ``path`` (relative, '/'-separated) if it is safe to serve inside a model directory."""
    if not path or "\x00" in path or path.startswith("/"):
        raise BadInputError(f"file path {path!r} is empty, absolute or contains NUL")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise BadInputError(f"file path {path!r} has an empty, '.' or '..' component")
    return path


def split_store_path(path: str) -> list[str]:
    """Split 'org/model/sub/file' into components, rejecting tricks."""
    path = path.strip("/")
    return [] if not path else check_file_path(path).split("/")
