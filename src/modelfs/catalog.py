"""The store's metadata: one SQLite database (``catalog.db``) in WAL mode.

Nouns: a *pack* is a file of chunk frames; a *chunk* is one independently compressed piece of an object; an
*object* is a deduplicated byte string (a tensor's data, a safetensors header, a gap, a whole non-tensor file)
identified by its sha256; a *content* is a whole file's bytes as a sequence of objects (*segments*), identified by
the file's sha256; a *model* is a named set of *files*, each a path pointing at a content.

Writers hold the store lock (``modelfs.lock``) and change the catalog in single transactions, after the pack files
they reference are durable, so a reader (another connection) sees a model completely or not at all. The
connection object is shared between threads under a lock: sqlite3 objects are not thread-safe.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT_VERSION = 1

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE packs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL);
CREATE TABLE objects(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    dtype TEXT,
    shape TEXT,
    layout TEXT NOT NULL,
    base_id INTEGER REFERENCES objects(id),
    stored_size INTEGER NOT NULL);
CREATE TABLE chunks(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id INTEGER NOT NULL REFERENCES objects(id),
    seq INTEGER NOT NULL,
    raw_offset INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    pack_id INTEGER NOT NULL REFERENCES packs(id),
    pack_offset INTEGER NOT NULL,
    frame_len INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    UNIQUE(object_id, seq));
CREATE INDEX chunks_pack ON chunks(pack_id);
CREATE TABLE contents(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL);
CREATE TABLE segments(
    content_id INTEGER NOT NULL REFERENCES contents(id),
    seq INTEGER NOT NULL,
    file_offset INTEGER NOT NULL,
    object_id INTEGER NOT NULL REFERENCES objects(id),
    name TEXT,
    PRIMARY KEY(content_id, seq));
CREATE INDEX segments_object ON segments(object_id);
CREATE TABLE models(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    added REAL NOT NULL,
    base_model_id INTEGER REFERENCES models(id),
    source TEXT NOT NULL);
CREATE TABLE files(
    model_id INTEGER NOT NULL REFERENCES models(id),
    path TEXT NOT NULL,
    content_id INTEGER NOT NULL REFERENCES contents(id),
    mode INTEGER NOT NULL,
    mtime REAL NOT NULL,
    PRIMARY KEY(model_id, path));
CREATE INDEX files_content ON files(content_id);
"""


def to_int64(value: int) -> int:
    """Map an unsigned 64-bit checksum into SQLite's signed INTEGER range."""
    return value - (1 << 64) if value >= 1 << 63 else value


def from_int64(value: int) -> int:
    """Inverse of :func:`to_int64`."""
    return value + (1 << 64) if value < 0 else value


class Catalog:
    """A connection to ``catalog.db``, serialised by a lock so that FUSE worker threads can share it."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        self._conn = sqlite3.connect(
            path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before add/rm/gc report success (the packs were fsynced before it).
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        if create:
            with self.transaction() as cur:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
                cur.execute("INSERT INTO meta VALUES ('generation', '0')")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: all of it commits, or none of it does."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Cursor]:
        """A read transaction: every query inside sees the same committed state."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None


def bump_generation(cur: sqlite3.Cursor) -> None:
    """Mark that the set of models changed, so that mounts refresh their tree."""
    cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")


def last_insert_id(cur: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (never None after a successful INSERT)."""
    if cur.lastrowid is None:
        raise RuntimeError("INSERT returned no row id")
    return cur.lastrowid
