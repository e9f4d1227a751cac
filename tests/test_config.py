"""Mount settings from TOML, mount options, mount.fuse3's argv and the command line, and their precedence."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs.config import (
    GiB,
    ListenAddress,
    MiB,
    MountConfig,
    from_cli_args,
    from_mount_options,
    is_mount_helper_argv,
    load_toml,
    merge,
    mountpoint_from_toml,
    parse_listen,
    parse_mount_helper_argv,
    parse_mount_options,
    resolve,
)
from modelfs.errors import BadInputError
from modelfs.sizes import BadSizeError, format_size, parse_size


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


# --- sizes ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1048576", 1 << 20), ("512K", 512 << 10), ("64M", 64 << 20), ("2G", 2 << 30), ("4g", 4 << 30),
     ("1T", 1 << 40), ("1.5G", 3 << 29), ("2GiB", 2 << 30), ("2GB", 2 << 30), (" 8M ", 8 << 20), (4096, 4096)],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1", "-1G", "4X", "1,5G", "4 G B", "1e9", "0x10"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(BadInputError, match="size"):
        parse_size(text)


def test_bad_size_is_a_value_error_for_argparse() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-size", type=parse_size)
    with pytest.raises(SystemExit):
        parser.parse_args(["--cache-size", "lots"])
    assert issubclass(BadSizeError, ValueError)


@given(st.integers(min_value=0, max_value=1 << 50), st.sampled_from(["", "K", "M", "G"]))
def test_parse_size_roundtrips_integers(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(4 << 30) == "4.0 GiB"


# --- TOML -------------------------------------------------------------------------------------------------------

def test_load_toml_every_key(tmp_path: Path, store: Path, mnt: Path) -> None:
    path = write_toml(tmp_path, f"""
