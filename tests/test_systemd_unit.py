"""systemd/modelfs@.service: `systemd-analyze verify` accepts it and it keeps the settings the service relies on.

systemd-analyze comes from Debian's systemd package (scripts/install installs it); this test does not skip without
it, because a unit nobody verifies breaks on the first server that loads it.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from collections import defaultdict
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "modelfs@.service"
INSTALLED_BINARY = "/usr/local/bin/modelfs"

# Each gives the service a private mount namespace whose mounts never reach the host (systemd.exec(5),
# PrivateMounts=): the FUSE mount would be invisible outside the service.
NAMESPACE_SETTINGS = (
    "PrivateMounts", "PrivateTmp", "PrivateDevices", "ProtectSystem", "ProtectHome", "ReadWritePaths",
    "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountFlags",
    "DynamicUser", "PrivateNetwork",
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def modelfs_binary() -> str:
    """The console script pip installed for this interpreter (what /usr/local/bin/modelfs links to)."""
    path = Path(sysconfig.get_path("scripts")) / "modelfs"
    assert path.exists(), f"{path} missing: run 'pip install -e .'"
    return str(path)


def verify(unit_text: str, directory: Path) -> tuple[int, str]:
    """Run systemd-analyze verify on a copy of the unit whose binary path exists on this machine."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze missing: apt-get install systemd (scripts/install does it with MODELFS_APT=1)"
    if not Path(INSTALLED_BINARY).exists():
        unit_text = unit_text.replace(INSTALLED_BINARY, modelfs_binary())
    path = directory / "modelfs@.service"
    path.write_text(unit_text)
    result = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "modelfs@" in line]
    return result.returncode, "\n".join(ours)


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    code, complaints = verify(UNIT.read_text(), tmp_path)
    assert code == 0 and complaints == "", complaints


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing binary are both reported."""
    broken = UNIT.read_text().replace("KillMode=mixed", "KilMode=mixed")
    code, complaints = verify(broken, tmp_path)
    assert "Unknown key 'KilMode'" in complaints
    missing = UNIT.read_text().replace(INSTALLED_BINARY, str(tmp_path / "no-such-modelfs"))
    code, complaints = verify(missing, tmp_path)
    assert code != 0 and "is not executable" in complaints


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_notify_daemon_with_instance_config(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} mount --config /etc/modelfs/%i.toml --foreground"]
    assert service["Restart"] == ["on-failure"]


def test_stale_mounts_are_detached_before_start_and_after_stop(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    umount = f"{INSTALLED_BINARY} umount --config /etc/modelfs/%i.toml --lazy --if-mounted"
    assert service["ExecStartPre"] == [umount]
    assert service["ExecStopPost"] == ["-" + umount]
    assert service["KillMode"] == ["mixed"] and service["KillSignal"] == ["SIGTERM"]


def test_hardening_still_allows_fuse_and_a_visible_mount(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    present = sorted(key for key in NAMESPACE_SETTINGS if key in service)
    assert present == [], f"these hide the mount from the host: {present}"
    assert "CAP_SYS_ADMIN" in service["CapabilityBoundingSet"][0].split()
    assert "/dev/fuse rw" in service["DeviceAllow"]
    assert set(service["SystemCallFilter"][0].split()) >= {"@system-service", "@mount"}
    assert service["NoNewPrivileges"] == ["yes"]


def test_install_section(unit: dict[str, dict[str, list[str]]]) -> None:
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
