"""Fine-tunes stored as deltas (XOR or ordered float difference) of their base model, and choosing the base.

Glossary: a *base* is a model already in the store; a *counterpart* is the base's tensor with the same name, dtype,
shape and chunk geometry as a tensor being added; a *delta object* is a tensor stored chunk by chunk as
``XOR(tensor, counterpart)`` or as their ordered difference (the ingest keeps a delta frame only where it is
smaller than the standalone one, so a delta never costs more than no delta).

- :func:`base_options` turns ``add --base NAME|auto|none`` into the keyword arguments of ``Store.add``.
- :func:`pick_base` ranks the store's models by how much XOR-ing would save on a sample of chunks: the order-0
  entropy of each byte plane of the tensor versus of its XOR with the counterpart (ZipLLM clusters families by
  bitwise similarity the same way); tensors that match no candidate are ignored.
- :func:`delta_report` says, per model stored against a base, what the delta and the sharing with the base saved.

Removing a base that a model was added against is refused (``InUseError`` from ``Store.remove``); ``gc`` keeps any
object a delta needs even then (its live set follows ``objects.base_id``), so no sequence of ``rm``/``gc`` can make
a delta unreadable. The finder runs on the ingest's thread and decodes base chunks through the store's cache.
"""

from __future__ import annotations

import json
import mmap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from .catalog import Catalog
from .codec.difference import sub_delta, undo_sub_delta
from .dtypes import DType
from .errors import BadInputError, NotFoundError
from .ingest import BaseChunks, BaseFinder, scan_source
from .layout import Layout, plan_layout
from .reader import ChunkRef, load_chunk_refs
from .safetensors_format import looks_like_safetensors, parse_safetensors
from .store import Store

AUTO = "auto"
NONE = "none"
# A delta of a delta of ... : reading one chunk decodes every chunk down the chain, so cap the depth.
MAX_CHAIN = 4
# Chunks sampled per tensor when ranking candidate bases, and tensors sampled per model: on the MiniLM family
# (101 tensors) 48 tensors x 1 chunk rank base/ft1/ft2 the same way as all chunks do, in ~0.3 s per candidate.
SAMPLE_TENSORS = 48
# Candidates compared in full after the cheap name/shape prefilter.
MAX_CANDIDATES = 8
# A candidate must cover this share of the new model's tensor bytes by name/shape/dtype to be considered.
MIN_COVERAGE = 0.5
# Pick a base only if XOR is estimated to save at least this share of the sampled standalone size; below it the
# extra decode on every read (and the rm constraint) is not worth it.
MIN_GAIN = 0.02


@dataclass(frozen=True)
class Counterpart:
    """A base tensor as the catalog knows it."""

    object_id: int
    dtype: str
    shape: tuple[int, ...]
    layout: Layout
    depth: int


@dataclass(frozen=True)
class Candidate:
    """One model considered as a base, with its estimated effect on the new model."""

    name: str
    matched_bytes: int
    standalone_bits: float
    delta_bits: float
    identical_bits: float
    sampled_bits: int

    @property
    def gain(self) -> float:
        """Estimated share of the standalone size that XOR-ing saves (per chunk, only where it helps)."""
        return 1.0 - self.delta_bits / self.standalone_bits if self.standalone_bits else 0.0

    @property
    def identical_bit_fraction(self) -> float:
        """Share of sampled bits equal in tensor and counterpart (ZipLLM's bitwise similarity)."""
        return self.identical_bits / self.sampled_bits if self.sampled_bits else 0.0


# -- the catalog side ----------------------------------------------------------------------------------------------