store = "{store}"
mountpoint = "{mnt}"
cache_size = "4G"
prefetch = false
log_level = "DEBUG"
allow_other = true
uid = 1000
gid = "root"
umask = "027"
metrics = "127.0.0.1:9101"
refresh_interval = 0.5
read_ahead_kb = 4096
max_read = "128K"
""")
    config = load_toml(path)
    assert config == MountConfig(
        store=store, mountpoint=mnt, cache_size=4 * GiB, prefetch=False, log_level="debug", allow_other=True,
        uid=1000, gid=0, umask=0o027, metrics="127.0.0.1:9101", refresh_interval=0.5, read_ahead_kb=4096,
        max_read=128 << 10, config_file=path,
    )


def test_load_toml_defaults(tmp_path: Path, store: Path, mnt: Path) -> None:
    config = load_toml(write_toml(tmp_path, f'store = "{store}"\nmountpoint = "{mnt}"\n'))
    assert config.cache_size == 1 * GiB and config.max_read == 1 * MiB and config.prefetch is True
    assert config.metrics is None and config.foreground is False and config.umask is None


def test_toml_integer_sizes_and_octal_umask(tmp_path: Path, store: Path, mnt: Path) -> None:
    config = load_toml(write_toml(tmp_path, f'store = "{store}"\nmountpoint = "{mnt}"\n'
                                            'cache_size = 67108864\numask = 0o022\n'))
    assert config.cache_size == 64 * MiB and config.umask == 0o022


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("cache_sise = \"4G\"", r"unknown key 'cache_sise' \(did you mean cache_size\?\)"),
        ("cache_size = -1", "cache_size: size must not be negative"),
        ("cache_size = \"-4G\"", "cache_size: not a size"),
        ("cache_size = true", "cache_size: expected a size"),
        ("prefetch = \"maybe\"", "prefetch: expected true or false"),
        ("log_level = \"loud\"", "log_level: expected one of"),
        ("umask = \"999\"", "umask: expected an octal mask"),
        ("umask = 1000", "umask: must be between"),
        ("uid = -1", "uid: must be between"),
        ("uid = \"no-such-user-modelfs\"", "uid: no such user"),
        ("gid = \"no-such-group-modelfs\"", "gid: no such group"),
        ("metrics = \"localhost\"", "metrics: expected HOST:PORT"),
        ("metrics = \"127.0.0.1:99999\"", "metrics: expected HOST:PORT"),
        ("metrics = \"unix:relative.sock\"", "metrics: unix socket path must be absolute"),
        ("refresh_interval = 0", "refresh_interval: expected seconds"),
        ("read_ahead_kb = -5", "read_ahead_kb: must be between"),
        ("max_read = \"1000\"", "max_read: must be a multiple of 4K"),
        ("foreground = true", "unknown key 'foreground'"),
        ("[mount]\ncache_size = 1", r"unknown table \[mount\]"),
    ],
)
def test_toml_bad_values_name_key_and_file(tmp_path: Path, store: Path, mnt: Path, line: str, message: str) -> None:
    path = write_toml(tmp_path, f'store = "{store}"\nmountpoint = "{mnt}"\n{line}\n')
    with pytest.raises(BadInputError, match=message) as info:
        load_toml(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_toml_missing_store_key(tmp_path: Path, mnt: Path) -> None:
    path = write_toml(tmp_path, f'mountpoint = "{mnt}"\n')
    with pytest.raises(BadInputError, match=r"missing required setting 'store' \(not in .*models.toml\)"):
        load_toml(path)


def test_toml_store_that_does_not_exist(tmp_path: Path, mnt: Path) -> None:
    path = write_toml(tmp_path, f'store = "{tmp_path / "nope"}"\nmountpoint = "{mnt}"\n')
    with pytest.raises(BadInputError, match=r"models.toml: store: .*nope: no such directory"):
        load_toml(path)


def test_toml_relative_paths_refused(tmp_path: Path, mnt: Path) -> None:
    path = write_toml(tmp_path, f'store = "store"\nmountpoint = "{mnt}"\n')
    with pytest.raises(BadInputError, match="store: must be an absolute path"):
        load_toml(path)


def test_mountpoint_from_toml_ignores_a_missing_store(tmp_path: Path, mnt: Path) -> None:
    path = write_toml(tmp_path, f'store = "{tmp_path / "gone"}"\nmountpoint = "{mnt}"\n')
    assert mountpoint_from_toml(path) == mnt
    with pytest.raises(BadInputError, match="missing required setting 'mountpoint'"):
        mountpoint_from_toml(write_toml(tmp_path, f'store = "{tmp_path}"\n'))


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not valid TOML"):
        load_toml(write_toml(tmp_path, "store = \n"))
    with pytest.raises(BadInputError, match="no such config file"):
        load_toml(tmp_path / "absent.toml")


# --- mount options ----------------------------------------------------------------------------------------------

def test_mount_options_map_to_settings(store: Path, mnt: Path) -> None:
    config = from_mount_options(
        store, mnt, "ro,allow_other,cache_size=4G,noprefetch,log_level=warning,uid=0,gid=0,umask=022,"
                    "metrics=unix:/run/modelfs/m.sock,refresh_interval=1.5,read_ahead_kb=1024,max_read=1M",
    )
    assert config == MountConfig(
        store=store, mountpoint=mnt, cache_size=4 * GiB, allow_other=True, prefetch=False, log_level="warning",
        uid=0, gid=0, umask=0o022, metrics="unix:/run/modelfs/m.sock", refresh_interval=1.5, read_ahead_kb=1024,
    )


def test_generic_mount_options_are_ignored(store: Path, mnt: Path) -> None:
    # What mount(8) + mount.fuse3 actually pass (observed: "-o rw,dev,suid" for a bare mount, and
    # "rw,sync,noatime,exec,suid,dev,dev,suid" for a line with sync,noatime,...), plus fstab-only words.
    generic = ("rw,ro,dev,suid,nodev,nosuid,exec,noexec,sync,async,noatime,relatime,defaults,auto,noauto,user,"
               "nouser,users,nofail,_netdev,x-systemd.automount,x-systemd.requires=foo.service,X-mount.mkdir,"
               "comment=systemd.automount,,")
    assert from_mount_options(store, mnt, generic) == MountConfig(store=store, mountpoint=mnt)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("cache-size=4G", r"unknown key 'cache-size' \(did you mean cache_size\?\)"),
        ("direct_io", "unknown key 'direct_io'"),
        ("cache_size", r"cache_size: needs a value"),
        ("cache_size=-1G", "cache_size: not a size"),
        ("allow_other=perhaps", "allow_other: expected true or false"),
    ],
)
def test_bad_mount_options(store: Path, mnt: Path, options: str, message: str) -> None:
    with pytest.raises(BadInputError, match=f"mount option: {message}"):
        from_mount_options(store, mnt, options)


def test_parse_mount_options_returns_config_path(tmp_path: Path) -> None:
    layer, config = parse_mount_options("ro,config=/etc/modelfs/models.toml,cache_size=64M")
    assert layer == {"cache_size": 64 * MiB}
    assert config == Path("/etc/modelfs/models.toml")


# --- precedence -------------------------------------------------------------------------------------------------

def test_precedence_cli_over_options_over_toml_over_defaults(tmp_path: Path, store: Path, mnt: Path) -> None:
    other = tmp_path / "other-store"
    other.mkdir()
    toml = write_toml(tmp_path, f'store = "{other}"\nmountpoint = "{mnt}"\ncache_size = "1G"\n'
                                'log_level = "debug"\nmax_read = "512K"\nrefresh_interval = 7\n')
    config = resolve(
        {"store": str(store), "cache_size": "3G", "foreground": True},
        options=f"cache_size=2G,log_level=error,max_read=256K,config={toml}",
    )
    assert config.store == store  # command line beats the TOML file
    assert config.cache_size == 3 * GiB  # command line beats the mount option and the TOML file
    assert config.log_level == "error"  # mount option beats the TOML file
    assert config.max_read == 256 << 10  # mount option beats the TOML file
    assert config.refresh_interval == 7.0  # TOML beats the default
    assert config.prefetch is True  # default
    assert config.foreground is True and config.config_file == toml


def test_config_flag_beats_config_option(tmp_path: Path, store: Path, mnt: Path) -> None:
    a = tmp_path / "a.toml"
    a.write_text(f'store = "{store}"\nmountpoint = "{mnt}"\ncache_size = "1M"\n')
    b = tmp_path / "b.toml"
    b.write_text(f'store = "{store}"\nmountpoint = "{mnt}"\ncache_size = "2M"\n')
    assert resolve({}, options=f"config={b}", config_file=a).cache_size == 1 * MiB


def test_merge_requires_store_and_mountpoint(store: Path) -> None:
    with pytest.raises(BadInputError, match="missing required setting 'mountpoint'"):
        merge(cli={"store": store})


def test_from_cli_args_counts_only_given_options(tmp_path: Path, store: Path, mnt: Path) -> None:
    toml = write_toml(tmp_path, f'store = "{store}"\nmountpoint = "{mnt}"\nallow_other = true\n'
                                'cache_size = "1G"\n')
    args = argparse.Namespace(store=None, mountpoint=None, config=str(toml), cache_size=512 * MiB,
                              foreground=True, options=None, log_level="warning", allow_other=False)
    config = from_cli_args(args)
    assert config.cache_size == 512 * MiB and config.log_level == "warning" and config.foreground
    assert config.allow_other is True  # an unset store_true flag does not override the file


def test_cli_relative_paths_are_made_absolute(tmp_path: Path, store: Path, mnt: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = resolve({"store": "store", "mountpoint": "mnt"})
    finally:
        os.chdir(cwd)
    assert config.store == store and config.mountpoint == mnt


# --- mount.fuse3's argv -----------------------------------------------------------------------------------------

def test_parse_mount_helper_argv(store: Path, mnt: Path) -> None:
    config = parse_mount_helper_argv([str(store), str(mnt), "-o", "rw,allow_other,cache_size=64M,dev,suid"])
    assert config == MountConfig(store=store, mountpoint=mnt, cache_size=64 * MiB, allow_other=True)
    assert config.foreground is False  # mount(8) waits for the helper: the daemon must detach


def test_parse_mount_helper_argv_variants(store: Path, mnt: Path) -> None:
    config = parse_mount_helper_argv(["-f", str(store), "-ocache_size=8M", str(mnt), "-o", "noprefetch"])
    assert config.foreground and config.cache_size == 8 * MiB and config.prefetch is False
    assert parse_mount_helper_argv([str(store), str(mnt)]) == MountConfig(store=store, mountpoint=mnt)


@pytest.mark.parametrize("argv", [[], ["only-one"], ["a", "b", "c"], ["a", "b", "-o"], ["a", "b", "-x"]])
def test_parse_mount_helper_argv_refuses(argv: list[str]) -> None:
    with pytest.raises(BadInputError):
        parse_mount_helper_argv(argv)


def test_is_mount_helper_argv() -> None:
    commands = ["init", "add", "mount", "umount", "status"]
    assert is_mount_helper_argv(["/srv/store", "/mnt/models", "-o", "rw,dev,suid"], commands)
    assert not is_mount_helper_argv(["mount", "/srv/store", "/mnt/models"], commands)
    assert not is_mount_helper_argv(["--log-level", "debug", "status", "/mnt"], commands)
    assert not is_mount_helper_argv(["status"], commands)


def test_mount_fuse3_passes_what_we_parse(tmp_path: Path, store: Path, mnt: Path) -> None:
    """Run the real mount.fuse3 with a stand-in program and parse the argv it hands over."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.txt"
    fake = bindir / "modelfs"
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(record)!r}, 'w').write('\\0'.join(sys.argv[1:]))\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    subprocess.run(["mount.fuse3", str(store), str(mnt), "-t", "fuse.modelfs", "-o",
                    "ro,allow_other,cache_size=4G,nofail,_netdev,noauto"], env=env, check=True, timeout=30)
    argv = record.read_text().split("\0")
    assert argv[:2] == [str(store), str(mnt)] and argv[2] == "-o"
    config = parse_mount_helper_argv(argv)
    assert config == MountConfig(store=store, mountpoint=mnt, cache_size=4 * GiB, allow_other=True)


# --- listen addresses -------------------------------------------------------------------------------------------

def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9101") == ListenAddress("127.0.0.1", 9101)
    assert parse_listen("9101") == ListenAddress("127.0.0.1", 9101)
    assert parse_listen("[::1]:9101") == ListenAddress("::1", 9101)
    assert str(parse_listen("[::1]:9101")) == "[::1]:9101"
    assert parse_listen("unix:/run/modelfs/m.sock") == ListenAddress(unix_path="/run/modelfs/m.sock")
    assert str(parse_listen("unix:/run/modelfs/m.sock")) == "unix:/run/modelfs/m.sock"
    for bad in ("", "host:", ":80", "unix:x", "[nothex]:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)
