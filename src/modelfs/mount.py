"""Mount and unmount: checks that give one clear line, the daemon, and the readiness handshake.

``run_mount`` checks everything a user can get wrong before anything is forked (FUSE device, mountpoint, store),
then either serves in this process (``--foreground``: systemd, debugging) or forks a daemon and returns only once
the mount is live. The daemon reports back through a pipe that stands in for its stderr: everything it says
before it is ready (libfuse's own complaints included) is the parent's error message if mounting fails; once the
mountpoint answers ``stat`` it writes a ready marker, detaches its stderr and the parent returns 0.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import logging.handlers
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .config import MountConfig
from .errors import BadInputError, InUseError, ModelfsError, NotFoundError

log = logging.getLogger("modelfs.mount")

READY_MARKER = b"\x00modelfs-ready\n"
MOUNT_TIMEOUT = 30.0
# The default when config.read_ahead_kb is None (0 leaves the kernel's 128 KiB). bench/load.py, 1.02 GiB BF16 model,
# cold, median of 3, every tensor copied out of its mapping: safe_open 4.85 s at 512 KiB against 5.60 / 5.13 / 5.35 s
# at 128 / 1024 / 4096; cat 3.59 s against 3.88 / 3.86 / 4.03 (docs/benchmarks.md).
DEFAULT_READ_AHEAD_KB = 512
FUSE_DEVICE = Path("/dev/fuse")
MAX_THREADS = 16


# -- checks -----------------------------------------------------------------------------------------------------


def mount_table() -> dict[str, str]:
    """Mount point → filesystem type, from /proc/self/mountinfo (includes stale FUSE mounts)."""
    table: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        table[_unescape(fields[4])] = fields[sep + 1]
    return table


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def is_mounted(path: Path) -> bool:
    return str(_abs(path)) in mount_table()


def _abs(path: Path) -> Path:
    """Absolute without following the last component (a stale mount cannot be stat'ed)."""
    path = Path(os.path.abspath(path))
    return Path(os.path.realpath(path.parent)) / path.name if path.name else path


def _daemon_dead(path: Path) -> bool:
    """statfs, because the kernel answers it from no cache: a dead FUSE daemon gives ENOTCONN."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_fuse_available() -> None:
    if not FUSE_DEVICE.exists():
        raise ModelfsError(
            "FUSE is not available: /dev/fuse is missing (modprobe fuse; in a container pass --device /dev/fuse)"
        )
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise ModelfsError("fusermount3 is missing: install fuse3 (apt-get install fuse3)")
    try:
        import mfusepy  # noqa: F401  (loads libfuse3 through ctypes)
    except (ImportError, OSError) as exc:
        raise ModelfsError(f"libfuse3 cannot be loaded ({exc}): install fuse3 / libfuse3") from None


def check_mountpoint(mountpoint: Path) -> None:
    mnt = _abs(mountpoint)
    table = mount_table()
    if str(mnt) in table:
        if _daemon_dead(mnt):
            raise InUseError(f"{mnt} is a stale mount whose daemon died; run 'modelfs umount {mnt}' first")
        raise InUseError(f"{mnt} is already mounted ({table[str(mnt)]}); run 'modelfs umount {mnt}' first")
    if not mnt.exists():
        raise NotFoundError(f"mountpoint {mnt} does not exist (mkdir it first)")
    if not mnt.is_dir():
        raise BadInputError(f"mountpoint {mnt} is not a directory")
    try:
        busy = any(os.scandir(mnt))
    except PermissionError:
        raise BadInputError(f"mountpoint {mnt} is not readable by this user") from None
    if busy:
        raise InUseError(f"mountpoint {mnt} is not empty; mounting over it would hide its files")


def check_store(config: MountConfig) -> None:
    from .store import Store

    Store.open(config.store, cache_bytes=0, prefetch=False).close()


# -- serving -----------------------------------------------------------------------------------------------------


def run_mount(config: MountConfig) -> int:
    """Mount ``config.store`` at ``config.mountpoint``; return the exit code (raises ModelfsError for user errors)."""
    config = dataclasses.replace(config, store=_abs(config.store), mountpoint=_abs(config.mountpoint))
    check_fuse_available()
    check_mountpoint(config.mountpoint)
    check_store(config)
    if config.foreground:
        return serve(config)
    return _daemonize(config)


def serve(
    config: MountConfig,
    on_ready: Callable[[], None] | None = None,
    fuse_options: dict[str, object] | None = None,
) -> int:
    """Serve the mount in this process until it is unmounted (or SIGINT/SIGTERM); ``on_ready`` runs once live."""
    import mfusepy  # type: ignore[import-untyped]

    from .fuse_ops import ModelfsOps
    from .service import ServiceRuntime, SigtermStop
    from .store import Store

    _setup_logging(config.log_level)
    store = Store.open(config.store, cache_bytes=config.cache_size, prefetch=config.prefetch)
    if store.has_deltas():
        threading.Thread(target=_warm_up_kernels, name="modelfs-warm-up", daemon=True).start()
    mnt = config.mountpoint
    try:
        runtime = ServiceRuntime.start(config, store.cache)  # a bad metrics address fails here
    except BaseException:
        store.close()
        raise

    def mounted() -> None:
        if not _wait_mounted(mnt, MOUNT_TIMEOUT):
            log.error("%s did not become a mount point within %.0f s", mnt, MOUNT_TIMEOUT)
            return
        set_read_ahead(mnt, config.read_ahead_kb)
        log.info("mounted %s at %s (cache %d MiB)", config.store, mnt, config.cache_size >> 20)
        runtime.mounted()
        if on_ready is not None:
            on_ready()

    ops = ModelfsOps(store, config, on_mounted=mounted, metrics=runtime.metrics)
    stop = SigtermStop(mnt, open_files=ops.open_paths)
    options: dict[str, object] = {
        "ro": True,
        "default_permissions": True,
        "fsname": _escape_option(str(config.store)),
        "subtype": "modelfs",
        "max_read": config.max_read,
        # 16 workers keep 2 cores busy while others wait on a single-flight decode. max_idle_threads is given
        # because libfuse 3.14.0 defaults it to -1 and then logs "Ignoring invalid max threads value" on mount.
        "max_threads": MAX_THREADS,
        "max_idle_threads": MAX_THREADS,
    }
    if config.allow_other:
        options["allow_other"] = True
    options.update(fuse_options or {})
    stop.install()
    try:
        mfusepy.FUSE(ops, str(mnt), raw_fi=True, foreground=True, nothreads=False, **options)
    except RuntimeError as exc:
        raise ModelfsError(f"libfuse could not mount {mnt} (status {exc})") from None
    finally:
        stop.uninstall()
        runtime.close()
        store.close()
    log.info("unmounted %s", mnt)
    return 0


def _warm_up_kernels() -> None:
    """Load the delta kernels before the first delta read needs them; a failure here is logged, and that read
    tries again (and answers EIO if it fails too)."""
    from .codec.difference import warm_up

    try:
        warm_up()
    except Exception:
        log.exception("could not load the delta decoding kernels")


def _escape_option(value: str) -> str:
    """libfuse splits -o on commas; a backslash escapes one."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _wait_mounted(mnt: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return True
        time.sleep(0.02)
    return False


def set_read_ahead(mnt: Path, read_ahead_kb: int | None) -> None:
    """Set the mount's kernel read-ahead (root only); 0 leaves the kernel's default (128 KiB)."""
    kb = DEFAULT_READ_AHEAD_KB if read_ahead_kb is None else read_ahead_kb
    if kb <= 0 or os.geteuid() != 0:
        return
    dev = os.stat(mnt).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(str(kb))
        log.info("read_ahead_kb of %s set to %d", mnt, kb)
    except OSError as exc:
        log.warning("could not set %s to %d: %s", path, kb, exc)


def _setup_logging(level: str) -> None:
    logger = logging.getLogger("modelfs")
    logger.setLevel(level.upper())
    if not logging.getLogger().handlers and not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
    from .service import log_formatter

    for handler in [*logging.getLogger().handlers, *logger.handlers]:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setFormatter(log_formatter())  # journald priorities when stderr is the journal


# -- daemon ------------------------------------------------------------------------------------------------------


def _daemonize(config: MountConfig) -> int:
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _daemon_main(config, write_end)  # never returns
    os.close(write_end)
    return _wait_ready(read_end, pid, config.mountpoint)


def _daemon_main(config: MountConfig, report_fd: int) -> None:
    code = 1
    try:
        os.setsid()
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(report_fd, 2)

        def ready() -> None:
            os.write(2, READY_MARKER)
            _log_to_syslog()
            os.dup2(devnull, 2)
            os.close(report_fd)

        code = serve(config, on_ready=ready)
    except ModelfsError as exc:
        print(f"modelfs: error: {exc}", file=sys.stderr, flush=True)
    except BaseException:  # noqa: BLE001 -- whatever kills the daemon must reach the waiting parent
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _log_to_syslog() -> None:
    """After detaching, logs go to syslog (journald) when there is one; use --foreground to see them otherwise."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if Path("/dev/log").exists():
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter(f"modelfs[{os.getpid()}]: %(levelname)s %(message)s"))
        root.addHandler(handler)
    else:
        root.addHandler(logging.NullHandler())


def _wait_ready(fd: int, pid: int, mnt: Path) -> int:
    """Relay the daemon's words until it is ready (0) or gone (its last words become the error)."""
    output = b""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 15)
                raise ModelfsError(f"mounting {mnt} did not finish within {MOUNT_TIMEOUT:.0f} s; daemon stopped")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            output += data
            if READY_MARKER in output:
                break
    finally:
        os.close(fd)
    before, ready, _ = output.partition(READY_MARKER)
    text = before.decode(errors="replace").strip()
    if ready and _wait_mounted(mnt, 5.0):
        for line in text.splitlines():
            if "WARNING" in line or "ERROR" in line:
                print(line, file=sys.stderr)
        return 0
    if not ready:
        os.waitpid(pid, 0)
    raise ModelfsError(f"mounting {mnt} failed: {_failure_reason(text)}")


