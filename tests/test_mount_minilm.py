"""The real all-MiniLM-L6-v2 weights through a real mount: byte-exact files, identical tensors, identical embeddings.

Kept apart from test_mount.py because importing torch and transformers alone takes several seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from test_mount import files_of, mounted, sha256

from modelfs.store import Store

SENTENCES = ["A mounted model must embed like the original.", "Deduplicated weights, byte for byte.", "ok"]


@pytest.fixture(scope="module")
def minilm_mount(
    tmp_path_factory: pytest.TempPathFactory, minilm_fp32: Path, minilm_bf16: Path
) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("minilm")
    Store.init(root / "store")
    with Store.open(root / "store") as store:
        store.add(minilm_fp32, "sentence-transformers/all-MiniLM-L6-v2")
        store.add(minilm_bf16, "sentence-transformers/all-MiniLM-L6-v2-bf16")
    with mounted(root / "store", root / "mnt") as mnt:
        yield mnt / "sentence-transformers"


def test_minilm_files_and_tensors_are_identical(minilm_mount: Path, minilm_fp32: Path, minilm_bf16: Path) -> None:
    for src, name in ((minilm_fp32, "all-MiniLM-L6-v2"), (minilm_bf16, "all-MiniLM-L6-v2-bf16")):
        source, served = files_of(src), files_of(minilm_mount / name)
        assert sorted(served) == sorted(source)
        for rel, path in source.items():
            assert sha256(served[rel]) == sha256(path), rel
    weights = "model.safetensors"
    with safe_open(str(minilm_fp32 / weights), "np") as a, safe_open(
        str(minilm_mount / "all-MiniLM-L6-v2" / weights), "np"
    ) as b:
        assert set(a.keys()) == set(b.keys()) and len(a.keys()) > 50
        for key in a.keys():  # noqa: SIM118 -- safe_open is not iterable
            assert np.array_equal(a.get_tensor(key), b.get_tensor(key)), key


def test_from_pretrained_through_the_mount_embeds_identically(minilm_mount: Path, minilm_fp32: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    def embed(model_dir: Path) -> object:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir)).eval()
        batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    original = embed(minilm_fp32)
    served = embed(minilm_mount / "all-MiniLM-L6-v2")
    assert original.shape == (3, 384)
    assert torch.equal(original, served)
