"""A thread-safe LRU cache of decoded chunks with a byte budget and single-flight loading.

Concurrent misses on one chunk wait for a single decode (restic's ``bloblru.GetOrCompute``): the first caller
computes, the others block on its ``Future``. A waiter is bounded by ``wait_timeout`` so that no FUSE request waits
unboundedly (newer kernels abort the whole connection when one request exceeds the FUSE timeout).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from cachetools import LRUCache

from .errors import ReadTimeoutError


class CacheStats:
    """Counters read by the metrics exporter; plain ints updated under the cache lock."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes_decoded = 0
        self.prefetched = 0
        self.prefetch_hits = 0
        self.prefetch_waste = 0


class _BudgetLRU(LRUCache[int, bytes]):
    def __init__(self, maxsize: int, stats: CacheStats, unread: set[int]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=len)
        self._stats = stats
        self._unread = unread

    def popitem(self) -> tuple[int, bytes]:
        item = super().popitem()
        self._stats.evictions += 1
        if item[0] in self._unread:
            self._unread.discard(item[0])
            self._stats.prefetch_waste += 1
        return item


class ChunkCache:
    """Decoded chunks by chunk id (ids are never reused, so an entry can never be stale)."""

    def __init__(self, budget_bytes: int, wait_timeout: float = 30.0) -> None:
        self.stats = CacheStats()
        self._budget = max(0, budget_bytes)
        self._unread: set[int] = set()  # prefetched chunks no reader has asked for yet
        self._lru = _BudgetLRU(max(1, self._budget), self.stats, self._unread)
        self._lock = threading.Lock()
        self._inflight: dict[int, Future[bytes]] = {}
        self._wait_timeout = wait_timeout

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    def get_or_load(self, key: int, load: Callable[[], bytes], prefetch: bool = False) -> bytes:
        """Return the chunk, decoding it with ``load`` at most once however many threads ask at once.

        ``prefetch`` marks a decode ahead of the reader: its first later hit counts as a prefetch hit, its eviction
        unread as prefetch waste.
        """
        with self._lock:
            value = self._lru.get(key)
            if value is not None:
                if not prefetch:
                    self.stats.hits += 1
                    if key in self._unread:
                        self._unread.discard(key)
                        self.stats.prefetch_hits += 1
                return value
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                if prefetch:
                    self.stats.prefetched += 1
                else:
                    self.stats.misses += 1
                future = self._inflight[key] = Future()
            elif not prefetch:
                self.stats.hits += 1
        assert future is not None
        if not owner:
            try:
                return future.result(timeout=self._wait_timeout)
            except TimeoutError:
                raise ReadTimeoutError(f"timed out waiting for chunk {key} to decode") from None
        try:
            value = load()
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._inflight[key]
            self.stats.bytes_decoded += len(value)
            if 0 < len(value) <= self._budget:
                self._lru[key] = value
                if prefetch:
                    self._unread.add(key)
        future.set_result(value)
        return value

    def contains(self, key: int) -> bool:
        """True if the chunk is cached or being decoded (the prefetcher skips those)."""
        with self._lock:
            return key in self._lru or key in self._inflight