def _model_tensors(catalog: Catalog, model: str | None = None) -> dict[str, dict[str, Counterpart]]:
    """model name -> tensor name -> counterpart, for every named tensor segment (first one wins per name)."""
    sql = (
        "SELECT m.name, s.name, o.id, o.dtype, o.shape, o.layout FROM models m"
        " JOIN files f ON f.model_id = m.id JOIN segments s ON s.content_id = f.content_id"
        " JOIN objects o ON o.id = s.object_id WHERE s.name IS NOT NULL AND o.dtype IS NOT NULL"
    )
    params: tuple = ()
    if model is not None:
        sql += " AND m.name = ?"
        params = (model,)
    sql += " ORDER BY m.name, f.path, s.seq"
    depths = _depths(catalog)
    out: dict[str, dict[str, Counterpart]] = {}
    for mname, tname, oid, dtype, shape, layout in catalog.query(sql, params):
        out.setdefault(mname, {}).setdefault(
            tname, Counterpart(oid, dtype, tuple(json.loads(shape)), Layout.from_json(layout), depths.get(oid, 0))
        )
    return out


def _depths(catalog: Catalog) -> dict[int, int]:
    """Delta chain depth of every delta object (objects not listed have depth 0)."""
    rows = catalog.query(
        "WITH RECURSIVE d(id, depth) AS (SELECT id, 1 FROM objects WHERE base_id IS NOT NULL"
        " AND base_id IN (SELECT id FROM objects WHERE base_id IS NULL) UNION"
        " SELECT o.id, d.depth + 1 FROM objects o JOIN d ON o.base_id = d.id) SELECT id, MAX(depth) FROM d GROUP BY id"
    )
    return {int(oid): int(depth) for oid, depth in rows}


