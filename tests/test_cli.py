"""The command line: every command works end to end, and errors are one line with a non-zero exit code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from modelfs.cli import build_parser, main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelfs.cli", *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture
def model(tmp_path, make_model):
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((64, 256)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)}
    return make_model(tmp_path / "src", tensors, {"config.json": b'{"hidden": 64}\n'})


def test_full_cycle(tmp_path, model, capsysbinary):
    store = str(tmp_path / "store")
    assert main(["init", store]) == 0
    assert main(["add", store, str(model), "--name", "org/m"]) == 0
    assert main(["ls", store]) == 0
    assert main(["ls", store, "org/m"]) == 0
    assert main(["stats", store, "--json"]) == 0
    out = capsysbinary.readouterr().out.decode()
    stats = json.loads(out[out.index("{") :])
    assert stats["models"] == 1
    assert stats["logical_bytes"] == sum(p.stat().st_size for p in model.iterdir())
    assert 0 < stats["stored_bytes"] < stats["logical_bytes"]
    assert main(["cat", store, "org/m/model.safetensors"]) == 0
    assert capsysbinary.readouterr().out == (model / "model.safetensors").read_bytes()
    assert main(["export", store, "org/m", str(tmp_path / "out")]) == 0
    for p in model.iterdir():
        assert hashlib.sha256((tmp_path / "out" / p.name).read_bytes()).digest() == hashlib.sha256(
            p.read_bytes()
        ).digest()
    assert main(["verify", store]) == 0
    assert main(["rm", store, "org/m"]) == 0
    assert main(["gc", store]) == 0
    assert list((tmp_path / "store" / "packs").iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["ls", "{tmp}/nostore"], "is not a modelfs store"),
        (["add", "{store}", "{tmp}/missing", "--name", "a/b"], "does not exist"),
        (["add", "{store}", "{src}", "--name", "../evil"], "component"),
        (["cat", "{store}", "org/none/file"], "not in the store"),
        (["rm", "{store}", "org/none"], "not in the store"),
        (["init", "{src}"], "not an empty directory"),
    ],
)
def test_errors_are_one_line(tmp_path, model, args, message):
    store = tmp_path / "store"
    assert run("init", str(store)).returncode == 0
    argv = [a.format(tmp=tmp_path, store=store, src=model) for a in args]
    result = run(*argv)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        result = run(name, "--help")
        assert result.returncode == 0
        assert len(result.stdout.splitlines()) > 3, name
