"""Live counters of a mount, exported in Prometheus text format, and ``modelfs status`` that prints them.

One ``Metrics`` per mount, with its own ``CollectorRegistry`` (never the process-global one, so two mounts in one
process or a test never share counters). Threading: every method is safe from any FUSE worker thread. The read
hot path takes one lock and adds three numbers (``_ReadStats``): ``record_read`` costs ~2.4 us against ~7 us for
prometheus-client's own Counter.inc + Histogram.observe (timeit, 3e5 calls each, 2-core dev machine under load),
which is why reads do not use them. Cache counters are not
pushed at all: the cache keeps plain ints under its own lock and they are read only when someone scrapes
(``watch_cache``).

Where the figures go:
- the mount root answers the extended attribute ``user.modelfs.metrics`` with the exposition text (not listed by
  listxattr, so ``cp -a``/``rsync -X`` of the root never copy it). ``modelfs status MOUNTPOINT`` reads it: no
  listener, port or runtime file to configure or find.
- optionally an HTTP listener for Prometheus (``metrics = "127.0.0.1:9101"`` or ``"unix:/run/modelfs/x.sock"``).
"""

from __future__ import annotations

import bisect
import errno
import http.client
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .config import ListenAddress, parse_listen
from .errors import BadInputError, IntegrityError, ModelfsError, NotFoundError, ReadTimeoutError
from .sizes import format_size

log = logging.getLogger(__name__)

STATUS_XATTR = "user.modelfs.metrics"
"""Extended attribute of the mount root whose value is the exposition text (read by ``modelfs status``)."""

ERROR_KINDS = ("integrity", "timeout", "not_found", "io", "internal")

# Read latency buckets (seconds): a cache hit is tens of microseconds in the daemon, a miss decodes one ~1 MiB
# chunk (milliseconds); the upper buckets catch waits on a busy disk or a stalled decode.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0)

SLOW_READ_SECONDS = 1.0
"""A read slower than this is logged. Policy, not a measurement: 1 s is far above a chunk decode (milliseconds)
and well under the kernel's FUSE request timeout, so each log line marks a real stall."""


class CacheStatsLike(Protocol):
    """Counters the cache keeps (``modelfs.cache.CacheStats`` fits); read-only here."""

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    @property
    def evictions(self) -> int: ...

    @property
    def bytes_decoded(self) -> int: ...

    @property
    def prefetched(self) -> int: ...

    @property
    def prefetch_hits(self) -> int: ...

    @property
    def prefetch_waste(self) -> int: ...


class CacheLike(Protocol):
    """What ``watch_cache`` reads: ``modelfs.cache.ChunkCache`` fits."""

    @property
    def stats(self) -> CacheStatsLike: ...

    @property
    def budget(self) -> int: ...

    @property
    def current_bytes(self) -> int: ...


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label for an error answered to a reader (one of ``ERROR_KINDS``)."""
    if isinstance(exc, IntegrityError):
        return "integrity"
    if isinstance(exc, ReadTimeoutError):
        return "timeout"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, OSError):
        return "io"
    return "internal"


class _ReadStats(Collector):
    """Bytes served and the latency histogram, kept as plain numbers under one lock, exported at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = 0
        self._sum = 0.0
        self._counts = [0] * (len(_LATENCY_BUCKETS) + 1)

    def add(self, nbytes: int, seconds: float) -> None:
        slot = bisect.bisect_left(_LATENCY_BUCKETS, seconds)  # first bound >= seconds: Prometheus "le"
        with self._lock:
            self._bytes += nbytes
            self._sum += seconds
            self._counts[slot] += 1

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            served, total_seconds, counts = self._bytes, self._sum, list(self._counts)
        cumulative, running = [], 0
        for bound, count in zip((*map(str, _LATENCY_BUCKETS), "+Inf"), counts):
            running += count
            cumulative.append((bound, running))
        return [
            CounterMetricFamily("modelfs_read_bytes", "Bytes returned to readers", value=served),
            HistogramMetricFamily("modelfs_read_duration_seconds", "Time to answer one read request",
                                  buckets=cumulative, sum_value=total_seconds),
        ]


class _CacheCollector(Collector):
    def __init__(self) -> None:
        self.cache: CacheLike | None = None

    def collect(self) -> Iterable[Metric]:
        cache = self.cache
        if cache is None:
            return []
        stats = cache.stats
        return [
            CounterMetricFamily("modelfs_cache_hits", "Chunk reads answered from the decoded-chunk cache",
                                value=stats.hits),
            CounterMetricFamily("modelfs_cache_misses", "Chunk reads that had to decode", value=stats.misses),
            CounterMetricFamily("modelfs_cache_evictions", "Chunks dropped to stay within the cache budget",
                                value=stats.evictions),
            CounterMetricFamily("modelfs_decoded_bytes", "Bytes produced by decoding chunks",
                                value=stats.bytes_decoded),
            CounterMetricFamily("modelfs_prefetched", "Chunks decoded ahead of a reader", value=stats.prefetched),
            CounterMetricFamily("modelfs_prefetch_hits", "Prefetched chunks later read", value=stats.prefetch_hits),
            CounterMetricFamily("modelfs_prefetch_wasted", "Prefetched chunks evicted unread",
                                value=stats.prefetch_waste),
            GaugeMetricFamily("modelfs_cache_bytes", "Decoded bytes held in the cache", value=cache.current_bytes),
            GaugeMetricFamily("modelfs_cache_budget_bytes", "Cache budget (--cache-size)", value=cache.budget),
        ]


