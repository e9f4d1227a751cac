"""Parse and validate a safetensors file's header into a byte layout.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data area. The JSON
maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data area) and
may hold a ``"__metadata__"`` str -> str map. The ingest cuts a file into the header bytes, one segment per tensor
and verbatim gaps (padding or bytes no tensor claims), so that re-assembly is byte-exact.

Only the header is read; nothing here allocates in proportion to a shape or an offset taken from the file.
Pure functions, safe to call from any thread.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from os import PathLike
from typing import Any, BinaryIO

from .dtypes import DTYPES, DType
from .errors import BadInputError

# The reference implementation refuses headers above 100 MB (safetensors' MAX_HEADER_SIZE); so do we.
MAX_HEADER_LEN = 100_000_000
SUFFIX = ".safetensors"
_METADATA_KEY = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor; ``start``/``end`` are absolute offsets in the file."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Segment:
    """A run of file bytes: the ``header`` (length prefix + JSON), one ``tensor``, or a ``gap`` kept verbatim."""

    kind: str
    start: int
    end: int
    tensor: TensorEntry | None = None


@dataclass(frozen=True)
class SafetensorsLayout:
    """The validated layout of one file. ``tensors`` are sorted by (start, end, name)."""

    file_size: int
    header_len: int
    data_start: int
    metadata: dict[str, str] | None
    tensors: tuple[TensorEntry, ...]

    def segments(self) -> list[Segment]:
        """Segments tiling ``[0, file_size)`` in file order; empty tensors give empty segments."""
        out = [Segment("header", 0, self.data_start)]
        pos = self.data_start
        for t in self.tensors:
            if t.start > pos:
                out.append(Segment("gap", pos, t.start))
            out.append(Segment("tensor", t.start, t.end, t))
            pos = max(pos, t.end)
        if pos < self.file_size:
            out.append(Segment("gap", pos, self.file_size))
        return out


def looks_like_safetensors(path: str | PathLike[str]) -> bool:
    """True for names ending in ``.safetensors``: those get parsed; everything else is a generic blob."""
    return str(path).endswith(SUFFIX)


def parse_safetensors(f: BinaryIO, file_size: int, name: str = "<file>") -> SafetensorsLayout:
    """Read and validate the header of the file open as ``f`` (``file_size`` bytes long)."""

    def bad(msg: str) -> BadInputError:
        return BadInputError(f"{name}: {msg}")

    if file_size < 8:
        raise bad(f"not a safetensors file: {file_size} bytes, shorter than the 8-byte header length")
    f.seek(0)
    prefix = f.read(8)
    if len(prefix) != 8:
        raise bad("file truncated while reading the header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > file_size - 8:
        raise bad(f"header length {header_len} is larger than the rest of the file ({file_size - 8} bytes)")
    if header_len > MAX_HEADER_LEN:
        raise bad(f"header length {header_len} is absurd (limit {MAX_HEADER_LEN} bytes)")
    raw = f.read(header_len)
    if len(raw) != header_len:
        raise bad(f"file truncated: header needs {header_len} bytes, got {len(raw)}")
    header = _load_json(raw, bad)
    data_start = 8 + header_len
    data_size = file_size - data_start

    metadata: dict[str, str] | None = None
    entries: list[TensorEntry] = []
    for key, value in header.items():
        if key == _METADATA_KEY:
            metadata = _check_metadata(value, bad)
            continue
        entries.append(_check_entry(key, value, data_start, data_size, bad))
    entries.sort(key=lambda t: (t.start, t.end, t.name))
    _check_no_overlap(entries, bad)
    return SafetensorsLayout(file_size, header_len, data_start, metadata, tuple(entries))


def _load_json(raw: bytes, bad: Any) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"header is not valid UTF-8 (byte {e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise bad(f"header has duplicate key {e.args[0]!r}") from None
    except RecursionError:
        raise bad("header JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int strings over Python's digit limit
        raise bad(f"header is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise bad(f"header JSON must be an object, not {type(header).__name__}")
    return header


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _check_metadata(value: Any, bad: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise bad(f"{_METADATA_KEY} must be an object of strings, not {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise bad(f"{_METADATA_KEY}[{k!r}] must be a string, not {type(v).__name__}")
    return dict(value)


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entry(name: str, value: Any, data_start: int, data_size: int, bad: Any) -> TensorEntry:
    if name == "" or "\x00" in name:
        raise bad(f"tensor name {name!r} is empty or contains NUL")
    if not isinstance(value, dict):
        raise bad(f"tensor {name!r}: entry must be an object, not {type(value).__name__}")
    keys = set(value)
    if keys != _ENTRY_KEYS:
        missing = sorted(_ENTRY_KEYS - keys)
        extra = sorted(keys - _ENTRY_KEYS)
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        detail = "; ".join(parts)
        raise bad(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets ({detail})")
    dtype_name = value["dtype"]
    if not isinstance(dtype_name, str):
        raise bad(f"tensor {name!r}: dtype must be a string")
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise bad(f"tensor {name!r}: unknown dtype {dtype_name!r}")
    shape = value["shape"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise bad(f"tensor {name!r}: shape must be a list of non-negative integers")
    offsets = value["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise bad(f"tensor {name!r}: data_offsets must be [begin, end] of non-negative integers")
    begin, end = offsets
    if begin > end:
        raise bad(f"tensor {name!r}: data_offsets [{begin}, {end}] run backwards")
    if end > data_size:
        raise bad(f"tensor {name!r}: data_offsets end {end} is past the end of the data ({data_size} bytes)")
    span = end - begin
    bits = _bits_capped(dtype, shape, data_size * 8)
    if bits is None or bits != span * 8:
        needs = "more than the whole file" if bits is None else f"{bits / 8:g} bytes"
        raise bad(f"tensor {name!r}: shape {shape} of {dtype.name} needs {needs}, but data_offsets span {span} bytes")
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _bits_capped(dtype: DType, shape: list[int], cap: int) -> int | None:
    """Bits that ``shape`` elements take, or None once they exceed ``cap``.

    Stops multiplying early so a hostile shape of huge dimensions costs nothing.
    """
    if 0 in shape:
        return 0
    bits: int = dtype.bits
    for d in shape:
        bits *= d
        if bits > cap:
            return None
    return bits


def _check_no_overlap(entries: list[TensorEntry], bad: Any) -> None:
    """Entries are sorted by (start, end). Non-empty tensors must be disjoint; an empty one must not sit inside one."""
    last: TensorEntry | None = None
    for t in entries:
        if last is not None and t.start < last.end:
            if t.start == t.end:
                raise bad(f"empty tensor {t.name!r} lies inside tensor {last.name!r}")
            raise bad(
                f"tensors {last.name!r} [{last.start}, {last.end}) and {t.name!r} [{t.start}, {t.end}) overlap"
            )
        if t.end > t.start and (last is None or t.end > last.end):
            last = t
