"""The decoded-chunk cache and the prefetcher: byte budget, single-flight decoding, read-ahead that pays."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from modelfs.cache import ChunkCache
from modelfs.errors import IntegrityError
from modelfs.store import Store


def test_budget_is_respected_and_lru_evicts():
    cache = ChunkCache(budget_bytes=3000)
    for key in range(10):
        cache.get_or_load(key, lambda: b"x" * 1000)
    assert cache.current_bytes <= 3000
    assert cache.stats.evictions == 7
    assert cache.contains(9) and not cache.contains(0)


def test_concurrent_misses_decode_once():
    cache = ChunkCache(budget_bytes=1 << 20)
    calls = []
    gate = threading.Event()

    def load() -> bytes:
        calls.append(1)
        gate.wait(5)
        return b"chunk"

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load(7, load))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert calls == [1]
    assert results == [b"chunk"] * 8


def test_failed_decode_is_not_cached_and_reaches_every_waiter():
    cache = ChunkCache(budget_bytes=1 << 20)

    def bad() -> bytes:
        raise IntegrityError("damaged", 3)

    with pytest.raises(IntegrityError):
        cache.get_or_load(3, bad)
    assert not cache.contains(3)
    assert cache.get_or_load(3, lambda: b"ok") == b"ok"


def test_sequential_reader_is_prefetched(tmp_path, make_model):
    rng = np.random.default_rng(0)
    src = make_model(tmp_path / "src", {"w": rng.standard_normal((2048, 1024)).astype(np.float32)}, {})
    original = (src / "model.safetensors").read_bytes()
    Store.init(tmp_path / "store", chunk_size=256 << 10)
    with Store.open(tmp_path / "store", cache_bytes=64 << 20) as store:
        store.add(src, "m")
        entry = store.lookup_file("m/model.safetensors")
        with store.open_reader(entry) as reader:
            for off in range(0, entry.size, 128 << 10):
                assert reader.read(off, 128 << 10) == original[off : off + (128 << 10)]
                time.sleep(0.002)
        stats = store.cache.stats
        assert stats.prefetched > 0
        assert stats.prefetch_hits > stats.prefetched // 2


def test_prefetch_reaches_ahead_bytes_past_small_chunks():
    from modelfs.prefetch import Prefetcher
    from modelfs.reader import ChunkRef

    chunks = [ChunkRef(i, "p", 0, 10, 1000, 0, None) for i in range(100)]
    queued: list[int] = []

    class Source:
        cache = ChunkCache(budget_bytes=0)

        def get(self, ref: ChunkRef, prefetch: bool = False) -> bytes:
            queued.append(ref.id)
            return b""

    prefetcher = Prefetcher(Source(), workers=1, depth=2, ahead_bytes=10_000)  # type: ignore[arg-type]
    prefetcher.on_read(1, chunks, 0, 0)
    prefetcher.on_read(1, chunks, 1, 1)
    deadline = time.monotonic() + 5
    while len(queued) < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    prefetcher.close()
    assert sorted(queued) == list(range(1, 12))  # ten 1000-byte chunks past the last read, not just depth=2