class Metrics:
    """The counters of one mount. Create once per mount; pass to the FUSE adapter and ``start_server``."""

    def __init__(self, store: str = "", mountpoint: str = "", version: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._reads = _ReadStats()
        r.register(self._reads)
        self._open = Gauge("modelfs_open_files", "Files currently open through the mount", registry=r)
        self._errors = Counter("modelfs_errors", "Errors answered to readers, by kind", ["kind"], registry=r)
        for kind in ERROR_KINDS:
            self._errors.labels(kind)
        self._generation = Gauge("modelfs_tree_generation", "Store generation the mount shows", registry=r)
        self._files = Gauge("modelfs_files", "Files visible in the mount", registry=r)
        info = Gauge("modelfs_info", "Constant 1; labels describe the mount",
                     ["store", "mountpoint", "version", "pid"], registry=r)
        info.labels(store, mountpoint, version, str(os.getpid())).set(1)
        Gauge("modelfs_start_time_seconds", "Unix time the mount started", registry=r).set(time.time())
        ProcessCollector(registry=r)  # process_resident_memory_bytes: the cache budget should bound it
        self._cache = _CacheCollector()
        r.register(self._cache)

    # --- hot path -------------------------------------------------------------------------------------------
    def record_read(self, nbytes: int, seconds: float, path: str = "", offset: int = 0) -> None:
        """One read request answered with ``nbytes``; logs it if it took ``SLOW_READ_SECONDS`` or longer."""
        self._reads.add(nbytes, seconds)
        if seconds >= SLOW_READ_SECONDS:
            log.warning("slow read: %s offset %d size %d took %.2f s", path, offset, nbytes, seconds)

    def file_opened(self) -> None:
        self._open.inc()

    def file_closed(self) -> None:
        self._open.dec()

    def record_error(self, exc_or_kind: BaseException | str) -> None:
        """Count an error answered to a reader (an exception, or a kind from ``ERROR_KINDS``)."""
        kind = exc_or_kind if isinstance(exc_or_kind, str) else error_kind(exc_or_kind)
        self._errors.labels(kind).inc()

    # --- slow path ------------------------------------------------------------------------------------------
    def watch_cache(self, cache: CacheLike) -> None:
        """Export this cache's counters (read at scrape time, so the cache's hot path is untouched)."""
        self._cache.cache = cache

    def set_tree(self, generation: int, files: int) -> None:
        """Called at mount and by the live-refresh loop whenever it swaps in a new tree."""
        self._generation.set(generation)
        self._files.set(files)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (the value of ``STATUS_XATTR``)."""
        return generate_latest(self.registry)

    def root_xattr(self, name: str) -> bytes | None:
        """The mount adapter's hook: the value of ``name`` on the mount root, or None if it is not ours."""
        return self.exposition() if name == STATUS_XATTR else None


# --- HTTP listener ------------------------------------------------------------------------------------------
class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@dataclass
class MetricsServer:
    """A running listener; ``address`` is what it actually bound (port 0 becomes a real port)."""

    address: str
    _server: socketserver.BaseServer
    _thread: threading.Thread
    _unix_path: str | None = None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._unix_path:
            try:
                os.unlink(self._unix_path)
            except FileNotFoundError:
                pass


def start_server(metrics: Metrics, listen: str) -> MetricsServer:
    """Serve ``metrics`` over HTTP on ``HOST:PORT`` or ``unix:/path`` from a daemon thread."""
    try:
        parsed = parse_listen(listen)
    except ValueError as exc:
        raise BadInputError(f"metrics: {exc}") from None
    handler = MetricsHandler.factory(metrics.registry)
    server: socketserver.BaseServer
    unix_path = parsed.unix_path
    try:
        if unix_path is not None:
            _remove_stale_socket(unix_path)
            server = _UnixHTTPServer(unix_path, handler)
            address = str(parsed)
        else:
            tcp = _TCPServer((parsed.host, parsed.port), handler)
            address = str(ListenAddress(host=parsed.host, port=tcp.server_address[1]))
            server = tcp
    except OSError as exc:
        raise BadInputError(f"metrics: cannot listen on {listen}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="modelfs-metrics", daemon=True)
    thread.start()
    log.info("metrics listening on %s", address)
    return MetricsServer(address, server, thread, unix_path)


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


def _remove_stale_socket(path: str) -> None:
    """A socket left by a crashed daemon would make bind fail; anything that is not a socket is kept."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def scrape(listen: str, timeout: float = 5.0) -> str:
    """GET /metrics from a listener address (as in the config) and return the exposition text."""
    parsed = parse_listen(listen)
    conn: http.client.HTTPConnection
    if parsed.unix_path is not None:
        conn = _UnixHTTPConnection(parsed.unix_path, timeout)
    else:
        conn = http.client.HTTPConnection(parsed.host, parsed.port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise BadInputError(f"metrics endpoint {listen} answered HTTP {response.status}")
        return body
    finally:
        conn.close()


# --- modelfs status -----------------------------------------------------------------------------------------
def read_status_text(mountpoint: Path) -> str:
    """The exposition text a live mount publishes on its root; one-line errors for the usual failures."""
    try:
        return os.getxattr(mountpoint, STATUS_XATTR).decode()
    except FileNotFoundError:
        raise BadInputError(f"{mountpoint}: no such directory") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ModelfsError(f"{mountpoint}: the mount's daemon is gone (stale mount); "
                               f"run 'modelfs umount {mountpoint}'") from None
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            what = "a modelfs mount" if os.path.ismount(mountpoint) else "a mountpoint"
            raise BadInputError(f"{mountpoint}: not {what}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ModelfsError(f"{mountpoint}: permission denied (mounted without allow_other by another "
                               "user? run status as that user)") from None
        raise


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    values = samples.get(name)
    return values[0][1] if values else None


def _quantile(buckets: list[tuple[dict[str, str], float]], q: float) -> str:
    """Upper bound of the bucket holding the q-quantile: "<= 2.5 ms" (a histogram knows no more)."""
    ordered = sorted((float(labels["le"]), count) for labels, count in buckets)
    total = ordered[-1][1] if ordered else 0
    if not total:
        return "-"
    for bound, count in ordered:
        if count >= q * total:
            if bound == float("inf"):
                return f"> {_ms(ordered[-2][0])}" if len(ordered) > 1 else "-"
            return f"<= {_ms(bound)}"
    return "-"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def format_status(text: str, now: float | None = None) -> str:
    """Turn exposition text into a short report for a person (what ``modelfs status`` prints)."""
    s = _samples(text)

    def num(name: str) -> float:
        return _one(s, name) or 0.0

    lines: list[str] = []
    info = s.get("modelfs_info")
    if info:
        labels = info[0][0]
        lines.append(f"mount      {labels.get('mountpoint') or '?'}  (store {labels.get('store') or '?'}, "
                     f"pid {labels.get('pid') or '?'}, modelfs {labels.get('version') or '?'})")
    start = _one(s, "modelfs_start_time_seconds")
    if start:
        lines.append(f"uptime     {_duration((now or time.time()) - start)}")
    lines.append(f"files      {num('modelfs_files'):,.0f} (store generation {num('modelfs_tree_generation'):.0f})")
    lines.append(f"open files {num('modelfs_open_files'):.0f}")
    reads = num("modelfs_read_duration_seconds_count")
    lines.append(f"reads      {reads:,.0f} requests, {format_size(num('modelfs_read_bytes_total'))} served")
    buckets = s.get("modelfs_read_duration_seconds_bucket", [])
    if reads:
        mean = num("modelfs_read_duration_seconds_sum") / reads
        lines.append(f"latency    mean {_ms(mean)}, p50 {_quantile(buckets, 0.5)}, p99 {_quantile(buckets, 0.99)}")
    if "modelfs_cache_hits_total" in s:
        hits, misses = num("modelfs_cache_hits_total"), num("modelfs_cache_misses_total")
        ratio = f"{100 * hits / (hits + misses):.1f}% hit" if hits + misses else "no lookups yet"
        lines.append(f"cache      {ratio} ({hits:,.0f} hits, {misses:,.0f} misses, "
                     f"{num('modelfs_cache_evictions_total'):,.0f} evictions), "
                     f"{format_size(num('modelfs_cache_bytes'))} of {format_size(num('modelfs_cache_budget_bytes'))}")
        lines.append(f"decoded    {format_size(num('modelfs_decoded_bytes_total'))}")
    lines.append(f"prefetch   {num('modelfs_prefetch_hits_total'):,.0f} used, "
                 f"{num('modelfs_prefetch_wasted_total'):,.0f} wasted")
    errors = [(labels.get("kind", "?"), value) for labels, value in s.get("modelfs_errors_total", []) if value]
    lines.append("errors     " + (", ".join(f"{kind} {value:,.0f}" for kind, value in errors) if errors else "none"))
    rss = _one(s, "process_resident_memory_bytes")
    if rss is not None:
        lines.append(f"memory     {format_size(rss)} resident")
    return "\n".join(lines)


def status_main(mountpoint: Path, listen: str | None = None) -> int:
    """``modelfs status MOUNTPOINT``: print the live figures (from the mount root, or from ``listen`` if given)."""
    text = scrape(listen) if listen else read_status_text(mountpoint)
    print(format_status(text))
    return 0

