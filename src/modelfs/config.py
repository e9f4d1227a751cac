"""Settings of a mount, gathered from the command line, mount options and a TOML file.

``MountConfig`` is the one place a mount's settings live; the CLI, ``mount.fuse3`` options and
``/etc/modelfs/<name>.toml`` all produce one, and the mount code reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class MountConfig:
    """Everything a mount needs. Defaults are the ones a server wants; see docs/operations.md."""

    store: Path
    mountpoint: Path
    cache_size: int = 1 * GiB
    foreground: bool = False
    allow_other: bool = False
    log_level: str = "info"
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    max_read: int = 1 * MiB
    read_ahead_kb: int | None = None
    prefetch: bool = True
    refresh_interval: float = 2.0
    metrics: str | None = None