def _failure_reason(text: str) -> str:
    """One line from what the daemon said: libfuse's complaints and our error, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line.removeprefix("modelfs: error: ") for line in lines if line.startswith(("fuse:", "modelfs: error:"))]
    if said:
        return "; ".join(dict.fromkeys(said))
    return lines[-1] if lines else "the daemon exited without a message"


# -- unmount -----------------------------------------------------------------------------------------------------


def unmount(mountpoint: Path, lazy_fallback: bool = True, lazy: bool = False) -> None:
    """Unmount cleanly; if the daemon died, fall back to a lazy unmount. Busy mounts raise InUseError.

    ``lazy`` detaches at once even when busy (``umount -l``), for a stale mountpoint before a restart.
    """
    mnt = _abs(Path(mountpoint))
    if not is_mounted(mnt):
        raise NotFoundError(f"{mnt} is not mounted")
    result = fusermount(["-u", "-z", str(mnt)] if lazy else ["-u", str(mnt)])
    if result.returncode == 0:
        return
    if lazy_fallback and _daemon_dead(mnt):
        detached = fusermount(["-u", "-z", str(mnt)])
        if detached.returncode == 0:
            log.warning("%s: daemon had died; unmounted lazily", mnt)
            return
        result = detached
    message = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
    if "busy" in message.lower():
        raise InUseError(f"{mnt} is busy: a process has a file or directory open there (see 'fuser -vm {mnt}')")
    raise ModelfsError(f"unmounting {mnt} failed: {message}")


def fusermount(args: list[str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        if os.geteuid() != 0:
            raise ModelfsError("fusermount3 is missing: install fuse3 (apt-get install fuse3)")
        cmd = ["umount", "-l" if "-z" in args else "", args[-1]]
        return subprocess.run([c for c in cmd if c], capture_output=True, text=True, check=False)
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False)
