"""Codecs by stable id. The id is written in every chunk frame, so an id, once used, keeps its meaning forever.

Ids: 0 ``raw``, 1 ``zstd``, 2 ``bytegroup-zstd`` (v1). Ids 3 and up are for later codecs (entropy-coded planes).
"""

from __future__ import annotations

from typing import Protocol

from ..dtypes import DType
from .basic import RawCodec, ZstdCodec
from .bytegroup import BytegroupZstdCodec

RAW = 0
ZSTD = 1
BYTEGROUP_ZSTD = 2


class Codec(Protocol):
    """Turns a chunk's bytes into a self-describing payload and back. Must be thread-safe.

    ``decode`` raises :class:`modelfs.errors.IntegrityError` on any payload it cannot fully account for.
    """

    id: int
    name: str

    def encode(self, raw: memoryview, dtype: DType | None) -> bytes: ...

    def decode(self, payload: memoryview, raw_len: int) -> bytes: ...


CODECS: dict[int, Codec] = {c.id: c for c in (RawCodec(), ZstdCodec(), BytegroupZstdCodec())}


def get_codec(codec_id: int) -> Codec | None:
    """The codec of that id, or None if this version does not know it."""
    return CODECS.get(codec_id)


def codec_name(codec_id: int) -> str:
    c = CODECS.get(codec_id)
    return c.name if c is not None else f"codec-{codec_id}"


def default_codec_id(dtype: DType | None) -> int:
    """Byte grouping for multi-byte elements; plain zstd for blobs and 1-byte (or packed sub-byte) dtypes."""
    if dtype is None or dtype.itemsize <= 1:
        return ZSTD
    return BYTEGROUP_ZSTD
