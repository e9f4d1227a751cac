"""Live metrics: counters move, Prometheus text over TCP and a Unix socket, and ``modelfs status`` output."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfs.cache import ChunkCache
from modelfs.errors import BadInputError, IntegrityError, ModelfsError, NotFoundError, ReadTimeoutError
from modelfs.metrics import (
    STATUS_XATTR,
    Metrics,
    format_status,
    read_status_text,
    scrape,
    start_server,
    status_main,
)


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample in exposition text, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return values(text)[(name, tuple(sorted(labels.items())))]


def test_counters_move() -> None:
    m = Metrics(store="/srv/store", mountpoint="/mnt/models", version="0.1.0")
    before = m.exposition().decode()
    assert value(before, "modelfs_read_bytes_total") == 0
    assert value(before, "modelfs_errors_total", kind="integrity") == 0  # every kind exported from the start

    m.record_read(4096, 0.0002)
    m.record_read(1 << 20, 0.003)
    m.record_read(10, 0.7)
    m.file_opened()
    m.file_opened()
    m.file_closed()
    m.record_error(IntegrityError("bad frame", chunk_id=7))
    m.record_error(ReadTimeoutError("slow"))
    m.record_error(NotFoundError("gone"))
    m.record_error(OSError(errno.EIO, "io"))
    m.record_error(ValueError("bug"))
    m.record_error("integrity")
    m.set_tree(generation=12, files=4)
    text = m.exposition().decode()

    assert value(text, "modelfs_read_bytes_total") == 4096 + (1 << 20) + 10
    assert value(text, "modelfs_read_duration_seconds_count") == 3
    assert value(text, "modelfs_read_duration_seconds_sum") == pytest.approx(0.7032)
    assert value(text, "modelfs_read_duration_seconds_bucket", le="0.00025") == 1
    assert value(text, "modelfs_read_duration_seconds_bucket", le="0.005") == 2
    assert value(text, "modelfs_read_duration_seconds_bucket", le="0.5") == 2
    assert value(text, "modelfs_read_duration_seconds_bucket", le="1.0") == 3
    assert value(text, "modelfs_read_duration_seconds_bucket", le="+Inf") == 3
    assert value(text, "modelfs_open_files") == 1
    assert value(text, "modelfs_errors_total", kind="integrity") == 2
    for kind in ("timeout", "not_found", "io", "internal"):
        assert value(text, "modelfs_errors_total", kind=kind) == 1
    assert value(text, "modelfs_tree_generation") == 12 and value(text, "modelfs_files") == 4
    assert value(text, "modelfs_info", store="/srv/store", mountpoint="/mnt/models", version="0.1.0",
                 pid=str(os.getpid())) == 1
    assert value(text, "process_resident_memory_bytes") > 0


def test_latency_boundary_is_inclusive() -> None:
    """Prometheus buckets are "less than or equal": a read of exactly 1 ms belongs to le="0.001"."""
    m = Metrics()
    m.record_read(1, 0.001)
    text = m.exposition().decode()
    assert value(text, "modelfs_read_duration_seconds_bucket", le="0.0005") == 0
    assert value(text, "modelfs_read_duration_seconds_bucket", le="0.001") == 1


def test_slow_reads_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    m.record_read(4096, 0.01, path="org/m/model.safetensors", offset=8192)
    assert "slow read" not in caplog.text
    m.record_read(4096, 1.5, path="org/m/model.safetensors", offset=8192)
    assert "slow read: org/m/model.safetensors offset 8192 size 4096 took 1.50 s" in caplog.text


def test_cache_counters_come_from_the_real_cache() -> None:
    m = Metrics()
    assert not any(name == "modelfs_cache_hits_total" for name, _ in values(m.exposition().decode()))
    cache = ChunkCache(budget_bytes=2500)
    m.watch_cache(cache)
    for key in (1, 1, 2, 3, 1):  # miss, hit, miss, miss (evicts 1), miss (evicts 2)
        cache.get_or_load(key, lambda: b"x" * 1000)
    text = m.exposition().decode()
    assert value(text, "modelfs_cache_hits_total") == cache.stats.hits == 1
    assert value(text, "modelfs_cache_misses_total") == cache.stats.misses == 4
    assert value(text, "modelfs_cache_evictions_total") == cache.stats.evictions == 2
    assert value(text, "modelfs_decoded_bytes_total") == 4000
    assert value(text, "modelfs_cache_bytes") == cache.current_bytes == 2000
    assert value(text, "modelfs_cache_budget_bytes") == 2500


def test_prefetch_counters_come_from_the_cache() -> None:
    m = Metrics()
    cache = ChunkCache(budget_bytes=2500)
    m.watch_cache(cache)
    for key in (1, 2, 3):  # decoded ahead; 1 is evicted unread when 3 comes in
        cache.get_or_load(key, lambda: b"x" * 1000, prefetch=True)
    cache.get_or_load(2, lambda: b"never called")  # a reader asks for 2: a prefetch hit
    text = m.exposition().decode()
    assert value(text, "modelfs_prefetched_total") == cache.stats.prefetched == 3
    assert value(text, "modelfs_prefetch_hits_total") == cache.stats.prefetch_hits == 1
    assert value(text, "modelfs_prefetch_wasted_total") == cache.stats.prefetch_waste == 1
    assert value(text, "modelfs_cache_misses_total") == 0


def test_instances_do_not_share_counters() -> None:
    a, b = Metrics(), Metrics()
    a.record_read(100, 0.001)
    assert value(b.exposition().decode(), "modelfs_read_bytes_total") == 0


def test_root_xattr_hook() -> None:
    m = Metrics()
    m.record_read(5, 0.001)
    blob = m.root_xattr(STATUS_XATTR)
    assert blob is not None and value(blob.decode(), "modelfs_read_bytes_total") == 5
    assert m.root_xattr("user.modelfs.codecs") is None
    assert len(m.exposition()) < 16 << 10  # far below the 64 KiB xattr limit


# --- HTTP listeners ---------------------------------------------------------------------------------------------

@pytest.fixture
def metrics() -> Metrics:
    return Metrics(store="/srv/store", mountpoint="/mnt/models")


def test_tcp_listener_serves_prometheus_text(metrics: Metrics) -> None:
    server = start_server(metrics, "127.0.0.1:0")
    try:
        host, port = server.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            first = response.read().decode()
        metrics.record_read(1 << 20, 0.002)
        second = scrape(server.address)
        assert value(second, "modelfs_read_bytes_total") == value(first, "modelfs_read_bytes_total") + (1 << 20)
    finally:
        server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=2)


def test_unix_listener(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket left behind by a crashed daemon
    stale.close()
    server = start_server(metrics, f"unix:{path}")
    try:
        assert server.address == f"unix:{path}"
        metrics.file_opened()
        assert value(scrape(server.address), "modelfs_open_files") == 1
    finally:
        server.close()
    assert not path.exists()


def test_listener_errors(metrics: Metrics, tmp_path: Path) -> None:
    keep = tmp_path / "not-a-socket"
    keep.write_text("data")
    with pytest.raises(BadInputError, match="cannot listen on unix:"):
        start_server(metrics, f"unix:{keep}")
    assert keep.read_text() == "data"
    with pytest.raises(BadInputError, match="metrics: expected HOST:PORT"):
        start_server(metrics, "nonsense")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(BadInputError, match="cannot listen on 127.0.0.1:"):
            start_server(metrics, f"127.0.0.1:{busy.getsockname()[1]}")
    finally:
        busy.close()


# --- modelfs status ---------------------------------------------------------------------------------------------

def test_format_status_for_a_person() -> None:
    m = Metrics(store="/srv/store", mountpoint="/mnt/models", version="0.1.0")
    cache = ChunkCache(budget_bytes=1 << 30)
    m.watch_cache(cache)
    cache.get_or_load(1, lambda: b"x" * (1 << 20))
    for _ in range(3):
        cache.get_or_load(1, lambda: b"")
    for _ in range(99):
        m.record_read(1 << 20, 0.0004)
    m.record_read(1 << 20, 0.2)
    m.file_opened()
    m.set_tree(generation=7, files=3)
    m.record_error("integrity")
    start = value(m.exposition().decode(), "modelfs_start_time_seconds")
    report = format_status(m.exposition().decode(), now=start + 3725)
    assert f"/mnt/models  (store /srv/store, pid {os.getpid()}, modelfs 0.1.0)" in report
    assert "uptime     1h 2m" in report
    assert "files      3 (store generation 7)" in report
    assert "open files 1" in report
    assert "reads      100 requests, 100.0 MiB served" in report
    assert "p50 <= 0.5 ms, p99 <= 0.5 ms" in report  # 99 of 100 reads took 0.4 ms
    assert "cache      75.0% hit (3 hits, 1 misses, 0 evictions), 1.0 MiB of 1.0 GiB" in report
    assert "errors     integrity 1" in report


def test_status_of_a_directory_that_is_no_mount(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not a mountpoint"):
        read_status_text(tmp_path)
    with pytest.raises(BadInputError, match="no such directory"):
        read_status_text(tmp_path / "absent")


FAKE_MOUNT = textwrap.dedent("""
    # A FUSE file system whose root answers the status xattr the way the modelfs adapter does.
    import errno, stat, sys
    import mfusepy
    from modelfs.metrics import Metrics

    metrics = Metrics(store="/srv/store", mountpoint=sys.argv[1], version="test")
    metrics.record_read(3 << 20, 0.001)

    class Ops(mfusepy.Operations):
        def getattr(self, path, fh=None):
            if path != "/":
                raise mfusepy.FuseOSError(errno.ENOENT)
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}

        def readdir(self, path, fh):
            return [".", ".."]

        def getxattr(self, path, name, position=0):
            value = metrics.root_xattr(name) if path == "/" else None
            if value is None:
                raise mfusepy.FuseOSError(errno.ENODATA)
            return value

    mfusepy.FUSE(Ops(), sys.argv[1], foreground=True, ro=True)
