"""sd_notify spoken directly: one datagram to ``$NOTIFY_SOCKET`` per state change.

The protocol is a newline-separated ``KEY=VALUE`` datagram on a Unix socket whose path systemd puts in
``NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace). It needs no library and no running systemd,
so the daemon speaks it whenever the variable is set, however it was started, and tests bind their own socket.
Every function is a no-op returning False when the variable is unset, and never raises: a monitoring hiccup must
not take a mount down. Safe to call from any thread.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 253's vsock: addresses, which a local mount never gets


def notify(state: str, env: Mapping[str, str] | None = None, unset_environment: bool = False) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); True if a datagram went out, False if unset or it failed.

    ``unset_environment`` drops ``NOTIFY_SOCKET`` from ``os.environ`` afterwards so child processes do not
    inherit it (sd_notify's flag of the same name).
    """
    environ = os.environ if env is None else env
    value = environ.get(ENV, "")
    if unset_environment and env is None:
        os.environ.pop(ENV, None)
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s is not a Unix socket address; not notifying", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", value, exc.strerror or exc)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ready(status_text: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """The mount is live: systemd's start job completes (Type=notify)."""
    state = "READY=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else "")
    return notify(state, env)


def stopping(status_text: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Shutdown began (SIGTERM received): systemd shows the unit as deactivating."""
    state = "STOPPING=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else "")
    return notify(state, env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """Free-form one-line status that ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}", env)


def extend_timeout(seconds: float, env: Mapping[str, str] | None = None) -> bool:
    """Ask systemd for ``seconds`` more before it fails a slow start or stop (e.g. opening a large store)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", env)
