"""Domain errors → errno, in one place, for the FUSE adapter.

``fuse_errors`` wraps every FUSE operation: a ``ModelfsError`` becomes the errno its class maps to, an
``OSError`` keeps its errno, and anything unexpected is logged with its traceback and answered with EIO (mfusepy
would otherwise answer EINVAL, which hides a bug as a usage error). Integrity errors are logged with the chunk id:
the operator's only clue to which chunk is damaged. Nothing here imports a FUSE library, so it tests without one.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import (
    AlreadyExistsError,
    BadInputError,
    IntegrityError,
    InUseError,
    ModelfsError,
    NotAStoreError,
    NotFoundError,
    ReadTimeoutError,
)

log = logging.getLogger("modelfs.fuse")

# Most specific class first: the first isinstance match wins.
ERRNO_OF: tuple[tuple[type[ModelfsError], int], ...] = (
    (NotFoundError, errno.ENOENT),
    (IntegrityError, errno.EIO),
    (ReadTimeoutError, errno.EIO),
    (NotAStoreError, errno.EIO),
    (BadInputError, errno.EINVAL),
    (AlreadyExistsError, errno.EEXIST),
    (InUseError, errno.EBUSY),
)


class FsError(OSError):
    """An errno answer for the kernel; the adapter raises it, mfusepy returns ``-errno``.

    Same shape as ``mfusepy.FuseOSError`` (an ``OSError`` with ``errno`` set), which is all mfusepy looks at.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code, errno.errorcode.get(code, str(code)))


def errno_for(exc: BaseException) -> int:
    """The errno that answers ``exc``; EIO for anything not known to be harmless."""
    if isinstance(exc, ModelfsError):
        for cls, code in ERRNO_OF:
            if isinstance(exc, cls):
                return code
        return errno.EIO
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return errno.EIO


F = TypeVar("F", bound=Callable[..., Any])


def fuse_errors(op: F) -> F:
    """Translate what ``op`` raises into an ``FsError``, logging what an operator must see."""

    @functools.wraps(op)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return op(*args, **kwargs)
        except FsError:
            raise
        except IntegrityError as exc:
            log.error("integrity error in %s(%s): chunk %s: %s", op.__name__, _path_of(args), exc.chunk_id, exc)
            raise FsError(errno.EIO) from None
        except ReadTimeoutError as exc:
            log.error("slow request %s(%s): %s", op.__name__, _path_of(args), exc)
            raise FsError(errno.EIO) from None
        except NotFoundError:
            raise FsError(errno.ENOENT) from None
        except ModelfsError as exc:
            code = errno_for(exc)
            log.warning("%s(%s): %s", op.__name__, _path_of(args), exc)
            raise FsError(code) from None
        except OSError as exc:
            code = errno_for(exc)
            log.error("%s(%s): %s", op.__name__, _path_of(args), exc)
            raise FsError(code) from None
        except Exception:
            log.exception("unexpected error in %s(%s); answering EIO", op.__name__, _path_of(args))
            raise FsError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _path_of(args: tuple[Any, ...]) -> str:
    """The path argument of a FUSE operation (args[0] is ``self``)."""
    return str(args[1]) if len(args) > 1 and isinstance(args[1], str) else ""
