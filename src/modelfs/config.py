"""Settings of a mount, gathered from the command line, mount options and a TOML file.

``MountConfig`` is the one place a mount's settings live; the CLI, ``mount.fuse3`` options and
``/etc/modelfs/<name>.toml`` all produce one, and the mount code reads nothing else.

Each source is first turned into a *layer*: a dict of only the keys that source set, already validated and typed.
``merge`` stacks the layers with a fixed precedence, command line > mount options > TOML file > defaults, so a
key given in two places is decided the same way everywhere. Every bad key or value is a one-line
``BadInputError`` naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import difflib
import grp
import ipaddress
import pwd
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .sizes import parse_size

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
    config_file: Path | None = None


Layer = dict[str, Any]
"""Keys one source set, validated and typed (e.g. ``{"cache_size": 4 << 30}``)."""

# Generic mount(8) options mount.fuse3 may hand us; the kernel flags among them do not change a read-only FS whose
# files have no device, setuid or exec bits, so they are accepted and ignored. mount(8) itself adds "rw" when the
# fstab line says neither ro nor rw, and mount.fuse3 adds "dev,suid" unless told nodev/nosuid (see
# docs/operations.md), so refusing them would break a plain `mount -t fuse.modelfs STORE MNT`: the mount is
# read-only whatever they say (every write answers EROFS).
_IGNORED_MOUNT_OPTIONS = frozenset((
    "ro", "rw", "defaults", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user", "nouser",
    "users", "owner", "group", "nofail", "_netdev", "sync", "async", "dirsync", "atime", "noatime", "diratime",
    "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime", "silent",
    "loud",
))
_IGNORED_MOUNT_PREFIXES = ("x-", "X-", "comment=")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bad(where: str, key: str, problem: str) -> BadInputError:
    return BadInputError(f"{where}: {key}: {problem}")


def _path(value: Any, key: str, where: str, *, relative_ok: bool) -> Path:
    if not isinstance(value, str) or not value:
        raise _bad(where, key, f"expected a path string, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        if not relative_ok:
            raise _bad(where, key, f"must be an absolute path, got {value!r}")
        path = path.absolute()
    return path


def _size(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _bad(where, key, f"expected a size like 4G or a number of bytes, got {value!r}")
    try:
        return parse_size(str(value) if isinstance(value, str) else int(value))
    except BadInputError as exc:
        raise _bad(where, key, str(exc)) from None


def _bool(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise _bad(where, key, f"expected true or false, got {value!r}")


def _int(value: Any, key: str, where: str, lo: int, hi: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 10)
        except ValueError:
            raise _bad(where, key, f"expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, key, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise _bad(where, key, f"must be between {lo} and {hi}, got {value}")
    return value


def _parse_cache_size(value: Any, where: str) -> int:
    return _size(value, "cache_size", where)


def _parse_max_read(value: Any, where: str) -> int:
    n = _size(value, "max_read", where)
    # The kernel splits requests into pages; 16 MiB is far above what any kernel grants (1 MiB by default).
    if n % 4096 or not 4096 <= n <= 16 * MiB:
        raise _bad(where, "max_read", f"must be a multiple of 4K between 4K and 16M, got {value!r}")
    return n


def _parse_umask(value: Any, where: str) -> int:
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            value = int(text, 8)
        except ValueError:
            raise _bad(where, "umask", f"expected an octal mask like \"022\", got {value!r}") from None
    return _int(value, "umask", where, 0, 0o777)


def _parse_id(value: Any, key: str, where: str) -> int:
    if isinstance(value, str) and value and not value.isdigit():
        try:
            return pwd.getpwnam(value).pw_uid if key == "uid" else grp.getgrnam(value).gr_gid
        except KeyError:
            raise _bad(where, key, f"no such {'user' if key == 'uid' else 'group'}: {value!r}") from None
    return _int(value, key, where, 0, 2**32 - 2)


def _parse_log_level(value: Any, where: str) -> str:
    level = value.lower() if isinstance(value, str) else value
    level = "warning" if level == "warn" else level
    if level not in _LOG_LEVELS:
        raise _bad(where, "log_level", f"expected one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return str(level)


def _parse_refresh_interval(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _bad(where, "refresh_interval", f"expected seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        raise _bad(where, "refresh_interval", f"expected seconds in (0, 3600], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ListenAddress:
    """Where a metrics listener binds: a Unix socket path, or a TCP host and port."""

    host: str = ""
    port: int = 0
    unix_path: str | None = None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """Parse a metrics address; ValueError says what is wrong.

    Forms: ``HOST:PORT``, ``[V6ADDR]:PORT``, a bare ``PORT`` (meaning 127.0.0.1) and ``unix:/absolute/path``.
    """
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute, got {text!r}")
        return ListenAddress(unix_path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT, PORT or unix:/path, got {text!r}")
    return ListenAddress(host=host, port=int(port_text))


def _parse_metrics(value: Any, where: str) -> str | None:
    if value is False or (isinstance(value, str) and value.lower() in ("", "off", "none")):
        return None
    if not isinstance(value, str):
        raise _bad(where, "metrics", f"expected HOST:PORT or unix:/path, got {value!r}")
    try:
        return str(parse_listen(value))
    except ValueError as exc:
        raise _bad(where, "metrics", str(exc)) from None


_Parser = Callable[[Any, str], Any]
_PARSERS: dict[str, _Parser] = {
    "store": lambda v, w: _path(v, "store", w, relative_ok=False),
    "mountpoint": lambda v, w: _path(v, "mountpoint", w, relative_ok=False),
    "cache_size": _parse_cache_size,
    "prefetch": lambda v, w: _bool(v, "prefetch", w),
    "log_level": _parse_log_level,
    "allow_other": lambda v, w: _bool(v, "allow_other", w),
    "uid": lambda v, w: _parse_id(v, "uid", w),
    "gid": lambda v, w: _parse_id(v, "gid", w),
    "umask": _parse_umask,
    "metrics": _parse_metrics,
    "refresh_interval": _parse_refresh_interval,
    "read_ahead_kb": lambda v, w: _int(v, "read_ahead_kb", w, 0, 1 << 20),
    "max_read": _parse_max_read,
}
SETTING_KEYS = tuple(_PARSERS)
"""Keys a TOML file and ``-o`` mount options may set (the same names as ``MountConfig`` fields)."""

_FLAG_OPTIONS = {"allow_other": ("allow_other", True), "prefetch": ("prefetch", True),
                 "noprefetch": ("prefetch", False)}


def _unknown(where: str, key: str, known: Sequence[str]) -> BadInputError:
    close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return BadInputError(f"{where}: unknown key {key!r}{hint}")


def _validate(raw: Mapping[str, Any], where: str) -> Layer:
    layer: Layer = {}
    for key, value in raw.items():
        parser = _PARSERS.get(key)
        if parser is None:
            raise _unknown(where, key, SETTING_KEYS)
        layer[key] = parser(value, where)
    return layer


def load_toml_layer(path: Path) -> Layer:
    """Read a TOML config file into a layer: flat ``key = value`` lines with the keys of ``SETTING_KEYS``."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise BadInputError(f"{where}: no such config file") from None
    except OSError as exc:
        raise BadInputError(f"{where}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{where}: not valid TOML: {exc}") from None
    for key, value in raw.items():
        if isinstance(value, dict):
            raise BadInputError(f"{where}: unknown table [{key}] (modelfs config keys are top-level)")
    return _validate(raw, where)


