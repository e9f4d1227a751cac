"""Domain errors of modelfs.

Every error a user can cause or meet is a ``ModelfsError`` whose message is one line that says what is wrong and,
where it helps, what to do. The CLI prints that line and exits non-zero; the FUSE adapter maps each class to one
errno (``modelfs.fuse_ops``). Nothing below the CLI prints or exits.
"""

from __future__ import annotations


class ModelfsError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    exit_code = 1


class BadInputError(ModelfsError):
    """The input (a safetensors file, a model name, a source directory, an argument) is invalid."""

    exit_code = 2


class NotAStoreError(ModelfsError):
    """The path is not a modelfs store, or one of an unsupported format version."""

    exit_code = 3


class NotFoundError(ModelfsError):
    """A model or file named by the user is not in the store."""

    exit_code = 4


class AlreadyExistsError(ModelfsError):
    """A model of that name is already in the store."""

    exit_code = 5


class InUseError(ModelfsError):
    """The operation would break something that depends on its target (e.g. removing a delta base)."""

    exit_code = 6


class IntegrityError(ModelfsError):
    """Stored data is damaged: a checksum or a frame does not match. Never answered with wrong bytes."""

    exit_code = 7

    def __init__(self, message: str, chunk_id: int | None = None) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id


class ReadTimeoutError(ModelfsError):
    """A read waited too long for a chunk another thread is decoding; answered as EIO, not a hang."""

    exit_code = 8
