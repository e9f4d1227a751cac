"""Chunk codecs and the chunk frame.

Glossary: a *chunk* is a run of an object's raw bytes coded on its own (for random access); a *frame* is a chunk's
on-disk form (header + payload, frame.py); a *codec* turns raw bytes into a self-describing *payload* and is
known by a stable id (registry.py); *byte grouping* splits elements into *planes* of same-position bytes
(bytegroup.py).
"""

from .frame import FLAG_XOR_BASE, HEADER_SIZE, FrameHeader, decode_chunk, encode_chunk, read_header
from .registry import CODECS, Codec, codec_name, default_codec_id, get_codec

__all__ = [
    "CODECS",
    "FLAG_XOR_BASE",
    "HEADER_SIZE",
    "Codec",
    "FrameHeader",
    "codec_name",
    "decode_chunk",
    "default_codec_id",
    "encode_chunk",
    "get_codec",
    "read_header",
]
