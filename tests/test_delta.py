"""Delta (BitX) tests: fine-tunes stored as XOR deltas of a base, base choice, rm/gc semantics, stats. No mount.

Families are synthetic: a random-normal base at a trained model's scale, and fine-tunes that add small noise to a
random half of the elements (a real fine-tune moves weights by ~lr x steps, leaving sign and exponent mostly alone).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs import delta
from modelfs.cli import main as cli_main
from modelfs.codec.frame import FLAGS_NEED_BASE, read_header
from modelfs.delta import (
    base_options,
    delta_report,
    pick_base,
    rank_bases,
    sub_delta,
    undo_sub_delta,
)
from modelfs.errors import InUseError, NotFoundError
from modelfs.export import export_model
from modelfs.packs import read_frame
from modelfs.samples import RawTensor, bf16_bits_to_f32, f32_to_bf16_bits
from modelfs.store import Store

SHAPES = {"enc.0.weight": (256, 320), "enc.1.weight": (320, 256), "emb.weight": (200, 256), "norm.bias": (256,)}


def base_weights(seed: int, dtype: str) -> dict[str, np.ndarray | RawTensor]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray | RawTensor] = {}
    for name, shape in SHAPES.items():
        values = rng.normal(0.0, 0.05, shape).astype("<f4")
        out[name] = RawTensor("BF16", f32_to_bf16_bits(values)) if dtype == "BF16" else values
    return out


def finetune(base: dict[str, np.ndarray | RawTensor], seed: int, keep: set[str] = frozenset()) -> dict:
    """Move a random half of every tensor's elements by ~2% of the weight scale; tensors in ``keep`` stay."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray | RawTensor] = {}
    for name, t in base.items():
        if name in keep:
            out[name] = t
            continue
        values = bf16_bits_to_f32(t.data) if isinstance(t, RawTensor) else t
        moved = values + rng.normal(0.0, 1e-3, values.shape).astype("<f4") * (rng.random(values.shape) < 0.5)
        out[name] = RawTensor("BF16", f32_to_bf16_bits(moved)) if isinstance(t, RawTensor) else moved.astype("<f4")
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_all(store: Store, path: str) -> bytes:
    entry = store.lookup_file(path)
    with store.open_reader(entry) as reader:
        return reader.read(0, entry.size)


def xor_chunks(store: Store, model: str, flags: int = FLAGS_NEED_BASE) -> tuple[int, int]:
    """(chunks whose frame has any of ``flags``: by default any delta, all chunks) of the model's objects, read from
    the frames."""
    rows = store.catalog.query(
        "SELECT DISTINCT c.id, p.name, c.pack_offset, c.frame_len FROM models m JOIN files f ON f.model_id = m.id"
        " JOIN segments s ON s.content_id = f.content_id JOIN chunks c ON c.object_id = s.object_id"
        " JOIN packs p ON p.id = c.pack_id WHERE m.name = ?",
        (model,),
    )
    xor = 0
    for _, pack, off, length in rows:
        with open(store.packs_dir / f"{pack}.pack", "rb") as f:
            xor += bool(read_header(read_frame(f.fileno(), off, length)).flags & flags)
    return xor, len(rows)


def model_stored(store: Store, name: str) -> int:
    return next(m.stored_bytes for m in store.models() if m.name == name)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    Store.init(path, chunk_size=64 << 10)
    return path


@pytest.fixture
def family(tmp_path, make_model, request):
    dtype = getattr(request, "param", "BF16")
    base = base_weights(1, dtype)
    cfg = {"config.json": b'{"hidden": 256}'}
    return {
        "base": make_model(tmp_path / "base", base, cfg),
        "ft1": make_model(tmp_path / "ft1", finetune(base, 11, keep={"norm.bias"}), cfg),
        "ft2": make_model(tmp_path / "ft2", finetune(base, 12), cfg),
        "other": make_model(tmp_path / "other", base_weights(99, dtype), cfg),
    }


