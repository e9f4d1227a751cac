"""sd_notify over a datagram socket the test binds itself (no systemd needed)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from modelfs import notify


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_stopping_status_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path}
    assert notify.ready("serving /srv/store at /mnt/models", env=env)
    assert recv(sock) == "READY=1\nSTATUS=serving /srv/store at /mnt/models"
    assert notify.status("3 models\nloaded", env=env)
    assert recv(sock) == "STATUS=3 models loaded"  # one line: a newline would start a new KEY=
    assert notify.stopping(env=env)
    assert recv(sock) == "STOPPING=1"
    assert notify.extend_timeout(2.5, env=env)
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"


def test_abstract_namespace_address() -> None:
    name = f"modelfs-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert notify.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_unset_is_a_quiet_no_op() -> None:
    assert notify.ready(env={}) is False
    assert notify.stopping(env={"NOTIFY_SOCKET": ""}) is False


def test_unreachable_or_unsupported_socket_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert notify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert "nobody-listens" in caplog.text and "vsock" in caplog.text


def test_reads_os_environ_and_unset_environment(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify.notify("READY=1", unset_environment=True)
    assert recv(sock) == "READY=1"
    assert "NOTIFY_SOCKET" not in os.environ
    assert notify.stopping() is False


def test_sender_pid_is_the_process_that_notifies(notify_socket: tuple[socket.socket, str]) -> None:
    """systemd's NotifyAccess=main trusts the datagram's SCM_CREDENTIALS pid: it must be the daemon's own."""
    sock, path = notify_socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    code = "from modelfs import notify; import sys; sys.exit(0 if notify.ready('up') else 1)"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "NOTIFY_SOCKET": path})
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    assert proc.wait(timeout=30) == 0
    assert data == b"READY=1\nSTATUS=up"
    creds = [struct.unpack("3i", d[: struct.calcsize("3i")]) for lvl, typ, d in ancdata
             if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS]
    assert creds and creds[0][0] == proc.pid
