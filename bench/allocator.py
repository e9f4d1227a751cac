"""Allocator benchmark: one-thread decode of a whole model with glibc's default malloc thresholds and with the ones
the CLI sets (modelfs.allocator.tune_for_chunks), each in a fresh process, alternating.

Fixture: all-MiniLM-L6-v2 BF16 (modelfs.samples, cached in --samples), ingested once into a store under --work.
Each measurement is ``decode_all_mbps`` of bench/compress.py (every chunk read from its pack, decoded, checked; no
cache) in a new Python process; the two settings alternate --runs times. Writes bench/results/allocator.{json,md}.

    python bench/allocator.py [--samples DIR] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from modelfs.samples import minilm_bf16_dir
from modelfs.store import Store

HERE = Path(__file__).parent
CHILD = """
import sys
sys.path.insert(0, {bench!r})
from compress import decode_all_mbps
from modelfs.allocator import tune_for_chunks
from modelfs.store import Store
if {tuned!r}:
    assert tune_for_chunks()
with Store.open({store!r}) as store:
    print(decode_all_mbps(store, "m", 3))
"""


def measure(store: Path, tuned: bool) -> float:
    code = CHILD.format(bench=str(HERE), tuned=tuned, store=str(store))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path(tempfile.gettempdir()) / "modelfs-samples")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from compress import weights_only

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        store = Path(tmp) / "store"
        Store.init(store)
        with Store.open(store) as s:
            s.add(weights_only(minilm_bf16_dir(args.samples), Path(tmp)), "m")
        runs: dict[str, list[float]] = {"glibc defaults": [], "tune_for_chunks": []}
        for _ in range(args.runs):
            runs["glibc defaults"].append(measure(store, False))
            runs["tune_for_chunks"].append(measure(store, True))
    results = {"fixture": "MiniLM-L6 BF16", "runs": runs, "median_MBps": {k: statistics.median(v) for k, v in runs.items()}}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "allocator.json").write_text(json.dumps(results, indent=2))
    lines = ["| malloc thresholds | decode MB/s, median | every run |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} |" for k, v in runs.items()]
    table = "\n".join(lines) + "\n"
    (out / "allocator.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
