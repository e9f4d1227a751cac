"""Golden bytes of the store format: the pack header, a frame inside a pack, the catalog's recorded geometry.

If one of these fails, the on-disk format changed: bump the format version and update docs/format.md.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import xxhash

from modelfs.catalog import FORMAT_VERSION
from modelfs.dtypes import DTYPES
from modelfs.layout import Layout, plan_layout
from modelfs.store import Store

# 40 bytes that no codec can shrink, so the frame is stored raw whatever the default codecs are.
PAYLOAD = bytes.fromhex("8f1b6ad0c93e47a25e71f4b80d2c9a6b3f18e7c45da29b60f1e3c8745ab9d21e06c3f75a8e1b4d92")

GOLDEN_PACK = bytes.fromhex(
    "4d465041434b0001"  # magic "MFPACK\0\1"
    "01000000"  # pack format version 1
    "00000000"  # reserved
    "4d466368"  # frame magic "MFch"
    "01"  # frame version
    "00"  # codec 0 (raw)
    "0000"  # flags
    "28000000"  # raw length 40
    "28000000"  # payload length 40
)


def test_pack_and_frame_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.bin").write_bytes(PAYLOAD)
    Store.init(tmp_path / "store", chunk_size=4096)
    with Store.open(tmp_path / "store") as store:
        store.add(src, "org/m")
    (pack,) = (tmp_path / "store" / "packs").iterdir()
    data = pack.read_bytes()
    assert data[: len(GOLDEN_PACK)] == GOLDEN_PACK
    assert data[len(GOLDEN_PACK) : len(GOLDEN_PACK) + 8] == xxhash.xxh3_64_intdigest(PAYLOAD).to_bytes(8, "little")
    assert data[len(GOLDEN_PACK) + 8 :] == PAYLOAD
    con = sqlite3.connect(tmp_path / "store" / "catalog.db")
    assert con.execute("SELECT value FROM meta WHERE key='format_version'").fetchone() == (str(FORMAT_VERSION),)
    assert con.execute("SELECT layout, dtype, shape FROM objects").fetchall() == [
        ('{"kind": "flat", "bytes": 4096}', None, None)
    ]
    assert con.execute("SELECT pack_offset, frame_len, raw_len, codec FROM chunks").fetchall() == [(16, 64, 40, 0)]


def test_layout_json_is_stable() -> None:
    rows = plan_layout(1000 * 768 * 2, DTYPES["BF16"], (1000, 768), 1 << 20)
    assert json.loads(rows.to_json()) == {"kind": "rows", "row_bytes": 1536, "rows": 682}
    assert Layout.from_json(rows.to_json()) == rows
    flat = plan_layout(10_000_000, DTYPES["F32"], (2_500_000,), 1 << 20)
    assert json.loads(flat.to_json()) == {"kind": "flat", "bytes": 1 << 20}
    assert flat.chunks(10_000_000)[-1] == (9 * (1 << 20), 10_000_000 - 9 * (1 << 20))
