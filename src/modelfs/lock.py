"""The store's writer lock: ``add``, ``rm`` and ``gc`` hold it exclusively for their whole run.

A second writer waits (and says so on a terminal) instead of failing, so scripts can run them concurrently.
Readers (``mount``, ``cat``, ``export``, ``verify``) take no lock: they read committed catalog snapshots.
The lock is an ``flock`` on ``STORE/lock``, released by the kernel if the holder dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def writer_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
