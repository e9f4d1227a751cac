"""The daemon's service side on a real FUSE mount: READY=1 once mounted, SIGTERM -> STOPPING=1 + clean unmount,
and a busy mount reported and exited non-zero. The file system is a one-file stand-in wired exactly as
``mount.serve`` wires the real one (ServiceRuntime + SigtermStop), so this needs no store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfs.metrics import scrape

DAEMON = textwrap.dedent("""
    import errno, logging, os, stat, sys, threading, time
    from pathlib import Path
    import mfusepy
    from modelfs.config import MountConfig
    from modelfs.service import ServiceRuntime, SigtermStop

    from modelfs.service import log_formatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    mnt, metrics_sock = Path(sys.argv[1]), sys.argv[2]
    DATA = b"weights" * 1000
    config = MountConfig(store=Path("/srv/store"), mountpoint=mnt, metrics=f"unix:{metrics_sock}")
    runtime = ServiceRuntime.start(config)
    handles = {}

    class Ops(mfusepy.Operations):
        def init(self, path):
            def wait():
                while not os.path.ismount(mnt):
                    time.sleep(0.01)
                runtime.mounted()
            threading.Thread(target=wait, daemon=True).start()

        def getattr(self, path, fh=None):
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path == "/model.safetensors":
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": len(DATA)}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", "..", "model.safetensors"]

        def open(self, path, flags):
            fh = len(handles) + 1
            handles[fh] = path
            runtime.metrics.file_opened()
            return fh

        def read(self, path, size, offset, fh):
            start = time.perf_counter()
            data = DATA[offset:offset + size]
            runtime.metrics.record_read(len(data), time.perf_counter() - start, path, offset)
            return data

        def release(self, path, fh):
            handles.pop(fh, None)
            runtime.metrics.file_closed()
            return 0

    stop = SigtermStop(mnt, open_files=lambda: sorted(handles.values()))
    stop.install()
    try:
        mfusepy.FUSE(Ops(), str(mnt), foreground=True, ro=True)
    finally:
        stop.uninstall()
        runtime.close()
    logging.info("unmounted %s", mnt)
""")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    mnt: Path
    notify: socket.socket
    metrics: str


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(20)
    metrics_path = tmp_path / "metrics.sock"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen([sys.executable, str(script), str(mnt), str(metrics_path)], env=env,
                            stderr=subprocess.PIPE)
    try:
        yield Daemon(proc, mnt, sock, f"unix:{metrics_path}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        sock.close()


def wait_ready(d: Daemon) -> str:
    message = d.notify.recv(4096).decode()
    mounted_when_ready = os.path.ismount(d.mnt)
    assert message.startswith("READY=1\n"), message
    assert mounted_when_ready, "READY=1 arrived before the mount was live"
    return message


def test_ready_after_mount_then_sigterm_unmounts_cleanly(daemon: Daemon) -> None:
    message = wait_ready(daemon)
    assert f"STATUS=serving /srv/store at {daemon.mnt}; metrics on {daemon.metrics}" in message
    with open(daemon.mnt / "model.safetensors", "rb") as f:
        assert f.read() == b"weights" * 1000
    assert "modelfs_read_bytes_total 7000.0" in scrape(daemon.metrics)

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.notify.recv(4096).decode().startswith("STOPPING=1")
    assert daemon.proc.wait(timeout=30) == 0
    stderr = daemon.proc.stderr.read().decode() if daemon.proc.stderr else ""
    assert f"SIGTERM: unmounted {daemon.mnt}" in stderr and f"unmounted {daemon.mnt}" in stderr
    assert not os.path.ismount(daemon.mnt)
    assert not Path(daemon.metrics.removeprefix("unix:")).exists()  # listener closed


def test_sigterm_while_busy_reports_and_exits_nonzero(daemon: Daemon) -> None:
    wait_ready(daemon)
    held = open(daemon.mnt / "model.safetensors", "rb")  # noqa: SIM115 - held open across the stop on purpose
    try:
        assert held.read(7) == b"weights"
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.notify.recv(4096).decode().startswith("STOPPING=1")
        assert daemon.notify.recv(4096).decode() == "STATUS=stopped while busy: 1 open files"
        assert daemon.proc.wait(timeout=30) == 1
        stderr = daemon.proc.stderr.read().decode() if daemon.proc.stderr else ""
        assert f"cannot unmount {daemon.mnt}" in stderr and "open files: /model.safetensors" in stderr
        deadline = time.monotonic() + 10
        while os.path.ismount(daemon.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.ismount(daemon.mnt)  # detached, not left dead for the next start
    finally:
        try:
            held.close()
        except OSError:
            pass


def test_log_lines_carry_journal_priorities_only_under_journald(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import logging, os, sys
        from modelfs.service import log_formatter
        if sys.argv[1] == "journal":
            st = os.fstat(2)
            os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif sys.argv[1] == "elsewhere":
            os.environ["JOURNAL_STREAM"] = "1:2"  # inherited from a parent whose stderr went to the journal
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(log_formatter())
        log = logging.getLogger("modelfs")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.info("mounted /srv/store at /mnt/models")
        log.warning("slow read: a offset 0 size 1 took 1.50 s")
        log.error("integrity error in read(a): chunk 42: bad frame")
    """)
    def lines(mode: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60,
                                check=True)
        return result.stderr.splitlines()

    assert lines("journal") == ["<6>mounted /srv/store at /mnt/models", "<4>slow read: a offset 0 size 1 took 1.50 s",
                                "<3>integrity error in read(a): chunk 42: bad frame"]
    plain = ["modelfs: INFO mounted /srv/store at /mnt/models",
             "modelfs: WARNING slow read: a offset 0 size 1 took 1.50 s",
             "modelfs: ERROR integrity error in read(a): chunk 42: bad frame"]
    assert lines("elsewhere") == plain
    assert lines("terminal") == plain


def test_sigterm_stop_outside_the_main_thread_is_a_no_op(tmp_path: Path) -> None:
    """Signals can only be caught in the main thread; elsewhere libfuse keeps SIGTERM and nothing breaks."""
    from modelfs.service import SigtermStop

    errors: list[BaseException] = []

    def body() -> None:
        try:
            stop = SigtermStop(tmp_path)
            stop.install()
            stop.uninstall()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread below
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
