"""glibc allocator settings for a process that decodes many ~1 MiB chunks.

Every decoded chunk is a fresh ~1 MiB ``bytes`` plus plane-sized numpy temporaries. With glibc's defaults a block
of 128 KiB or more comes from ``mmap``, or from the top of the heap, which ``free`` trims back to the kernel once
128 KiB there are unused (both thresholds then move, but not far enough for this churn); either way the next chunk
faults all its pages in again, each one zeroed by the kernel. Raising both thresholds keeps freed blocks in the
heap for reuse. One-thread decode of every chunk of MiniLM-L6 BF16 (``bench/allocator.py``, a fresh process per
run, median of 5): 249 MB/s with the defaults, 732 MB/s with these settings.

The cost is memory the process keeps after a burst: at most ``TRIM_THRESHOLD`` of free heap per arena before it
is returned, next to a chunk cache that is 1 GiB by default. Process-wide, so only programs call this (the CLI, and
through it the mount daemon; the benchmarks), never the library on import.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap; glibc caps it at 32 MiB on 64-bit. Chunks are 1 MiB by default.
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 64 << 20


def tune_for_chunks() -> bool:
    """Apply the settings above; False (and nothing changed) where the C library has no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the chunk allocator settings")
    return ok
