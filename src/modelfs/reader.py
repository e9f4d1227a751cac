"""The read path: a byte range of a file → the chunks it overlaps → decoded bytes.

A ``FileReader`` is built once per open from the catalog: a table of chunk start offsets (bisect on read) and the
location of every chunk, including the base chunk of a delta. It pins the packs it needs (``PackPool``), so it
keeps serving after ``rm``/``gc`` until ``close``. Chunks come from the shared ``ChunkCache``; a miss reads the
frame with ``pread`` and decodes it (zstd and the XOR release the GIL, so FUSE worker threads decode in parallel).
A frame that fails its checks raises ``IntegrityError`` naming the chunk: never wrong bytes.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from .cache import ChunkCache
from .catalog import Catalog, from_int64
from .codec.frame import FLAGS_NEED_BASE, HEADER_SIZE, decode_chunk, read_header
from .errors import IntegrityError, NotFoundError
from .packs import PackPool, read_frame

if TYPE_CHECKING:
    from .prefetch import Prefetcher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Everything needed to produce one chunk's raw bytes without the catalog."""

    id: int
    pack: str
    pack_offset: int
    frame_len: int
    raw_len: int
    checksum: int
    base: ChunkRef | None


class ChunkSource:
    """Decodes chunks through the cache; shared by every reader of a store."""

    def __init__(self, pool: PackPool, cache: ChunkCache) -> None:
        self.pool = pool
        self.cache = cache

    def get(self, ref: ChunkRef, prefetch: bool = False) -> bytes:
        return self.cache.get_or_load(ref.id, lambda: self._decode(ref), prefetch)

    def _decode(self, ref: ChunkRef) -> bytes:
        fd = self.pool.acquire(ref.pack)
        try:
            frame = read_frame(fd, ref.pack_offset, ref.frame_len)
        finally:
            self.pool.release(ref.pack)
        if len(frame) < HEADER_SIZE:
            raise IntegrityError(f"chunk {ref.id}: frame truncated in pack {ref.pack}", ref.id)
        base = None
        if read_header(frame).flags & FLAGS_NEED_BASE:
            if ref.base is None:
                raise IntegrityError(f"chunk {ref.id}: delta frame without a base chunk", ref.id)
            base = self.get(ref.base)
        if len(frame) != ref.frame_len:
            raise IntegrityError(f"chunk {ref.id}: frame truncated in pack {ref.pack}", ref.id)
        raw = decode_chunk(frame, base=base, expected_checksum=ref.checksum, chunk_id=ref.id)
        if len(raw) != ref.raw_len:
            raise IntegrityError(f"chunk {ref.id}: decoded {len(raw)} bytes, expected {ref.raw_len}", ref.id)
        return raw


def load_chunk_refs(cur: sqlite3.Cursor, object_ids: list[int]) -> dict[int, list[ChunkRef]]:
    """Chunk refs of the given objects (and, recursively, of their delta bases), by object id, in order."""
    result: dict[int, list[ChunkRef]] = {}

    def load(object_id: int) -> list[ChunkRef]:
        if object_id in result:
            return result[object_id]
        row = cur.execute("SELECT base_id FROM objects WHERE id = ?", (object_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"object {object_id} is no longer in the store")
        base_refs = load(row[0]) if row[0] is not None else []
        refs = []
        for cid, seq, pack, off, flen, rlen, checksum in cur.execute(
            "SELECT c.id, c.seq, p.name, c.pack_offset, c.frame_len, c.raw_len, c.checksum"
            " FROM chunks c JOIN packs p ON p.id = c.pack_id WHERE c.object_id = ? ORDER BY c.seq",
            (object_id,),
        ):
            base = base_refs[seq] if seq < len(base_refs) else None
            refs.append(ChunkRef(cid, pack, off, flen, rlen, from_int64(checksum), base))
        result[object_id] = refs
        return refs

    for oid in object_ids:
        load(oid)
    return result


class FileReader:
    """Random-access reads of one stored file. Thread-safe; ``close`` releases the pinned packs."""

    def __init__(
        self, source: ChunkSource, catalog: Catalog, content_id: int, size: int, prefetcher: Prefetcher | None = None
    ) -> None:
        self._source = source
        self._prefetcher = prefetcher
        self.size = size
        with catalog.snapshot() as cur:
            segments = cur.execute(
                "SELECT file_offset, object_id FROM segments WHERE content_id = ? ORDER BY seq", (content_id,)
            ).fetchall()
            if not segments and size and not cur.execute(
                "SELECT 1 FROM contents WHERE id = ?", (content_id,)
            ).fetchone():
                raise NotFoundError("the file is no longer in the store")
            refs = load_chunk_refs(cur, [oid for _, oid in segments])
        self._starts: list[int] = []
        self._chunks: list[ChunkRef] = []
        for file_offset, object_id in segments:
            pos = file_offset
            for ref in refs[object_id]:
                self._starts.append(pos)
                self._chunks.append(ref)
                pos += ref.raw_len
        self._pinned = sorted({p for ref in self._chunks for p in _packs_of(ref)})
        for pack in self._pinned:
            source.pool.acquire(pack)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def chunks(self) -> list[ChunkRef]:
        return self._chunks

    def chunk_index(self, offset: int) -> int:
        """Index of the chunk holding byte ``offset``."""
        return bisect.bisect_right(self._starts, offset) - 1

    def chunk_span(self, index: int) -> tuple[int, int]:
        start = self._starts[index]
        return start, start + self._chunks[index].raw_len

    def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        i = first = self.chunk_index(offset)
        parts = []
        pos = offset
        while pos < end:
            start = self._starts[i]
            raw = self._source.get(self._chunks[i])
            take = raw[pos - start : min(end, start + len(raw)) - start]
            parts.append(take)
            pos += len(take)
            i += 1
        if self._prefetcher is not None:
            self._prefetcher.on_read(id(self), self._chunks, first, i - 1)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._prefetcher is not None:
            self._prefetcher.forget(id(self))
        for pack in self._pinned:
            self._source.pool.release(pack)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _packs_of(ref: ChunkRef) -> list[str]:
    out = []
    node: ChunkRef | None = ref
    while node is not None:
        out.append(node.pack)
        node = node.base
    return out