class _BaseReader:
    """Decodes a base object's chunks through the store's cache (chunk refs loaded once per object).

    Thread-safe: the ingest may ask for base chunks from its worker threads.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._refs: dict[int, list[ChunkRef]] = {}
        self._lock = threading.Lock()

    def chunk(self, object_id: int, seq: int) -> bytes:
        with self._lock:
            refs = self._refs.get(object_id)
            if refs is None:
                with self._store.catalog.snapshot() as cur:
                    refs = self._refs[object_id] = load_chunk_refs(cur, [object_id])[object_id]
        return self._store.source.get(refs[seq])


def make_finder(store: Store, base_model: str) -> BaseFinder:
    """A ``base_finder`` for ``Store.add``: the base's same-name, same-dtype, same-shape, same-geometry tensor.

    The base's tensor table is read at the first call, which happens inside ``add``'s writer lock, after ``add``
    checked that the base model exists: the object ids it returns cannot be collected while the add runs.
    """
    table: dict[str, Counterpart] | None = None
    reader = _BaseReader(store)

    def finder(name: str, dtype: DType, shape: tuple[int, ...], layout: Layout) -> BaseChunks | None:
        nonlocal table
        if table is None:
            table = _model_tensors(store.catalog, base_model).get(base_model, {})
        c = table.get(name)
        if c is None or c.dtype != dtype.name or c.shape != tuple(shape) or c.layout != layout:
            return None
        if c.depth >= MAX_CHAIN:
            return None
        oid = c.object_id
        return BaseChunks(oid, c.layout, lambda seq: reader.chunk(oid, seq))

    return finder


# -- choosing a base -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SourceTensor:
    path: Path
    name: str
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int


def _source_tensors(src: Path) -> list[_SourceTensor]:
    out = []
    for f in scan_source(src):
        if not looks_like_safetensors(f.path):
            continue
        with open(f.path, "rb") as fh:
            layout = parse_safetensors(fh, f.size, name=f.relpath)
        out += [_SourceTensor(f.path, t.name, t.dtype, t.shape, t.start, t.end) for t in layout.tensors if t.end > t.start]
    return out


def _entropy_bits(plane: np.ndarray) -> float:
    """Order-0 entropy of a byte array, in bits (the bound a per-plane entropy coder approaches)."""
    if plane.size == 0:
        return 0.0
    counts = np.bincount(plane, minlength=256)
    p = counts[counts > 0] / plane.size
    return float(-(p * np.log2(p)).sum() * plane.size)


def plane_bits(raw: bytes | np.ndarray, width: int) -> float:
    """Estimated coded size in bits of ``raw`` byte-grouped into ``width`` planes, each entropy coded or raw."""
    arr = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw
    n = arr.size // max(1, width)
    planes = arr[: n * width].reshape(n, width)
    total = 8.0 * (arr.size - n * width)
    for i in range(width):
        total += min(8.0 * n, _entropy_bits(planes[:, i]))
    return total


def _sample_seqs(nchunks: int) -> list[int]:
    return [nchunks // 2]


def _sample_tensors(tensors: list[_SourceTensor]) -> list[_SourceTensor]:
    """Up to SAMPLE_TENSORS tensors spread over the model, weighted towards the big ones."""
    big = sorted(tensors, key=lambda t: (-(t.end - t.start), t.name))
    return big[:SAMPLE_TENSORS]


def rank_bases(store: Store, src: Path, exclude: set[str] | None = None) -> list[Candidate]:
    """Every model in the store that could be ``src``'s base, best first (largest estimated gain)."""
    tensors = _source_tensors(Path(src))
    total = sum(t.end - t.start for t in tensors)
    if not tensors or not total:
        return []
    index = _model_tensors(store.catalog)
    chunk_size = store.chunk_size
    layouts = {t.name: plan_layout(t.end - t.start, t.dtype, t.shape, chunk_size) for t in tensors}

    def usable(c: Counterpart | None, t: _SourceTensor) -> bool:
        return (
            c is not None and c.dtype == t.dtype.name and c.shape == tuple(t.shape)
            and c.layout == layouts[t.name] and c.depth < MAX_CHAIN
        )

    coverage = []
    for model, table in index.items():
        if exclude and model in exclude:
            continue
        matched = sum(t.end - t.start for t in tensors if usable(table.get(t.name), t))
        if matched >= MIN_COVERAGE * total:
            coverage.append((matched, model))
    coverage.sort(key=lambda x: (-x[0], x[1]))
    sample = _sample_tensors(tensors)
    reader = _BaseReader(store)
    out = []
    for matched, model in coverage[:MAX_CANDIDATES]:
        table = index[model]
        standalone = delta = same = bits = 0.0
        for t, raw, seq in _iter_samples(sample, layouts):
            c = table.get(t.name)
            if not usable(c, t):
                continue
            assert c is not None
            base_raw = reader.chunk(c.object_id, seq)
            if len(base_raw) != len(raw):
                continue
            a = np.frombuffer(raw, dtype=np.uint8)
            x = np.bitwise_xor(a, np.frombuffer(base_raw, dtype=np.uint8))
            width = max(1, t.dtype.itemsize)
            # Weight each sample by the tensor bytes it stands for, so big tensors count for what they cost.
            weight = (t.end - t.start) / len(raw)
            plain = plane_bits(a, width)
            standalone += weight * plain
            delta += weight * min(plain, plane_bits(x, width))
            same += weight * (8.0 * x.size - float(np.unpackbits(x).sum()))
            bits += weight * 8.0 * x.size
        out.append(Candidate(model, matched, standalone, delta, same, int(bits)))
    out.sort(key=lambda c: (-(c.standalone_bits - c.delta_bits), c.name))
    return out


def _iter_samples(
    sample: list[_SourceTensor], layouts: dict[str, Layout]
) -> Iterator[tuple[_SourceTensor, bytes, int]]:
    """(tensor, raw bytes of one sampled chunk, chunk seq) for the sampled tensors, reading ``src`` via mmap."""
    by_path: dict[Path, list[_SourceTensor]] = {}
    for t in sample:
        by_path.setdefault(t.path, []).append(t)
    for path, ts in by_path.items():
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for t in ts:
                chunks = layouts[t.name].chunks(t.end - t.start)
                for seq in _sample_seqs(len(chunks)):
                    off, length = chunks[seq]
                    yield t, mm[t.start + off : t.start + off + length], seq


def pick_base(store: Store, src: Path, exclude: set[str] | None = None) -> Candidate | None:
    """The best base for ``src``, or None when no model in the store is estimated to save ``MIN_GAIN``."""
    ranked = rank_bases(store, src, exclude)
    if ranked and ranked[0].gain >= MIN_GAIN:
        return ranked[0]
    return None


