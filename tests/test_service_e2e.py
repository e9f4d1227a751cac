"""The service end to end, as issue 6 asks: the unit's ExecStart under a test NOTIFY_SOCKET, live metrics and
status, models appearing/disappearing while mounted, SIGTERM, and mount(8) through fuse3's mount.fuse3.

Real store, real mount, real commands. Needs /usr/local/bin/modelfs for the mount(8) test (mount(8) runs helpers
with PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin); scripts/install creates that link.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "modelfs@.service"
MODELFS = str(Path(sysconfig.get_path("scripts")) / "modelfs")
REFRESH = 0.5  # refresh_interval in the test config: "appears within a few seconds" is checked against 5 s


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODELFS, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def make_model(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({"layer.weight": (rng.standard_normal((512, 384)) * 0.05).astype(np.float32),
               "layer.bias": rng.standard_normal(384).astype(np.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(f'{{"seed": {seed}}}\n')
    return path


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def exec_start(config: Path) -> list[str]:
    """The unit's ExecStart with this test's config and this machine's modelfs."""
    line = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    argv = line.removeprefix("ExecStart=").replace("/etc/modelfs/%i.toml", str(config)).split()
    return [MODELFS if arg == "/usr/local/bin/modelfs" else arg for arg in argv]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    assert run("init", store).returncode == 0
    result = run("add", store, make_model(tmp_path / "src" / "a", seed=1), "--name", "org/a")
    assert result.returncode == 0, result.stderr
    return store



def test_unit_exec_start_under_notify_socket(
    tmp_path: Path, store: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, notify_path = notify_socket
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    metrics = tmp_path / "metrics.sock"
    config = tmp_path / "models.toml"
    config.write_text(f'store = "{store}"\nmountpoint = "{mnt}"\ncache_size = "64M"\n'
                      f'metrics = "unix:{metrics}"\nrefresh_interval = {REFRESH}\n')
    assert run("umount", "--config", config, "--lazy", "--if-mounted").returncode == 0  # ExecStartPre, clean

    proc = subprocess.Popen(exec_start(config), env={**os.environ, "NOTIFY_SOCKET": notify_path},
                            stderr=subprocess.PIPE, text=True)
    try:
        message = sock.recv(4096).decode()
        assert os.path.ismount(mnt), "READY=1 came before the mount was live"
        assert message.startswith("READY=1"), message

        src = tmp_path / "src" / "a"
        for name in ("model.safetensors", "config.json"):
            assert sha256(mnt / "org" / "a" / name) == sha256(src / name)

        status = run("status", mnt)
        assert status.returncode == 0, status.stderr
        assert "reads" in status.stdout and "0 requests" not in status.stdout
        from modelfs.metrics import scrape

        assert "modelfs_read_bytes_total" in scrape(f"unix:{metrics}")

        # a model added while mounted appears; a removed one disappears; an open file keeps its bytes
        assert run("add", store, make_model(tmp_path / "src" / "b", seed=2), "--name", "org/b").returncode == 0
        assert wait_for(lambda: (mnt / "org" / "b" / "model.safetensors").exists(), 5.0)
        assert sha256(mnt / "org" / "b" / "model.safetensors") == sha256(tmp_path / "src" / "b" / "model.safetensors")
        original = (src / "model.safetensors").read_bytes()
        with open(mnt / "org" / "a" / "model.safetensors", "rb") as held:
            head = held.read(4096)
            assert run("rm", store, "org/a").returncode == 0
            assert run("gc", store).returncode == 0
            assert wait_for(lambda: not (mnt / "org" / "a").exists(), 5.0)
            assert head + held.read() == original

        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode().startswith("STOPPING=1")
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def test_bad_config_names_the_key_and_mounts_nothing(tmp_path: Path, store: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for line, key in (("cache_size = -1", "cache_size"), ("cache_sise = 1", "cache_sise"),
                      (f'store = "{tmp_path / "missing"}"', "store")):
        config = tmp_path / "bad.toml"
        body = f'mountpoint = "{mnt}"\n' + (line if line.startswith("store") else f'store = "{store}"\n{line}')
        config.write_text(body + "\n")
        result = subprocess.run(exec_start(config), capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode != 0
        assert key in result.stderr and str(config) in result.stderr and "Traceback" not in result.stderr
        assert not os.path.ismount(mnt)


def test_mount_8_through_mount_fuse3(tmp_path: Path, store: Path) -> None:
    assert Path("/usr/local/bin/modelfs").exists(), "run scripts/install (links /usr/local/bin/modelfs)"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "fuse.modelfs", str(store), str(mnt), "-o", "ro,cache_size=64M"],
                            capture_output=True, text=True, timeout=60, check=False)
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)
        src = tmp_path / "src" / "a"
        assert sha256(mnt / "org" / "a" / "model.safetensors") == sha256(src / "model.safetensors")
    finally:
        umount = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60, check=False)
    assert umount.returncode == 0, umount.stderr
    assert not os.path.ismount(mnt)