@pytest.mark.parametrize("family", ["BF16", "F32"], indirect=True)
def test_finetune_against_base_is_byte_exact_and_smaller(tmp_path, store_path, family):
    alone = tmp_path / "alone"
    Store.init(alone, chunk_size=64 << 10)
    with Store.open(alone) as store:
        store.add(family["ft1"], "org/ft1")
        standalone = model_stored(store, "org/ft1")
    with Store.open(store_path, cache_bytes=1 << 20) as store:
        store.add(family["base"], "org/base")
        assert not store.has_deltas()
        store.add(family["ft1"], "org/ft1", **base_options(store, "org/base", family["ft1"]))
        assert store.has_deltas()  # the mount warms the difference kernels up for such a store
        assert read_all(store, "org/ft1/model.safetensors") == (family["ft1"] / "model.safetensors").read_bytes()
        export_model(store, "org/ft1", tmp_path / "out")
        assert sha(tmp_path / "out/model.safetensors") == sha(family["ft1"] / "model.safetensors")
        assert store.verify().problems == []
        xor, total = xor_chunks(store, "org/ft1")
        assert xor >= total // 2
        delta_size = model_stored(store, "org/ft1")
        assert [m.base for m in store.models() if m.name == "org/ft1"] == ["org/base"]
    # The XOR removes what sign and exponent share with the base: well under the standalone size.
    assert delta_size < 0.8 * standalone


def test_delta_reads_survive_small_cache_and_random_offsets(store_path, family):
    data = (family["ft2"] / "model.safetensors").read_bytes()
    with Store.open(store_path, cache_bytes=70_000) as store:
        store.add(family["base"], "base")
        store.add(family["ft2"], "ft2", **base_options(store, "base", family["ft2"]))
        entry = store.lookup_file("ft2/model.safetensors")
        rng = np.random.default_rng(0)
        with store.open_reader(entry) as reader:
            for _ in range(200):
                off = int(rng.integers(0, len(data)))
                size = int(rng.integers(1, 200_000))
                assert reader.read(off, size) == data[off : off + size]


def test_identical_tensors_cost_nothing_and_mismatches_are_standalone(tmp_path, store_path, make_model, family):
    base = base_weights(1, "BF16")
    ft = finetune(base, 5, keep={"emb.weight"})
    ft["enc.1.weight"] = RawTensor("BF16", ft["enc.1.weight"].data.reshape(256, 320))  # same name, other shape
    ft["norm.bias"] = bf16_bits_to_f32(ft["norm.bias"].data)  # same name, other dtype
    src = make_model(tmp_path / "ft", ft)
    with Store.open(store_path) as store:
        store.add(family["base"], "base")
        store.add(src, "ft", **base_options(store, "base", src))
        rows = dict(
            store.catalog.query(
                "SELECT s.name, o.base_id FROM models m JOIN files f ON f.model_id = m.id"
                " JOIN segments s ON s.content_id = f.content_id JOIN objects o ON o.id = s.object_id"
                " WHERE m.name = 'ft' AND s.name IS NOT NULL"
            )
        )
        assert rows["enc.0.weight"] is not None
        assert rows["enc.1.weight"] is None and rows["norm.bias"] is None
        report = {r["model"]: r for r in delta_report(store)}["ft"]
        emb_bytes = 200 * 256 * 2
        assert report["shared_with_base"] >= emb_bytes
        assert report["delta_tensors"] == 1
        assert read_all(store, "ft/model.safetensors") == (src / "model.safetensors").read_bytes()


def test_rm_base_is_refused_while_a_finetune_depends_on_it(store_path, family):
    with Store.open(store_path) as store:
        store.add(family["base"], "base")
        store.add(family["ft1"], "ft1", **base_options(store, "base", family["ft1"]))
        with pytest.raises(InUseError, match="delta base of ft1"):
            store.remove("base")
        store.gc()
        assert read_all(store, "ft1/model.safetensors") == (family["ft1"] / "model.safetensors").read_bytes()
        store.remove("ft1")
        store.remove("base")
        store.gc()
        assert store.catalog.query("SELECT COUNT(*) FROM objects")[0][0] == 0