class AddOptions(TypedDict, total=False):
    """The keyword arguments :func:`base_options` hands to ``Store.add``."""

    base_finder: BaseFinder
    base_model: str


def base_options(store: Store, base: str | None, src: Path) -> AddOptions:
    """Keyword arguments of ``Store.add`` for ``add --base BASE``: a model name, ``auto`` or ``none``."""
    if base is None or base == NONE:
        return {}
    if base == AUTO:
        choice = pick_base(store, src)
        if choice is None:
            return {}
        base = choice.name
    elif not store.catalog.query("SELECT 1 FROM models WHERE name = ?", (base,)):
        raise NotFoundError(f"base model {base} is not in the store")
    if not _model_tensors(store.catalog, base).get(base):
        raise BadInputError(f"base model {base} has no safetensors tensors to store deltas against")
    return {"base_finder": make_finder(store, base), "base_model": base}


# -- reporting -----------------------------------------------------------------------------------------------------


def delta_report(store: Store) -> list[dict[str, object]]:
    """Per model added against a base: what it stores, what it shares with the base, what the deltas saved.

    ``delta_stored`` is the stored size of its delta objects; ``delta_standalone_est`` estimates what they would
    cost standalone as the stored size of their counterparts in the base (same name, shape and dtype, so close in
    statistics) where those are themselves standalone, and their logical size otherwise. ``shared_with_base`` is
    the logical size of tensors and files bit-identical to the base's (stored once, by dedup).
    """
    cat = store.catalog
    rows = cat.query(
        "SELECT m.id, m.name, b.id, b.name FROM models m JOIN models b ON b.id = m.base_model_id ORDER BY m.name"
    )
    report = []
    for mid, name, bid, bname in rows:
        objects = cat.query(
            "SELECT DISTINCT o.id, o.size, o.stored_size, o.base_id, bo.stored_size, bo.base_id FROM files f"
            " JOIN segments s ON s.content_id = f.content_id JOIN objects o ON o.id = s.object_id"
            " LEFT JOIN objects bo ON bo.id = o.base_id WHERE f.model_id = ?",
            (mid,),
        )
        base_objects = {
            r[0]
            for r in cat.query(
                "SELECT DISTINCT s.object_id FROM files f JOIN segments s ON s.content_id = f.content_id"
                " WHERE f.model_id = ?",
                (bid,),
            )
        }
        logical = cat.query(
            "SELECT COALESCE(SUM(c.size), 0) FROM files f JOIN contents c ON c.id = f.content_id WHERE f.model_id = ?",
            (mid,),
        )[0][0]
        stored = shared = d_count = d_logical = d_stored = d_est = 0
        for oid, size, ssize, base_id, bstored, bbase in objects:
            if oid in base_objects:
                shared += size
                continue
            stored += ssize
            if base_id is not None:
                d_count += 1
                d_logical += size
                d_stored += ssize
                d_est += bstored if bbase is None else size
        saved = d_est - d_stored
        report.append(
            {
                "model": name,
                "base": bname,
                "logical_bytes": int(logical),
                "stored_bytes": int(stored),
                "ratio": stored / logical if logical else 1.0,
                "shared_with_base": int(shared),
                "delta_tensors": d_count,
                "delta_logical": d_logical,
                "delta_stored": d_stored,
                "delta_standalone_est": d_est,
                "saved_by_delta_est": saved,
            }
        )
    return report


def entropy_bound(raw: bytes, width: int) -> float:
    """Order-0 entropy bound of ``raw``'s byte planes as a fraction of its size (for reports and benchmarks)."""
    return plane_bits(raw, width) / (8.0 * len(raw)) if raw else 1.0


__all__ = [
    "AUTO",
    "NONE",
    "Candidate",
    "base_options",
    "delta_report",
    "entropy_bound",
    "make_finder",
    "pick_base",
    "rank_bases",
    "sub_delta",
    "undo_sub_delta",
]
