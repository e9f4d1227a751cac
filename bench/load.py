"""Load time of a ≥ 1 GiB model through the mount versus the original files, cold and warm; read-ahead sweep.

The model: N perturbed copies of the real all-MiniLM-L6-v2 weights cast to BF16 (``modelfs.samples``: low mantissa
bits XOR-ed with noise, so no tensor dedups while the compressible sign/exponent bytes stay real), as the N shards
of one model directory plus its config and tokenizer files.

Workloads: ``safe_open(..., framework="pt")`` + ``get_tensor(...).clone()`` of every tensor of every shard
(safetensors memory-maps the file, so its pages fault in; safetensors 0.8's tensors are views of that mapping, so
without the copy, which a loader filling its parameters makes too, only a fifth of the bytes would ever be read),
and ``cat`` of every file (sequential ``read``).
Cold: original = after ``echo 3 > /proc/sys/vm/drop_caches``; mount = fresh mount + drop_caches (the daemon's
chunk cache starts empty too). Warm: the same pass again. Median of ``--reps``; everything in one run.
Read-ahead sweep: cold passes through fresh mounts with each ``read_ahead_kb`` / ``max_read``; the request sizes
come from the daemon's own count, logged at unmount.

Needs root (drop_caches, read_ahead_kb), fuse3 and torch. Usage:
    python bench/load.py [--work /var/tmp/modelfs-bench] [--copies 24] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelfs.samples import minilm_bf16_dir, perturbed_copies
from modelfs.store import Store

RESULTS = Path(__file__).resolve().parent / "results"
MODELFS = shutil.which("modelfs") or "modelfs"
MODEL_NAME = "bench/minilm-bf16-x"


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def build_model(work: Path, copies: int) -> Path:
    """One model dir whose shards are the perturbed copies (hard links when possible)."""
    samples = work / "samples"
    base = minilm_bf16_dir(samples)
    shards = perturbed_copies(base, samples, copies)
    model = work / f"model-x{copies}"
    if model.is_dir():
        return model
    tmp = work / f"model-x{copies}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("model.safetensors"))
    for i, shard in enumerate(shards, 1):
        dst = tmp / f"model-{i:05d}-of-{copies:05d}.safetensors"
        try:
            os.link(shard / "model.safetensors", dst)
        except OSError:
            shutil.copyfile(shard / "model.safetensors", dst)
    tmp.rename(model)
    return model


def build_store(work: Path, model: Path) -> tuple[Path, dict[str, float]]:
    store = work / f"store-{model.name}"
    info: dict[str, float] = {}
    if not (store / "catalog.db").exists():
        shutil.rmtree(store, ignore_errors=True)
        Store.init(store)
        start = time.perf_counter()
        with Store.open(store) as s:
            s.add(model, MODEL_NAME)
        info["ingest_seconds"] = time.perf_counter() - start
    with Store.open(store) as s:
        usage = s.usage()
    info.update(logical_bytes=usage.logical_bytes, stored_bytes=usage.stored_bytes)
    return store, info


def shards(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


def all_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.is_file())


def load_tensors(model_dir: Path) -> float:
    import torch  # noqa: F401  (framework="pt")
    from safetensors import safe_open

    start = time.perf_counter()
    count = 0
    for shard in shards(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
                count += f.get_tensor(key).clone().numel()
    assert count > 0
    return time.perf_counter() - start


def cat_files(model_dir: Path) -> float:
    files = [str(p) for p in all_files(model_dir)]
    start = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


class Mount:
    """A ``--foreground`` daemon (so its unmount summary can be read) with the given options."""

    def __init__(self, store: Path, mnt: Path, log: Path, options: str) -> None:
        self.mnt, self.log = mnt, log
        mnt.mkdir(parents=True, exist_ok=True)
        cmd = [MODELFS, "mount", str(store), str(mnt), "--foreground", "--log-level", "info"]
        if options:
            cmd += ["-o", options]
        with log.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount failed: {log.read_text()}")
            time.sleep(0.05)

    @property
    def model(self) -> Path:
        return self.mnt / MODEL_NAME

    def close(self) -> dict[str, int]:
        subprocess.run([MODELFS, "umount", str(self.mnt)], check=True)
        self.proc.wait(timeout=60)
        m = re.search(r"served (\d+) reads, (\d+) bytes, mean request (\d+) KiB, largest (\d+) KiB", self.log.read_text())
        if not m:
            return {}
        return {"requests": int(m[1]), "bytes": int(m[2]), "mean_request_kib": int(m[3]), "largest_kib": int(m[4])}


def median(values: list[float]) -> float:
    return statistics.median(values)


def main_table(work: Path, model: Path, store: Path, reps: int, options: str) -> dict[str, dict[str, list[float]]]:
    """{workload: {cell: [seconds per rep]}} for cells original/mount × cold/warm."""
    results: dict[str, dict[str, list[float]]] = {}
    workloads: dict[str, Callable[[Path], float]] = {"safe_open": load_tensors, "cat": cat_files}
    for name, run in workloads.items():
        cells: dict[str, list[float]] = {k: [] for k in ("original_cold", "original_warm", "mount_cold", "mount_warm")}
        for _ in range(reps):
            drop_caches()
            cells["original_cold"].append(run(model))
            cells["original_warm"].append(run(model))
            mount = Mount(store, work / "mnt", work / "daemon.log", options)
            try:
                drop_caches()
                cells["mount_cold"].append(run(mount.model))
                cells["mount_warm"].append(run(mount.model))
            finally:
                mount.close()
        results[name] = cells
        print(name, {k: round(median(v), 3) for k, v in cells.items()}, flush=True)
    return results


def sweep(work: Path, store: Path, reps: int, settings: list[tuple[int, int]]) -> list[dict[str, object]]:
    """Cold passes through fresh mounts for each (read_ahead_kb, max_read).

    Settings take turns within each repetition, so that load from other processes drifting over the run falls on
    all of them alike rather than on whichever ran last.
    """
    rows: list[dict[str, object]] = [
        {"read_ahead_kb": ra_kb or 128, "max_read_kib": max_read >> 10, "cat_seconds": [], "safe_open_seconds": []}
        for ra_kb, max_read in settings
    ]
    for rep in range(reps):
        for name, run in (("cat", cat_files), ("safe_open", load_tensors)):
            for row, (ra_kb, max_read) in zip(rows, settings, strict=True):
                mount = Mount(store, work / "mnt", work / "daemon.log", f"read_ahead_kb={ra_kb},max_read={max_read}")
                try:
                    drop_caches()
                    row[f"{name}_seconds"].append(run(mount.model))  # type: ignore[attr-defined]
                finally:
                    row[f"{name}_mean_request_kib"] = mount.close().get("mean_request_kib")
        print("sweep rep", rep + 1, rows, flush=True)
    return rows


def write_markdown(report: dict[str, object], path: Path) -> None:
    size = int(report["model"]["logical_bytes"])  # type: ignore[index]
    stored = int(report["model"]["stored_bytes"])  # type: ignore[index]
    lines = [
        "# Model load through the mount (bench/load.py)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Model: {report['model']['description']}  ",  # type: ignore[index]
        f"Logical {size / 2**30:.2f} GiB, stored {stored / 2**30:.2f} GiB (ratio {stored / size:.3f}).  ",
        f"Median of {report['reps']} runs; MB/s = logical bytes / time.",
        "",
        "| workload | original cold | original warm | mount cold | mount warm |",
        "|---|---|---|---|---|",
    ]
    for name, cells in report["main"].items():  # type: ignore[union-attr]
        cols = []
        for cell in ("original_cold", "original_warm", "mount_cold", "mount_warm"):
            t = median(cells[cell])
            cols.append(f"{t:.2f} s ({size / t / 1e6:.0f} MB/s)")
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    lines += [
        "",
        f"Read-ahead / request size sweep (cold, fresh mount each run, median of {report['sweep_reps']}, interleaved):",
        "",
        "| read_ahead_kb | max_read | cat cold | mean request (cat) | safe_open cold | mean request (safe_open) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["sweep"]:  # type: ignore[union-attr]
        cat_t, load_t = median(row["cat_seconds"]), median(row["safe_open_seconds"])
        lines.append(
            f"| {row['read_ahead_kb']} | {row['max_read_kib']} KiB | {cat_t:.2f} s ({size / cat_t / 1e6:.0f} MB/s) | "
            f"{row['cat_mean_request_kib']} KiB | {load_t:.2f} s ({size / load_t / 1e6:.0f} MB/s) | "
            f"{row['safe_open_mean_request_kib']} KiB |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/modelfs-bench"))
    parser.add_argument("--copies", type=int, default=24, help="perturbed BF16 MiniLM shards (24 ≈ 1.1 GB)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sweep-reps", type=int, default=5)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/load.py needs root (drop_caches, read_ahead_kb)", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    model = build_model(args.work, args.copies)
    store, info = build_store(args.work, model)
    print("model", model, info, flush=True)
    report: dict[str, object] = {
        "command": "python bench/load.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "reps": args.reps,
        "sweep_reps": args.sweep_reps,
        "model": {
            "description": f"{args.copies} perturbed copies of real all-MiniLM-L6-v2 BF16 weights as shards",
            **info,
        },
    }
    report["main"] = main_table(args.work, model, store, args.reps, "")
    settings = [(0, 1 << 20), (512, 1 << 20), (1024, 1 << 20), (4096, 1 << 20), (0, 128 << 10)]
    report["sweep"] = [] if args.skip_sweep else sweep(args.work, store, args.sweep_reps, settings)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, RESULTS / "load.md")
    print((RESULTS / "load.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