def test_gc_keeps_a_base_that_a_shared_delta_still_needs(store_path, family):
    """A model that dedups against a delta object keeps that delta's base alive, even once both models are gone."""
    with Store.open(store_path) as store:
        store.add(family["base"], "base")
        store.add(family["ft1"], "ft1", **base_options(store, "base", family["ft1"]))
        store.add(family["ft1"], "copy", **base_options(store, "none", family["ft1"]))
        store.remove("ft1")
        store.remove("base")  # no model names it as base any more
        store.gc()
        assert store.catalog.query("SELECT COUNT(*) FROM objects WHERE base_id IS NOT NULL")[0][0] > 0
        assert read_all(store, "copy/model.safetensors") == (family["ft1"] / "model.safetensors").read_bytes()
        assert store.verify().problems == []


def test_auto_picks_the_family_base_and_ignores_unrelated_models(store_path, family):
    with Store.open(store_path) as store:
        assert pick_base(store, family["ft1"]) is None  # empty store
        store.add(family["other"], "other")
        assert pick_base(store, family["ft1"]) is None  # same architecture, unrelated weights: XOR does not pay
        store.add(family["base"], "base")
        store.add(family["ft1"], "ft1", **base_options(store, "auto", family["ft1"]))
        assert [m.base for m in store.models() if m.name == "ft1"] == ["base"]
        ranked = rank_bases(store, family["ft2"])
        assert ranked[0].name == "base"  # ft2 moved from base independently of ft1: base is closer
        assert ranked[0].gain > 0.2
        assert 0.9 < ranked[0].identical_bit_fraction <= 1.0
        assert {c.name for c in ranked} == {"base", "ft1", "other"}
        assert next(c for c in ranked if c.name == "other").gain < delta.MIN_GAIN


def test_chain_depth_is_capped(store_path, family, monkeypatch):
    monkeypatch.setattr(delta, "MAX_CHAIN", 1)
    with Store.open(store_path) as store:
        store.add(family["base"], "base")
        store.add(family["ft1"], "ft1", **base_options(store, "base", family["ft1"]))
        store.add(family["ft2"], "ft2", **base_options(store, "ft1", family["ft2"]))
        depths = store.catalog.query(
            "SELECT o.base_id IS NOT NULL, b.base_id IS NOT NULL FROM models m JOIN files f ON f.model_id = m.id"
            " JOIN segments s ON s.content_id = f.content_id JOIN objects o ON o.id = s.object_id"
            " LEFT JOIN objects b ON b.id = o.base_id WHERE m.name = 'ft2' AND s.name IS NOT NULL"
        )
        # Only norm.bias, which ft1 shares unchanged with base (a standalone object), is stored as a delta.
        assert sorted(depths) == [(0, 0)] * 3 + [(1, 0)]
        assert read_all(store, "ft2/model.safetensors") == (family["ft2"] / "model.safetensors").read_bytes()


def test_unknown_base_is_an_error(store_path, family):
    with Store.open(store_path) as store, pytest.raises(NotFoundError, match="nope"):
        base_options(store, "nope", family["ft1"])


