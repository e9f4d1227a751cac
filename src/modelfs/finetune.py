"""A real base/fine-tune family for the delta (BitX) work: all-MiniLM-L6-v2 fine-tuned on CPU.

Each fine-tune is a few dozen AdamW steps of masked-token prediction (BERT's 80/10/10 masking)
on text taken from the docstrings of a fixed list of standard-library modules, read from their
source files. A fresh MLM head is put on the MiniLM encoder; only the encoder is saved, under the
base file's tensor names, order and dtypes, so tensors match the base by name. Tensors that get no
gradient (the pooler, the position_ids buffer) stay bit-identical, as in real fine-tunes.

Deterministic for a given torch build and corpus: seeded RNGs, deterministic algorithms, one
intra-op thread (see STEP_THREADS). Results may differ across CPU instruction sets or torch
builds; the torch version and a digest of the corpus are part of the cache key. Needs
torch==2.13.0 and transformers; imported lazily by :func:`modelfs.samples.finetune_dirs` so the rest of modelfs never needs torch.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modelfs import samples
from modelfs.samples import Family, RawTensor, SamplesError

# Docstrings of these pure-Python stdlib modules are the training text: always present, no
# download, stable within a Python release (the corpus digest is part of the cache key).
CORPUS_MODULES = ("argparse", "collections", "dataclasses", "functools", "json", "pathlib",
                  "shutil", "subprocess", "textwrap", "typing", "zipfile")
SEQ_LEN = 128
BATCH = 4
MASK_PROB = 0.15
# One intra-op thread: results do not depend on the core count, and on this 2-core machine it was
# as fast as two threads once other work shares the cores (2 threads: 5 min wall under load ~10).
STEP_THREADS = 1


@dataclass(frozen=True)
class Recipe:
    """What distinguishes one fine-tune; all of it goes into the cache key."""

    seed: int
    lr: float
    steps: int
    weight_decay: float = 0.01


# Learning rates from the BERT paper's fine-tuning grid {2e-5, 3e-5, 5e-5}. Measured on the BF16
# casts (40 steps): ft1 leaves ~21% of base elements bit-identical, and XOR + byte grouping + zstd-3
# stores it at ~0.33 of its size; at 5e-5 that was 12% and 0.39.
FT1 = Recipe(seed=1, lr=2e-5, steps=40)
FT2 = Recipe(seed=2, lr=3e-5, steps=40)


def corpus_text() -> str:
    """Module, class and function docstrings of CORPUS_MODULES, in source order."""
    parts: list[str] = []
    for module in CORPUS_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise SamplesError(f"standard-library module {module} has no source file")
        origin = Path(spec.origin)
        if origin.name == "__init__.py" or origin.suffix == ".py":
            tree = ast.parse(origin.read_text(encoding="utf-8"))
            for node in [tree, *ast.walk(tree)]:
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        parts.append(" ".join(doc.split()))
    return "\n".join(dict.fromkeys(parts))


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    import torch

    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det)


def _token_blocks(base: Path, text: str) -> np.ndarray:
    """The corpus tokenised and cut into [CLS] + (SEQ_LEN-2) tokens + [SEP] rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.model_max_length = 1 << 30  # the whole corpus at once; rows are cut below
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    body = SEQ_LEN - 2
    rows = len(ids) // body
    blocks = np.array(ids[: rows * body], dtype=np.int64).reshape(rows, body)
    cls = np.full((rows, 1), tokenizer.cls_token_id, dtype=np.int64)
    sep = np.full((rows, 1), tokenizer.sep_token_id, dtype=np.int64)
    return np.concatenate([cls, blocks, sep], axis=1)


