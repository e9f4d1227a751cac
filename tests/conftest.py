"""Shared pytest fixtures: small generated models and the real MiniLM samples.

- ``minilm_fp32`` / ``minilm_bf16`` (session): the real all-MiniLM-L6-v2 model dir, original FP32
  and a BF16 cast (built once per session by :mod:`modelfs.samples`; treat them as read-only).
- ``make_model`` (function): ``make_model(path, tensors, extra_files=None) -> path`` writes a Hugging
  Face style dir. ``tensors`` maps names to numpy arrays, or to ``RawTensor(dtype, bits)`` for dtypes
  numpy lacks (BF16, F8_*): e.g. ``bf16_array((64, 32), seed=1)``.
- ``bf16_array(shape, seed, scale=0.05) -> RawTensor``: random-normal BF16 weights, trained scale.
- ``notify_socket`` (function): a bound datagram socket standing in for systemd's ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelfs.samples import (
    RawTensor,
    bf16_array,
    minilm_bf16_dir,
    minilm_dir,
    write_safetensors,
)

__all__ = ["RawTensor", "bf16_array"]

MakeModel = Callable[..., Path]


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build directory for the real samples, shared by the whole session."""
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="session")
def minilm_fp32(samples_dir: Path) -> Path:
    """The original FP32 all-MiniLM-L6-v2 model dir (model.safetensors, config, tokenizer files)."""
    return minilm_dir(samples_dir)


@pytest.fixture(scope="session")
def minilm_bf16(samples_dir: Path) -> Path:
    """all-MiniLM-L6-v2 with every F32 tensor rounded to BF16."""
    return minilm_bf16_dir(samples_dir)


def _make_model(path: Path, tensors: Mapping[str, np.ndarray | RawTensor],
                extra_files: Mapping[str, bytes] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if any(isinstance(t, RawTensor) for t in tensors.values()):
        write_safetensors(path / "model.safetensors", tensors)
    else:
        save_file({k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}, str(path / "model.safetensors"))  # the library's own layout
    for rel, data in (extra_files or {}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


@pytest.fixture
def make_model() -> MakeModel:
    """Write a Hugging Face style model directory: model.safetensors plus extra files (relative path → bytes)."""
    return _make_model


@pytest.fixture(name="bf16_array")
def bf16_array_fixture() -> Callable[..., RawTensor]:
    """``bf16_array(shape, seed, scale=0.05)``: random-normal BF16 weights as a RawTensor."""
    return bf16_array


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound Unix datagram socket standing in for systemd's $NOTIFY_SOCKET: (socket, path)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()