def test_cli_add_defaults_to_auto_and_stats_shows_savings(store_path, family, capsys):
    s = str(store_path)
    assert cli_main(["add", s, str(family["base"]), "--name", "org/base"]) == 0
    assert cli_main(["add", s, str(family["ft1"]), "--name", "org/ft1"]) == 0
    assert "(delta of org/base)" in capsys.readouterr().out
    assert cli_main(["add", s, str(family["ft2"]), "--name", "org/plain", "--base", "none"]) == 0
    assert "delta of" not in capsys.readouterr().out
    assert cli_main(["stats", s]) == 0
    out = capsys.readouterr().out
    assert "delta:                org/ft1 against org/base" in out
    assert "org/plain" not in out
    assert cli_main(["stats", s, "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["deltas"]
    assert entry["model"] == "org/ft1" and entry["base"] == "org/base"
    assert entry["saved_by_delta_est"] > 0.2 * entry["delta_standalone_est"]
    assert entry["delta_stored"] == entry["delta_standalone_est"] - entry["saved_by_delta_est"]
    assert cli_main(["rm", s, "org/base"]) != 0
    assert "delta base of org/ft1" in capsys.readouterr().err


@pytest.mark.finetune
def test_real_minilm_finetune_is_stored_against_its_base(tmp_path, minilm_fp32, minilm_bf16):
    """Two real AdamW steps on MiniLM (BF16): auto picks the base, the delta is byte-exact and much smaller."""
    from modelfs import finetune
    from modelfs.samples import write_bf16_model

    ft32, ft = tmp_path / "ft32", tmp_path / "ft"
    ft32.mkdir()
    ft.mkdir()
    blocks = finetune._token_blocks(minilm_fp32, finetune.corpus_text())
    finetune.finetune(minilm_fp32, ft32, finetune.Recipe(finetune.FT1.seed, finetune.FT1.lr, 2), blocks)
    write_bf16_model(ft32, ft)
    root = tmp_path / "store"
    Store.init(root)
    with Store.open(root) as store:
        store.add(minilm_bf16, "base")
        before = store.usage().stored_bytes
        store.add(ft, "ft1", **base_options(store, "auto", ft))
        added = store.usage().stored_bytes - before
        assert [m.base for m in store.models() if m.name == "ft1"] == ["base"]
        weights = ft / "model.safetensors"
        assert hashlib.sha256(read_all(store, "ft1/model.safetensors")).hexdigest() == sha(weights)
        (report,) = delta_report(store)
    # Standalone, these BF16 weights store at ~0.71 of their size (bench/compress.py); two steps move few bits.
    assert added < 0.5 * weights.stat().st_size
    assert report["delta_tensors"] > 50 and report["saved_by_delta_est"] > 0


@given(st.sampled_from([2, 4, 8]), st.data())
def test_sub_delta_round_trips_every_bit_pattern(width, data):
    n = data.draw(st.integers(0, 64))
    raw = data.draw(st.binary(min_size=n * width, max_size=n * width))
    base = data.draw(st.binary(min_size=n * width, max_size=n * width))
    assert undo_sub_delta(sub_delta(raw, base, width), base, width) == raw


def test_sub_delta_maps_an_ulp_step_to_a_small_number():
    base = np.array([1.0, -1.0, 0.0, -0.0, 3e-39], dtype="<f4")
    moved = np.nextafter(base, np.float32(5))
    assert np.frombuffer(sub_delta(moved.tobytes(), base.tobytes(), 4), "<u4").tolist() == [2, 2, 2, 4, 2]


def test_difference_frame_flags_and_damage():
    from modelfs.codec.frame import FLAG_XOR_BASE, decode_chunk, encode_chunk
    from modelfs.dtypes import dtype_by_name
    from modelfs.errors import IntegrityError

    bf16 = dtype_by_name("BF16")
    base = f32_to_bf16_bits(np.linspace(-1, 1, 4096, dtype="<f4")).tobytes()
    raw = f32_to_bf16_bits(np.linspace(-1, 1, 4096, dtype="<f4") * 1.01).tobytes()
    frame = encode_chunk(raw, bf16, base=base, sub_width=2)
    assert read_header(frame).flags == 2  # bits 1-2 = 1: ordered difference of 2-byte elements
    assert decode_chunk(frame, base=base) == raw
    with pytest.raises(IntegrityError, match="without its base"):
        decode_chunk(frame)
    both = bytearray(frame)
    both[6] |= FLAG_XOR_BASE
    with pytest.raises(IntegrityError, match="unknown flags"):
        decode_chunk(bytes(both), base=base)
    with pytest.raises(ValueError):
        encode_chunk(raw[:-1], bf16, base=base[:-1], sub_width=2)
