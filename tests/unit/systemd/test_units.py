"""The shipped systemd units (``systemd/*.service``): key directives, and ``systemd-analyze verify``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.supervisor.settings import PoolSettings

UNIT_DIR = Path(__file__).resolve().parents[3] / "systemd"
SINGLE = UNIT_DIR / "corral.service"
TEMPLATE = UNIT_DIR / "corral@.service"
UNITS = [SINGLE, TEMPLATE]
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost")
# Directives that legitimately differ between the single unit and the template.
PER_INSTANCE = {
    "Description",
    "ExecStart",
    "ExecReload",
    "RuntimeDirectory",
    "StateDirectory",
    "LogsDirectory",
}
PER_INSTANCE |= {"SyslogIdentifier", "WorkingDirectory"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
}

Unit = dict[str, dict[str, list[str]]]  # section -> key -> values (a key may repeat)


def parse_unit(path: Path) -> Unit:
    """A minimal unit-file parser: sections, ``Key=value`` lines, comments, repeated keys."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: continuation lines are not expected"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"{path.name}:{number}: not a directive: {raw!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        section.setdefault(key, []).append(value)
    return unit


def one(unit: Unit, key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values is not None and len(values) == 1, f"[{section}] {key}= should be set once: {values}"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span in the forms these units use: ``60``, ``60s``, ``2min``."""
    for suffix, factor in (("min", 60.0), ("s", 1.0)):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_key_directives(path: Path) -> None:
    unit = parse_unit(path)
    assert {"Unit", "Service", "Install"} <= unit.keys()
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "KillMode") == "mixed"
    assert one(unit, "KillSignal") == "SIGTERM"
    assert one(unit, "Restart") == "on-failure"
    assert seconds(one(unit, "RestartSec")) > 0
    assert seconds(one(unit, "WatchdogSec")) == 30
    assert one(unit, "ExecReload") == one(unit, "ExecStart").replace(" run -c ", " reload -c ")
    assert seconds(one(unit, "TimeoutStopSec")) > PoolSettings().graceful_timeout_s
    assert seconds(one(unit, "TimeoutStartSec")) > PoolSettings().ready_timeout_s
    for key, value in HARDENING.items():
        assert one(unit, key) == value, key
    assert one(unit, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "MemoryDenyWriteExecute" not in unit["Service"]  # would break ctypes/cffi callbacks
    assert one(unit, "User") == one(unit, "Group") == "corral"
    assert "DynamicUser" not in unit["Service"]
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def test_single_unit_paths() -> None:
    unit = parse_unit(SINGLE)
    assert one(unit, "ExecStart") == "/usr/local/bin/corral run -c /etc/corral/corral.toml"
    assert one(unit, "RuntimeDirectory") == "corral"
    assert one(unit, "StateDirectory") == "corral"
    assert one(unit, "LogsDirectory") == "corral"


def test_template_unit_paths() -> None:
    unit = parse_unit(TEMPLATE)
    assert one(unit, "ExecStart") == "/usr/local/bin/corral run -c /etc/corral/%i.toml"
    assert one(unit, "RuntimeDirectory") == "corral-%i"
    assert one(unit, "StateDirectory") == "corral/%i"
    assert one(unit, "LogsDirectory") == "corral/%i"


def test_template_matches_single_unit_elsewhere() -> None:
    """The two units must not drift apart: only per-instance directives may differ."""
    single, template = parse_unit(SINGLE), parse_unit(TEMPLATE)
    assert single.keys() == template.keys()
    for section in single:
        keys = (single[section].keys() | template[section].keys()) - PER_INSTANCE
        for key in sorted(keys):
            assert single[section].get(key) == template[section].get(key), f"[{section}] {key}="


def copy_with_existing_executables(path: Path, dest_dir: Path) -> Path:
    """Copy ``path`` into ``dest_dir``, pointing Exec lines whose binary is absent here (such as
    /usr/local/bin/corral on a development machine) at this Python, so that verify judges the unit
    rather than this machine's installation."""
    lines = []
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in EXEC_KEYS:
            binary, _, args = value.strip().partition(" ")
            prefix = binary[: len(binary) - len(binary.lstrip("-@:+!"))]
            if not os.access(binary[len(prefix) :], os.X_OK):
                lines.append(f"{key}={prefix}{sys.executable} {args}")
                continue
        lines.append(line)
    copy = dest_dir / path.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on PATH")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    copy = copy_with_existing_executables(path, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # verify exits 0 on mere parse warnings ("Unknown key ..., ignoring"), so read its output too;
    # lines about other units on this machine (dependencies it loads) are not ours to judge.
    stem = path.name.removesuffix(".service").removesuffix("@")
    ours = [line for line in output.splitlines() if str(tmp_path) in line or line.startswith(stem)]
    assert result.returncode == 0, output
    assert ours == [], output