def finetune(base: Path, dst: Path, recipe: Recipe, blocks: np.ndarray) -> None:
    """Fine-tune ``base`` (an FP32 MiniLM dir) by ``recipe`` and write the result into ``dst``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    base_weights = samples.read_safetensors(base / samples.WEIGHTS_FILE)
    with _deterministic_torch(STEP_THREADS):
        torch.manual_seed(recipe.seed)
        config = BertConfig.from_pretrained(str(base))
        model = BertForMaskedLM(config)
        encoder_state = {name: torch.from_numpy(t.data.copy()) for name, t in base_weights.tensors.items()}
        missing, unexpected = model.bert.load_state_dict(encoder_state, strict=False)
        # position_ids is a buffer (persistent in older transformers, not in newer ones); the
        # pooler is not part of BertForMaskedLM. Anything else missing means a layout change.
        ignorable = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
        missing = [n for n in missing if n not in ignorable]
        unexpected = [n for n in unexpected if n not in ignorable]
        if missing or unexpected:
            raise SamplesError(f"MiniLM weights do not fit BertForMaskedLM: {missing} {unexpected}")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        rng = np.random.default_rng(recipe.seed)
        special = {int(blocks[0, 0]), int(blocks[0, -1])}
        losses: list[float] = []
        for _ in range(recipe.steps):
            batch = blocks[rng.choice(len(blocks), size=BATCH, replace=False)]
            inputs, labels = _mask(batch, rng, special, config.vocab_size)
            # Logits only at the masked positions: the 30522-wide head applied to every token was
            # most of the work (4 steps of batch 8: 20 s -> 11 s, one thread).
            hidden = model.bert(input_ids=torch.from_numpy(inputs)).last_hidden_state
            targets = torch.from_numpy(labels)
            picked = targets != -100
            logits = model.cls(hidden[picked])
            loss = torch.nn.functional.cross_entropy(logits, targets[picked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(round(loss.detach().item(), 4))
            optimizer.step()
        trained = {name: p.detach().numpy() for name, p in model.bert.state_dict().items()}
    tensors: dict[str, RawTensor] = {}
    for name, tensor in base_weights.tensors.items():
        new = trained.get(name)
        if new is None or tensor.dtype != "F32":
            tensors[name] = tensor  # pooler and buffers: untouched by MLM training
        else:
            tensors[name] = RawTensor("F32", new.astype("<f4").reshape(tensor.data.shape))
    samples.copy_tree_except(base, dst, {samples.WEIGHTS_FILE})
    samples.write_safetensors(dst / samples.WEIGHTS_FILE, tensors, base_weights.metadata)
    (dst / "finetune.json").write_text(json.dumps(
        {"base": samples.MINILM_NAME, **asdict(recipe), "mlm_loss": losses}, indent=2) + "\n")


def _mask(batch: np.ndarray, rng: np.random.Generator, special: set[int],
          vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: 15% of non-special tokens are targets; of those 80% [MASK], 10% random, 10% kept."""
    mask_id = 103  # [MASK] in the uncased BERT vocab MiniLM uses
    inputs = batch.copy()
    labels = np.full_like(batch, -100)
    candidates = ~np.isin(batch, list(special))
    chosen = candidates & (rng.random(batch.shape) < MASK_PROB)
    labels[chosen] = batch[chosen]
    action = rng.random(batch.shape)
    inputs[chosen & (action < 0.8)] = mask_id
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomised] = rng.integers(1000, vocab, size=int(randomised.sum()))
    return inputs, labels


def build_family(dest: Path, steps: int | None = None) -> Family:
    """Build (or reuse) base, ft1, ft2 in FP32 and BF16 under ``dest``. ``steps`` overrides both
    recipes' step count (tests use a couple of steps)."""
    import torch

    base = samples.minilm_dir(dest)
    base_bf16 = samples.minilm_bf16_dir(dest)
    text = corpus_text()
    env = f"torch={torch.__version__};corpus={hashlib.sha256(text.encode()).hexdigest()}"
    blocks: np.ndarray | None = None
    out: list[Path] = []
    for label, recipe in (("ft1", FT1), ("ft2", FT2)):
        if steps is not None:
            recipe = Recipe(recipe.seed, recipe.lr, steps, recipe.weight_decay)
        name = f"{samples.MINILM_NAME}-{label}" + (f"-s{steps}" if steps is not None else "")
        key = samples.digest(samples.RECIPE_VERSION, "finetune", samples.minilm_key(), env,
                              json.dumps(asdict(recipe)), str((SEQ_LEN, BATCH, MASK_PROB, STEP_THREADS)))

        def build(tmp: Path, recipe: Recipe = recipe) -> None:
            nonlocal blocks
            if blocks is None:
                blocks = _token_blocks(base, text)
            finetune(base, tmp, recipe, blocks)

        fp32 = samples.cached_build(dest, name, key, build)
        bf16 = samples.cached_build(dest, f"{name}-bf16", samples.digest("bf16", key),
                                      functools.partial(samples.write_bf16_model, fp32))
        out += [fp32, bf16]
    return Family(base, base_bf16, *out)
