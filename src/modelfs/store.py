"""The store: a directory holding ``catalog.db``, ``packs/`` and ``tmp/``; the API every command uses.

Writers (``add``, ``rm``, ``gc``) hold the writer lock (``lock.py``) and publish packs before the one catalog
transaction that makes their change visible. Readers take catalog snapshots and never the lock. The FUSE layer,
the CLI and the tests all go through this class; nothing here knows about FUSE or the terminal.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .cache import ChunkCache
from .catalog import FORMAT_VERSION, Catalog, bump_generation, last_insert_id
from .codec.registry import codec_name
from .errors import (
    AlreadyExistsError,
    BadInputError,
    IntegrityError,
    InUseError,
    NotAStoreError,
    NotFoundError,
)
from .ingest import BaseFinder, Ingest, ProgressFn, scan_source
from .lock import writer_lock
from .names import check_model_name, split_store_path
from .packs import PACK_HEADER, PackPool, PackWriter, fsync_dir, read_frame
from .prefetch import Prefetcher
from .reader import ChunkSource, FileReader, load_chunk_refs
from .tree import DirEntry, FileEntry, Tree

CATALOG = "catalog.db"
# 1 MiB raw chunks. On the real MiniLM-L6 weights the stored ratio is flat from 128 KiB to 4 MiB (FP32 0.8186-0.8189,
# BF16 0.6650-0.6654) and single-thread decode is fastest at 1 MiB (FP32 748 MB/s, BF16 587 MB/s; 128 KiB: 451 and
# 362, per-chunk overhead), a 1 MiB FUSE request touches one or two chunks, and a random 4 KiB read decodes ~0.9 MiB
# (bench/chunk_size.py, docs/benchmarks.md).
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_PACK_SIZE = 256 << 20
REPACK_BELOW = 0.5


@dataclass(frozen=True)
class ModelInfo:
    name: str
    files: int
    logical_bytes: int
    stored_bytes: int
    added: float
    base: str | None


@dataclass(frozen=True)
class Usage:
    logical_bytes: int
    stored_bytes: int
    disk_bytes: int


@dataclass
class GcReport:
    objects_freed: int = 0
    packs_deleted: int = 0
    packs_rewritten: int = 0
    bytes_reclaimed: int = 0


@dataclass
class VerifyReport:
    objects: int = 0
    chunks: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    orphan_packs: list[str] = field(default_factory=list)


class Store:
    """An open store. Thread-safe for readers; writers serialise on the store lock."""

    def __init__(self, root: Path, catalog: Catalog, cache_bytes: int, prefetch: bool) -> None:
        self.root = root
        self.catalog = catalog
        self.chunk_size = int(catalog.meta("chunk_size") or DEFAULT_CHUNK_SIZE)
        self.pack_size = int(catalog.meta("pack_size") or DEFAULT_PACK_SIZE)
        self.pool = PackPool(self.packs_dir)
        self.cache = ChunkCache(cache_bytes)
        self.source = ChunkSource(self.pool, self.cache)
        self.prefetcher = Prefetcher(self.source, workers=os.cpu_count() or 1) if prefetch else None

    @property
    def packs_dir(self) -> Path:
        return self.root / "packs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @classmethod
    def init(cls, root: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, pack_size: int = DEFAULT_PACK_SIZE) -> None:
        """Create an empty store at ``root`` (a new or empty directory)."""
        if not 4096 <= chunk_size <= 64 << 20:
            raise BadInputError("chunk size must be between 4 KiB and 64 MiB")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise BadInputError(f"{root} exists and is not an empty directory")
        root.mkdir(parents=True, exist_ok=True)
        (root / "packs").mkdir()
        (root / "tmp").mkdir()
        tmp_db = root / "tmp" / CATALOG
        catalog = Catalog(tmp_db, create=True)
        with catalog.transaction() as cur:
            cur.execute("INSERT INTO meta VALUES ('chunk_size', ?)", (str(chunk_size),))
            cur.execute("INSERT INTO meta VALUES ('pack_size', ?)", (str(pack_size),))
        catalog.close()
        for suffix in ("-wal", "-shm"):
            Path(str(tmp_db) + suffix).unlink(missing_ok=True)
        os.replace(tmp_db, root / CATALOG)
        fsync_dir(root)

    @classmethod
    def open(cls, root: Path, cache_bytes: int = 256 << 20, prefetch: bool = True) -> Store:
        """Open an existing store; a path that is not a store gets NotAStoreError.

        ``cache_bytes`` is the decoded-chunk cache budget; ``prefetch`` decodes ahead of forward-moving readers.
        """
        root = Path(root)
        if not root.is_dir():
            raise NotAStoreError(f"{root} is not a modelfs store (no such directory)")
        db = root / CATALOG
        if not db.is_file() or not (root / "packs").is_dir():
            raise NotAStoreError(f"{root} is not a modelfs store (run 'modelfs init {root}' to create one)")
        try:
            catalog = Catalog(db)
            version = catalog.meta("format_version")
        except sqlite3.DatabaseError as exc:
            raise NotAStoreError(f"{root} is not a modelfs store ({exc})") from None
        if version != str(FORMAT_VERSION):
            catalog.close()
            raise NotAStoreError(f"{root} has store format {version}; this modelfs reads format {FORMAT_VERSION}")
        (root / "tmp").mkdir(exist_ok=True)
        return cls(root, catalog, cache_bytes, prefetch)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.pool.close_all()
        self.catalog.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, on_wait: Callable[[], None] | None = None) -> AbstractContextManager[None]:
        return writer_lock(self.root / "lock", on_wait)

    # -- writing -----------------------------------------------------------------------------------------------

    def add(
        self,
        src: Path,
        name: str,
        *,
        base_finder: BaseFinder | None = None,
        base_model: str | None = None,
        progress: ProgressFn | None = None,
        on_wait: Callable[[], None] | None = None,
        workers: int | None = None,
    ) -> Ingest:
        """Ingest the model directory ``src`` as ``name``; all of it becomes visible at once, or none of it."""
        check_model_name(name)
        files = scan_source(Path(src))
        with self._lock(on_wait):
            self._check_name_free(name)
            base_model_id = None
            if base_model is not None:
                row = self.catalog.query("SELECT id FROM models WHERE name = ?", (base_model,))
                if not row:
                    raise NotFoundError(f"base model {base_model} is not in the store")
                base_model_id = row[0][0]
            writer = PackWriter(self.tmp_dir, self.packs_dir, self.pack_size)
            ingest = Ingest(self.catalog, writer, self.chunk_size, workers or os.cpu_count() or 1, base_finder, progress)
            try:
                encoded = ingest.run(files)
                ingest.commit(name, encoded, Path(src).resolve(), base_model_id)
            except BaseException:
                writer.abort()
                raise
            finally:
                ingest.close()
        return ingest

    def _check_name_free(self, name: str) -> None:
        for (other,) in self.catalog.query("SELECT name FROM models"):
            if other == name:
                raise AlreadyExistsError(f"model {name} is already in the store (rm it first to replace it)")
            if other.startswith(name + "/") or name.startswith(other + "/"):
                raise BadInputError(f"model name {name} would nest with model {other}; pick another name")

    def remove(self, name: str, on_wait: Callable[[], None] | None = None) -> None:
        """Remove a model's name and files; its bytes are reclaimed by ``gc``."""
        with self._lock(on_wait), self.catalog.transaction() as cur:
            row = cur.execute("SELECT id FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"model {name} is not in the store")
            dependents = [r[0] for r in cur.execute("SELECT name FROM models WHERE base_model_id = ?", (row[0],))]
            if dependents:
                raise InUseError(
                    f"model {name} is the delta base of {', '.join(sorted(dependents))}; remove those first"
                )
            cur.execute("DELETE FROM files WHERE model_id = ?", (row[0],))
            cur.execute("DELETE FROM models WHERE id = ?", (row[0],))
            bump_generation(cur)

    def gc(self, on_wait: Callable[[], None] | None = None) -> GcReport:
        """Delete what no model references: contents, objects (keeping delta bases), chunks, packs, temp files."""
        report = GcReport()
        with self._lock(on_wait):
            with self.catalog.transaction() as cur:
                cur.execute("DELETE FROM segments WHERE content_id NOT IN (SELECT content_id FROM files)")
                cur.execute("DELETE FROM contents WHERE id NOT IN (SELECT content_id FROM files)")
                cur.execute(
                    "CREATE TEMP TABLE live AS WITH RECURSIVE l(id) AS ("
                    " SELECT object_id FROM segments UNION"
                    " SELECT o.base_id FROM objects o JOIN l ON o.id = l.id WHERE o.base_id IS NOT NULL)"
                    " SELECT id FROM l"
                )
                cur.execute("DELETE FROM chunks WHERE object_id NOT IN (SELECT id FROM live)")
                report.objects_freed = cur.execute(
                    "DELETE FROM objects WHERE id NOT IN (SELECT id FROM live)"
                ).rowcount
                cur.execute("DROP TABLE live")
                dead = cur.execute(
                    "SELECT id, name, size FROM packs WHERE id NOT IN (SELECT DISTINCT pack_id FROM chunks)"
                ).fetchall()
                cur.executemany("DELETE FROM packs WHERE id = ?", [(pid,) for pid, _, _ in dead])
            for _, pack_name, size in dead:
                self._unlink_pack(pack_name)
                report.packs_deleted += 1
                report.bytes_reclaimed += size
            self._repack_sparse(report)
            known = {r[0] for r in self.catalog.query("SELECT name FROM packs")}
            for path in self.packs_dir.glob("*.pack"):
                if path.stem not in known:
                    report.bytes_reclaimed += path.stat().st_size
                    path.unlink()
                    report.packs_deleted += 1
            for path in self.tmp_dir.iterdir():
                report.bytes_reclaimed += path.stat().st_size if path.is_file() else 0
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            fsync_dir(self.packs_dir)
        return report

    def _unlink_pack(self, name: str) -> None:
        (self.packs_dir / f"{name}.pack").unlink(missing_ok=True)

    def _repack_sparse(self, report: GcReport) -> None:
        """Rewrite packs that are mostly dead so their space comes back; open readers keep the old file."""
        sparse = self.catalog.query(
            "SELECT p.id, p.name, p.size, SUM(c.frame_len) FROM packs p JOIN chunks c ON c.pack_id = p.id"
            " GROUP BY p.id HAVING SUM(c.frame_len) + ? < p.size * ?",
            (PACK_HEADER.size, REPACK_BELOW),
        )
        for pack_id, pack_name, size, _ in sparse:
            writer = PackWriter(self.tmp_dir, self.packs_dir, 1 << 62)
            moves = []
            fd = os.open(self.packs_dir / f"{pack_name}.pack", os.O_RDONLY)
            try:
                for chunk_id, off, length in self.catalog.query(
                    "SELECT id, pack_offset, frame_len FROM chunks WHERE pack_id = ? ORDER BY pack_offset",
                    (pack_id,),
                ):
                    moves.append((chunk_id, writer.append(read_frame(fd, off, length))))
            except BaseException:
                writer.abort()
                raise
            finally:
                os.close(fd)
            (new_name, new_size), = writer.publish()
            with self.catalog.transaction() as cur:
                cur.execute("INSERT INTO packs(name, size) VALUES (?, ?)", (new_name, new_size))
                new_id = last_insert_id(cur)
                cur.executemany(
                    "UPDATE chunks SET pack_id = ?, pack_offset = ? WHERE id = ?",
                    [(new_id, loc.offset, cid) for cid, loc in moves],
                )
                cur.execute("DELETE FROM packs WHERE id = ?", (pack_id,))
            self._unlink_pack(pack_name)
            report.packs_rewritten += 1
            report.bytes_reclaimed += size - new_size

    # -- reading -----------------------------------------------------------------------------------------------

    def generation(self) -> int:
        return int(self.catalog.meta("generation") or 0)

    def tree(self) -> Tree:
        """A snapshot of every committed model's files."""
        with self.catalog.snapshot() as cur:
            generation = int(cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            stored = dict(
                cur.execute(
                    "SELECT s.content_id, SUM(o.stored_size) FROM segments s JOIN objects o ON o.id = s.object_id"
                    " GROUP BY s.content_id"
                ).fetchall()
            )
            codecs = dict(
                cur.execute(
                    "SELECT s.content_id, GROUP_CONCAT(DISTINCT c.codec) FROM segments s"
                    " JOIN chunks c ON c.object_id = s.object_id GROUP BY s.content_id"
                ).fetchall()
            )
            rows = cur.execute(
                "SELECT m.name, f.path, c.size, f.mtime, f.mode, c.id FROM files f"
                " JOIN models m ON m.id = f.model_id JOIN contents c ON c.id = f.content_id"
            ).fetchall()
        entries = [
            FileEntry(
                f"{model}/{path}", size, mtime, mode, int(stored.get(cid) or 0), cid, _codec_names(codecs.get(cid))
            )
            for model, path, size, mtime, mode, cid in rows
        ]
        return Tree(entries, generation)

    def lookup_file(self, path: str) -> FileEntry:
        """The file at 'org/model/relative/path'; NotFoundError if it is not a file of a committed model."""
        split_store_path(path)
        entry = self.tree().lookup(path)
        if not isinstance(entry, FileEntry):
            kind = "a directory" if isinstance(entry, DirEntry) else "not in the store"
            raise NotFoundError(f"{path} is {kind}")
        return entry

    def open_reader(self, entry: FileEntry) -> FileReader:
        return FileReader(self.source, self.catalog, entry.content_id, entry.size, self.prefetcher)

    def models(self) -> list[ModelInfo]:
        rows = self.catalog.query(
            "SELECT m.id, m.name, m.added, b.name, COUNT(f.path), COALESCE(SUM(c.size), 0) FROM models m"
            " LEFT JOIN models b ON b.id = m.base_model_id LEFT JOIN files f ON f.model_id = m.id"
            " LEFT JOIN contents c ON c.id = f.content_id GROUP BY m.id ORDER BY m.name"
        )
        stored = dict(
            self.catalog.query(
                "SELECT model_id, SUM(stored_size) FROM (SELECT DISTINCT f.model_id, o.id, o.stored_size"
                " FROM files f JOIN segments s ON s.content_id = f.content_id JOIN objects o ON o.id = s.object_id)"
                " GROUP BY model_id"
            )
        )
        return [
            ModelInfo(name, nfiles, logical, int(stored.get(mid) or 0), added, base)
            for mid, name, added, base, nfiles, logical in rows
        ]

    def has_deltas(self) -> bool:
        """Whether any object is stored as a delta of a base (its reads may need the compiled difference kernels)."""
        return bool(self.catalog.query("SELECT 1 FROM objects WHERE base_id IS NOT NULL LIMIT 1"))

    def model_files(self, name: str) -> list[FileEntry]:
        if not self.catalog.query("SELECT 1 FROM models WHERE name = ?", (name,)):
            raise NotFoundError(f"model {name} is not in the store")
        prefix = name + "/"
        return sorted((e for e in self.tree().files() if e.path.startswith(prefix)), key=lambda e: e.path)

    def usage(self) -> Usage:
        logical = self.catalog.query(
            "SELECT COALESCE(SUM(c.size), 0) FROM files f JOIN contents c ON c.id = f.content_id"
        )[0][0]
        stored = self.catalog.query("SELECT COALESCE(SUM(frame_len), 0) FROM chunks")[0][0]
        disk = sum(p.stat().st_size for p in self.packs_dir.glob("*.pack"))
        disk += sum(p.stat().st_size for p in self.root.glob(CATALOG + "*"))
        return Usage(int(logical), int(stored), int(disk))

    def stats(self) -> dict[str, object]:
        """Where the bytes went: logical, after dedup, after compression (``delta.delta_report`` adds the deltas)."""
        usage = self.usage()
        unique = self.catalog.query("SELECT COALESCE(SUM(size), 0) FROM objects")[0][0]
        return {
            "models": len(self.catalog.query("SELECT id FROM models")),
            "logical_bytes": usage.logical_bytes,
            "unique_bytes": int(unique),
            "stored_bytes": usage.stored_bytes,
            "disk_bytes": usage.disk_bytes,
            "saved_by_dedup": usage.logical_bytes - int(unique),
            "saved_by_compression": int(unique) - usage.stored_bytes,
            "ratio": usage.stored_bytes / usage.logical_bytes if usage.logical_bytes else 1.0,
        }

    # -- checking ----------------------------------------------------------------------------------------------

    def verify(self, progress: ProgressFn | None = None) -> VerifyReport:
        """Decode every chunk of every object, check each checksum and each object's sha256."""
        report = VerifyReport()
        source = ChunkSource(PackPool(self.packs_dir), ChunkCache(64 << 20))
        with self.catalog.snapshot() as cur:
            objects = cur.execute("SELECT id, sha256, size FROM objects ORDER BY id").fetchall()
            packs = cur.execute("SELECT name, size FROM packs").fetchall()
        for pack_name, size in packs:
            path = self.packs_dir / f"{pack_name}.pack"
            if not path.is_file():
                report.problems.append(f"pack {pack_name} is missing")
            elif path.stat().st_size != size:
                report.problems.append(f"pack {pack_name} has {path.stat().st_size} bytes, expected {size}")
        known = {name for name, _ in packs}
        report.orphan_packs = sorted(p.stem for p in self.packs_dir.glob("*.pack") if p.stem not in known)
        total = sum(size for _, _, size in objects)
        done = 0
        for object_id, sha, size in objects:
            with self.catalog.snapshot() as cur:
                refs = load_chunk_refs(cur, [object_id])[object_id]
            h = hashlib.sha256()
            got = 0
            try:
                for ref in refs:
                    raw = source.get(ref)
                    h.update(raw)
                    got += len(raw)
                    report.chunks += 1
            except (IntegrityError, OSError) as exc:
                report.problems.append(f"object {object_id}: {exc}")
            else:
                if got != size or h.digest() != sha:
                    report.problems.append(f"object {object_id}: content hash does not match its {size} bytes")
            report.objects += 1
            report.bytes += got
            done += size
            if progress is not None:
                progress(done, total)
        source.pool.close_all()
        return report

    def iter_file(self, entry: FileEntry, piece: int = 8 << 20) -> Iterator[bytes]:
        """A file's bytes in pieces, for ``cat`` and ``export``."""
        with self.open_reader(entry) as reader:
            for off in range(0, entry.size, piece):
                yield reader.read(off, piece)


def _codec_names(ids: str | None) -> str:
    if not ids:
        return ""
    return ",".join(sorted({codec_name(int(i)) for i in str(ids).split(",")}))