def parse_mount_options(options: str, where: str = "mount option") -> tuple[Layer, Path | None]:
    """Parse ``-o`` options (``ro,allow_other,cache_size=4G,config=/etc/modelfs/x.toml``) into a layer.

    Returns the layer and the ``config=`` file if one was named. Generic mount(8) options are accepted and
    ignored (see ``_IGNORED_MOUNT_OPTIONS``); anything else unknown is refused with its name.
    """
    raw: dict[str, Any] = {}
    config: Path | None = None
    for item in options.split(","):
        item = item.strip()
        if item in _IGNORED_MOUNT_OPTIONS or not item or item.startswith(_IGNORED_MOUNT_PREFIXES):
            continue
        key, sep, value = item.partition("=")
        if not sep:
            if key not in _FLAG_OPTIONS:
                if key in _PARSERS:
                    raise BadInputError(f"{where}: {key}: needs a value ({key}=...)")
                raise _unknown(where, key, SETTING_KEYS + tuple(_FLAG_OPTIONS))
            key, flag = _FLAG_OPTIONS[key]
            raw[key] = flag
        elif key == "config":
            config = _path(value, "config", where, relative_ok=True)
        elif key in _PARSERS:
            raw[key] = value
        else:
            raise _unknown(where, key, SETTING_KEYS + ("config",))
    for key in ("store", "mountpoint"):
        if key in raw:
            raw[key] = str(Path(raw[key]).absolute())
    return _validate(raw, where), config