""")


@pytest.fixture
def fake_mount(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fake_mount.py"
    script.write_text(FAKE_MOUNT)
    proc = subprocess.Popen([sys.executable, str(script), str(mnt)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"fake mount did not come up: {proc.communicate()[1].decode()}")
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        proc.wait(timeout=20)


def test_status_main_reads_the_mount_root(fake_mount: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_main(fake_mount) == 0
    out = capsys.readouterr().out
    assert f"mount      {fake_mount}  (store /srv/store" in out
    assert "reads      1 requests, 3.0 MiB served" in out


def test_status_main_from_a_listener(metrics: Metrics, capsys: pytest.CaptureFixture[str]) -> None:
    server = start_server(metrics, "127.0.0.1:0")
    try:
        metrics.record_read(2048, 0.001)
        assert status_main(Path("/nonexistent"), listen=server.address) == 0
    finally:
        server.close()
    assert "reads      1 requests, 2.0 KiB served" in capsys.readouterr().out


def test_status_of_a_stale_mount(tmp_path: Path) -> None:
    """The daemon was killed: the mount is still in the table but answers ENOTCONN."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fake_mount.py"
    script.write_text(FAKE_MOUNT)
    proc = subprocess.Popen([sys.executable, str(script), str(mnt)])
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=20)
        with pytest.raises(ModelfsError, match="daemon is gone"):
            read_status_text(mnt)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
