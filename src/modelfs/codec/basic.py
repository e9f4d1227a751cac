"""The two dtype-blind codecs: ``raw`` (id 0, payload = the bytes) and ``zstd`` (id 1, payload = one zstd frame)."""

from __future__ import annotations

from ..dtypes import DType
from ..errors import IntegrityError
from . import _zstd


class RawCodec:
    """Stores bytes as they are: the fallback whenever coding does not shrink a chunk."""

    id = 0
    name = "raw"

    def encode(self, raw: memoryview, dtype: DType | None) -> bytes:
        return bytes(raw)

    def decode(self, payload: memoryview, raw_len: int) -> bytes:
        if len(payload) != raw_len:
            raise IntegrityError(f"raw payload is {len(payload)} bytes, expected {raw_len}")
        return bytes(payload)


class ZstdCodec:
    """zstd at level 3 over the whole chunk: for blobs and 1-byte dtypes, where byte grouping has nothing to split."""

    id = 1
    name = "zstd"

    def encode(self, raw: memoryview, dtype: DType | None) -> bytes:
        return _zstd.compress(raw)

    def decode(self, payload: memoryview, raw_len: int) -> bytes:
        return _zstd.decompress(payload, raw_len)
