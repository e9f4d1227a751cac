"""What a mount daemon does for the service manager: metrics, sd_notify, and a graceful stop on SIGTERM.

The mount code (``mount.serve``) uses two objects and nothing else from here:

- ``ServiceRuntime.start(config, cache)`` before mounting: builds the mount's ``Metrics`` and starts the optional
  metrics listener (a bad or busy address fails here, before anything is mounted). ``.mounted()`` once the mount is
  live sends READY=1; ``.close()`` at the end stops the listener.
- ``log_formatter()`` for the daemon's stderr handler: under journald each line carries its syslog priority, so
  ``journalctl -p warning`` shows just the warnings and errors.
- ``SigtermStop(mountpoint, open_files, on_stopping).install()`` in the main thread just before ``FUSE(...)``:
  SIGTERM then sends STOPPING=1 and unmounts when nothing is busy (the FUSE loop ends, the daemon exits 0), and
  otherwise logs what is open, detaches the mount and exits 1 (systemd then escalates as configured).

Why SIGTERM needs this: libfuse installs its own SIGTERM handler only if the signal still has the default
disposition (lib/fuse_signals.c), and that handler detaches the mount lazily even when files are open. The main
thread sits inside ``fuse_main`` (C) and never runs Python signal handlers, so the C-level handler's write to
``signal.set_wakeup_fd`` is what wakes a watcher thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from . import notify
from .config import MountConfig
from .metrics import CacheLike, Metrics, MetricsServer, start_server
from .mount import fusermount

log = logging.getLogger(__name__)


class ServiceRuntime:
    """The service side of one mount: its metrics, its listener and its sd_notify messages."""

    def __init__(self, config: MountConfig, metrics: Metrics, server: MetricsServer | None) -> None:
        self.config = config
        self.metrics = metrics
        self.server = server

    @classmethod
    def start(cls, config: MountConfig, cache: CacheLike | None = None, version: str = "") -> ServiceRuntime:
        metrics = Metrics(store=str(config.store), mountpoint=str(config.mountpoint), version=version)
        if cache is not None:
            metrics.watch_cache(cache)
        server = start_server(metrics, config.metrics) if config.metrics else None
        return cls(config, metrics, server)

    def mounted(self) -> None:
        """The mount is live (``os.path.ismount`` is true): tell systemd, so units ordered after us may start."""
        where = f"; metrics on {self.server.address}" if self.server else ""
        notify.ready(f"serving {self.config.store} at {self.config.mountpoint}{where}")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


# journald reads a "<N>" prefix on a stream line as its syslog priority (sd-daemon(3), SyslogLevelPrefix=).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald (``$JOURNAL_STREAM`` names its device and inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def log_formatter() -> logging.Formatter:
    """One line per event: ``<4>slow read: …`` under journald (which adds time and name), else ``modelfs: WARNING …``."""
    if stderr_is_journal():
        return _JournalFormatter("%(message)s")
    return logging.Formatter("modelfs: %(levelname)s %(message)s")


class SigtermStop:
    """SIGTERM -> STOPPING=1 -> unmount if idle (exit 0) or report what is busy and exit 1."""

    def __init__(
        self,
        mountpoint: Path,
        open_files: Callable[[], list[str]] | None = None,
        on_stopping: Callable[[], None] | None = None,
    ) -> None:
        self.mountpoint = mountpoint
        self.open_files = open_files or list
        self.on_stopping = on_stopping
        self._read_fd = -1
        self._write_fd = -1
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        """Call from the main thread before ``FUSE(...)`` so libfuse leaves SIGTERM to us.

        From any other thread (a test serving a mount in a thread) signals cannot be caught: libfuse keeps its own
        SIGTERM handling and this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: SIGTERM stays with libfuse")
            return
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_fd, False)
        signal.signal(signal.SIGTERM, _ignore)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="modelfs-sigterm", daemon=True)
        self._thread.start()

    def uninstall(self) -> None:
        """Restore the defaults (after the FUSE loop returned); the watcher thread ends."""
        if self._thread is None:
            return
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(self._write_fd)  # EOF for the watcher
        self._thread.join(timeout=5)
        os.close(self._read_fd)
        self._thread = None

    def _watch(self) -> None:
        while True:
            data = os.read(self._read_fd, 64)
            if not data:
                return
            if signal.SIGTERM in data:
                self.stop()
                return

    def stop(self) -> None:
        """What SIGTERM does (also callable directly)."""
        notify.stopping(f"unmounting {self.mountpoint}")
        if self.on_stopping is not None:
            self.on_stopping()
        result = fusermount(["-u", str(self.mountpoint)])
        if result.returncode == 0:
            log.info("SIGTERM: unmounted %s", self.mountpoint)
            return  # the kernel closes the connection and the FUSE loop returns normally
        message = result.stderr.strip().splitlines()[-1:] or ["unknown error"]
        busy = self.open_files()
        shown = ", ".join(busy[:10]) + (f" and {len(busy) - 10} more" if len(busy) > 10 else "")
        log.error("SIGTERM: cannot unmount %s (%s): %s; see 'fuser -vm %s'; detaching it and exiting",
                  self.mountpoint, message[0], f"open files: {shown}" if busy else "busy",
                  self.mountpoint)
        notify.status(f"stopped while busy: {len(busy)} open files")
        fusermount(["-u", "-z", str(self.mountpoint)])
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)  # the FUSE loop would wait for the busy files to close; the stop must end now


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A Python-level handler that does nothing: the wakeup fd carries the signal to the watcher thread."""
