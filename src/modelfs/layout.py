"""Chunk geometry: how an object's bytes are cut into independently compressed chunks.

The geometry is recorded per object (JSON in the catalog), so other layouts (e.g. 2-D tiles of rows × columns for
column-sliced reads) can be added later without a new store. Version 1 knows two:

- ``{"kind": "rows", "row_bytes": R, "rows": N}``: a 2-D (or higher) tensor cut into runs of N whole rows, so a
  row slice decodes only the chunks holding those rows;
- ``{"kind": "flat", "bytes": B}``: any byte string cut every B bytes (1-D tensors, blobs, tensors whose single
  row is larger than two chunks); B is a multiple of the element size, so planes stay aligned.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .dtypes import DType


@dataclass(frozen=True)
class Layout:
    """One object's geometry and the (raw_offset, raw_len) of each of its chunks."""

    kind: str
    unit: int
    per_chunk: int

    @property
    def chunk_bytes(self) -> int:
        return self.unit * self.per_chunk

    def chunks(self, size: int) -> list[tuple[int, int]]:
        step = self.chunk_bytes
        return [(off, min(step, size - off)) for off in range(0, size, step)]

    def to_json(self) -> str:
        if self.kind == "rows":
            return json.dumps({"kind": "rows", "row_bytes": self.unit, "rows": self.per_chunk})
        return json.dumps({"kind": "flat", "bytes": self.chunk_bytes})

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = json.loads(text)
        if data["kind"] == "rows":
            return cls("rows", int(data["row_bytes"]), int(data["rows"]))
        if data["kind"] == "flat":
            return cls("flat", int(data["bytes"]), 1)
        raise ValueError(f"unknown chunk layout {data['kind']!r}")


def plan_layout(size: int, dtype: DType | None, shape: tuple[int, ...] | None, target: int) -> Layout:
    """Pick the geometry of an object of ``size`` bytes for chunks of about ``target`` raw bytes."""
    itemsize = dtype.itemsize if dtype is not None and dtype.bits % 8 == 0 else 1
    if dtype is not None and shape is not None and len(shape) >= 2 and dtype.bits % 8 == 0:
        row_bytes = math.prod(shape[1:]) * itemsize
        if 0 < row_bytes <= 2 * target:
            return Layout("rows", row_bytes, max(1, target // row_bytes))
    step = max(itemsize, target - target % itemsize)
    return Layout("flat", step, 1)
