"""zstd one-shot helpers with one (de)compressor per thread.

python-zstandard contexts are not thread-safe, but they release the GIL while they work, so each thread keeps its
own (``threading.local``) and the ingest pool and the FUSE read threads compress and decompress in parallel.
"""

from __future__ import annotations

import threading

import zstandard

from ..errors import IntegrityError

# zstd -3: the measured sweet spot of ratio and ingest speed on MiniLM planes (issue 2; higher levels gain < 1%).
DEFAULT_LEVEL = 3

_local = threading.local()


def compressor(level: int = DEFAULT_LEVEL) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return c


def decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    return compressor(level).compress(data)


def decompress(payload: bytes | memoryview, size: int) -> bytes:
    """Decompress one zstd frame that must hold exactly ``size`` bytes and nothing after it."""
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
    except zstandard.ZstdError as e:
        raise IntegrityError(f"bad zstd frame ({e})") from None
    if declared != size:
        raise IntegrityError(f"zstd frame declares {declared} bytes, expected {size}")
    try:
        out = decompressor().decompress(payload, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"zstd decompression failed ({e})") from None
    if len(out) != size:
        raise IntegrityError(f"zstd frame gave {len(out)} bytes, expected {size}")
    return out