def merge(
    cli: Mapping[str, Any] | None = None,
    mount_options: Mapping[str, Any] | None = None,
    toml: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> MountConfig:
    """Stack validated layers, command line > mount options > TOML file > defaults, into a checked MountConfig.

    ``store`` and ``mountpoint`` are required from some layer; the store must be an existing directory (whether
    it is a valid store is ``Store.open``'s business).
    """
    chosen: Layer = {}
    source: dict[str, str] = {}
    for layer, name in ((toml, str(config_file or "config file")), (mount_options, "mount option"),
                        (cli, "command line")):
        for key, value in (layer or {}).items():
            chosen[key] = value
            source[key] = name
    for key in ("store", "mountpoint"):
        if key not in chosen:
            where = f" (not in {config_file})" if config_file else ""
            raise BadInputError(f"missing required setting {key!r}{where}")
    store: Path = chosen["store"]
    if not store.is_dir():
        problem = "not a directory" if store.exists() else "no such directory"
        raise BadInputError(f"{source['store']}: store: {store}: {problem}")
    known = {f.name for f in fields(MountConfig)}
    unknown = set(chosen) - known
    if unknown:
        raise BadInputError(f"unknown setting {min(unknown)!r}")
    return MountConfig(**chosen, config_file=config_file)


def load_toml(path: Path) -> MountConfig:
    """The MountConfig a TOML file alone describes (defaults for every key it leaves out)."""
    return merge(toml=load_toml_layer(path), config_file=path)


def mountpoint_from_toml(path: Path) -> Path:
    """Just the mountpoint a config file names (``modelfs umount --config``: works even if the store is gone)."""
    layer = load_toml_layer(path)
    if "mountpoint" not in layer:
        raise BadInputError(f"missing required setting 'mountpoint' (not in {path})")
    mountpoint: Path = layer["mountpoint"]
    return mountpoint


def from_mount_options(store: str | Path, mountpoint: str | Path, options: str) -> MountConfig:
    """The fstab / ``mount.fuse3`` form: positional store and mountpoint plus ``-o`` options (with ``config=``)."""
    layer, config = parse_mount_options(options)
    positional = _validate({"store": str(Path(store).absolute()), "mountpoint": str(Path(mountpoint).absolute())},
                           "command line")
    toml = load_toml_layer(config) if config else None
    return merge(cli=positional, mount_options=layer, toml=toml, config_file=config)


def resolve(cli: Mapping[str, Any], options: str | None = None, config_file: str | Path | None = None) -> MountConfig:
    """Build the config from all sources at once. ``cli`` holds raw values the user typed (strings or typed).

    A ``--config`` file on the command line wins over a ``config=`` mount option.
    """
    cli_raw = dict(cli)
    for key in ("store", "mountpoint"):
        if cli_raw.get(key) is not None:
            cli_raw[key] = str(Path(cli_raw[key]).absolute())
    foreground = bool(cli_raw.pop("foreground", False))
    cli_layer = _validate({k: v for k, v in cli_raw.items() if v is not None}, "command line")
    if foreground:
        cli_layer["foreground"] = True
    opt_layer, opt_config = parse_mount_options(options) if options else ({}, None)
    path = Path(config_file).absolute() if config_file else opt_config
    toml = load_toml_layer(path) if path else None
    return merge(cli=cli_layer, mount_options=opt_layer, toml=toml, config_file=path)


def from_cli_args(args: argparse.Namespace) -> MountConfig:
    """``modelfs mount`` arguments to a MountConfig; only options the user actually gave count as set.

    Reads ``store``, ``mountpoint``, ``config``, ``options`` (``-o``), ``foreground`` and
    any attribute named like a setting (``cache_size``, ``allow_other``, ``metrics``, ...) that is not None.
    """
    cli: dict[str, Any] = {key: getattr(args, key) for key in SETTING_KEYS if getattr(args, key, None) is not None}
    for flag in ("allow_other", "prefetch"):
        if cli.get(flag) is False:
            del cli[flag]  # an argparse store_true left unset is "not given", not "false"
    cli["foreground"] = bool(getattr(args, "foreground", False))
    return resolve(cli, getattr(args, "options", None), getattr(args, "config", None))


def is_mount_helper_argv(argv: Sequence[str], commands: Sequence[str]) -> bool:
    """True for ``modelfs STORE MOUNTPOINT [-o OPTS]`` as mount.fuse3 runs it (first word is no subcommand)."""
    return len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-")


def parse_mount_helper_argv(argv: Sequence[str]) -> MountConfig:
    """Parse ``STORE MOUNTPOINT [-o OPTS]... [-f]`` (argv without the program name), as mount.fuse3 passes it.

    mount(8) waits for the helper to exit, so this form daemonizes (``foreground`` False) unless ``-f`` is given.
    mount.fuse3 always passes ``-o`` with at least ``dev,suid`` (and ``rw`` or ``ro`` from mount(8)).
    """
    positional: list[str] = []
    options: list[str] = []
    foreground = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o":
            if i + 1 == len(argv):
                raise BadInputError("mount option: -o needs a value")
            options.append(argv[i + 1])
            i += 1
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg in ("-f", "--foreground"):
            foreground = True
        elif arg.startswith("-"):
            raise BadInputError(f"unknown argument {arg!r} (usage: modelfs STORE MOUNTPOINT [-o OPTIONS])")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise BadInputError("usage: modelfs STORE MOUNTPOINT [-o OPTIONS]")
    config = from_mount_options(positional[0], positional[1], ",".join(options))
    return replace(config, foreground=True) if foreground else config
