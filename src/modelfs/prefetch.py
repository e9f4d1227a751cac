"""Decode ahead of a reader that moves forward, so decoding overlaps the FUSE round trip instead of adding to it.

Detection works on chunk indexes, which covers every forward pattern a loader makes: sequential ``read``/``cp``,
tensor-by-tensor loads (tensors lie in file order), row slices (a contiguous range), and column slices of a
row-major 2-D tensor (a strided read touching every row: with row-aligned chunks, consecutive chunks). After two
reads that stay in the same chunk or move forward by at most ``max_step`` chunks, the next ``depth`` chunks, and
more until ``ahead_bytes`` lie ahead, are decoded on a small thread pool (zstd releases the GIL). The byte floor
matters because small tensors are chunks of their own: six chunks can be a few hundred KiB, which a reader
overtakes, and then it waits for decodes it could have had for free. A backward or far jump resets the streak; a
closed reader's queued prefetches are cancelled.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .reader import ChunkRef, ChunkSource

# Bounds the byte floor's walk (done under the lock on every read) in files of many tiny tensors.
MAX_AHEAD_CHUNKS = 256


@dataclass
class _Stream:
    last: int = -1
    streak: int = 0
    ahead: int = -1
    pending: list[Future[bytes]] = field(default_factory=list)


class Prefetcher:
    """Shared by all readers of a store; ``on_read`` is called after each read with the chunks it touched."""

    def __init__(
        self, source: ChunkSource, workers: int = 2, depth: int = 6, max_step: int = 2, ahead_bytes: int = 8 << 20
    ) -> None:
        self._source = source
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelfs-prefetch")
        self._depth = depth
        self._ahead_bytes = ahead_bytes
        self._max_step = max_step
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}

    def on_read(self, reader_id: int, chunks: list[ChunkRef], first: int, last: int) -> None:
        with self._lock:
            stream = self._streams.setdefault(reader_id, _Stream())
            forward = stream.last <= first <= stream.last + self._max_step
            stream.streak = stream.streak + 1 if forward else 0
            stream.last = last
            if stream.streak < 1:
                stream.ahead = last
                return
            start = max(last + 1, stream.ahead + 1)
            stop = min(len(chunks), last + 1 + self._depth)
            ahead = sum(ref.raw_len for ref in chunks[last + 1 : stop])
            limit = min(len(chunks), last + 1 + MAX_AHEAD_CHUNKS)
            while stop < limit and ahead < self._ahead_bytes:
                ahead += chunks[stop].raw_len
                stop += 1
            stream.pending = [f for f in stream.pending if not f.done()]
            for index in range(start, stop):
                ref = chunks[index]
                if not self._source.cache.contains(ref.id):
                    stream.pending.append(self._pool.submit(self._load, ref))
            stream.ahead = max(stream.ahead, stop - 1)

    def _load(self, ref: ChunkRef) -> bytes:
        return self._source.get(ref, prefetch=True)

    def forget(self, reader_id: int) -> None:
        with self._lock:
            stream = self._streams.pop(reader_id, None)
        if stream is not None:
            for future in stream.pending:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
