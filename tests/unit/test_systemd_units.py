"""The systemd units in config/systemd/ say what the README promises: notify
services with a watchdog, restarted on failure, run as `herald` with the
hardening, reading the environment file; and that file's example is valid."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from config.settings import VARIABLES, Settings
from daemon.supervisor import PROCESSES, STOP_TIMEOUT_S
from tests.conftest import REPO

UNITS = REPO / "config" / "systemd"
SERVICES = {name: UNITS / f"herald-{name}.service" for name in ("daemon", "worker", "dashboard")}
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value it is given (systemd lets a key repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_is_a_notify_service_with_watchdog_restart_and_hardening(name: str) -> None:
    unit = parse_unit(SERVICES[name])
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["ExecStart"] == f"/opt/herald/venv/bin/herald {' '.join(PROCESSES[name])}"
    assert service["Restart"] == "on-failure"
    assert 10 <= seconds(service["WatchdogSec"]) <= 120
    assert seconds(service["TimeoutStartSec"]) >= 60
    assert service["User"] == service["Group"] == "herald"
    assert service["EnvironmentFile"] == "/etc/herald/herald.env"
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{name}: {key}"
    assert "/var/lib/herald" in service["ReadWritePaths"].split()
    assert unit["Unit"]["PartOf"] == ["herald.target"]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]  # an outage never makes systemd give up


def test_only_the_worker_lets_its_children_notify_and_stops_through_its_main_process() -> None:
    worker = {key: values[-1] for key, values in parse_unit(SERVICES["worker"])["Service"].items()}
    assert worker["NotifyAccess"] == "all"  # Dramatiq's worker processes send READY and WATCHDOG
    assert worker["KillMode"] == "mixed"  # one SIGTERM, relayed by Dramatiq's parent
    for name in ("daemon", "dashboard"):
        service = {key: values[-1] for key, values in parse_unit(SERVICES[name])["Service"].items()}
        assert service["NotifyAccess"] == "main"


def test_stop_timeouts_outlast_herald_s_own_shutdown_bounds() -> None:
    from actors.middleware.lifecycle import SHUTDOWN_TIMEOUT_S as WORKER_SHUTDOWN_S
    from daemon.service import SHUTDOWN_TIMEOUT_S as DAEMON_SHUTDOWN_S

    stop = {name: seconds(parse_unit(path)["Service"]["TimeoutStopSec"][-1]) for name, path in SERVICES.items()}
    assert stop["daemon"] > DAEMON_SHUTDOWN_S
    assert stop["worker"] > WORKER_SHUTDOWN_S and stop["worker"] >= STOP_TIMEOUT_S
    assert stop["dashboard"] > 60  # aiohttp's own shutdown timeout for requests in flight


def test_the_target_wants_every_service() -> None:
    target = parse_unit(UNITS / "herald.target")
    wanted = set(target["Unit"]["Wants"][-1].split())
    assert wanted == {path.name for path in SERVICES.values()}
    assert target["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_example_environment_file_holds_valid_settings_and_placeholders_only() -> None:
    text = (UNITS / "herald.env.example").read_text()
    assert "0600" in text
    known = set(VARIABLES.values())
    active: dict[str, str] = {}
    for line in text.splitlines():
        setting = re.match(r"^#?(HERALD_[A-Z0-9_]+)=(.*)$", line)
        if setting:
            assert setting.group(1) in known, f"unknown setting {setting.group(1)}"
            if not line.startswith("#"):
                active[setting.group(1)] = setting.group(2)
    settings = Settings.from_env(active)  # the example itself starts (with its placeholders)
    assert not settings.embedded
    for secret in ("PASSWORD", "API_KEY", "AUTH_TOKEN", "SECRET"):
        values = re.findall(rf"^#?HERALD_\w*{secret}\w*=(.*)$", text, flags=re.MULTILINE)
        assert values and all(value == "CHANGE-ME" for value in values), secret


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_itself_accepts_the_units(tmp_path: Path) -> None:
    # systemd-analyze wants ExecStart to exist: point it at a program that does.
    for path in [*SERVICES.values(), UNITS / "herald.target"]:
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/herald/venv/bin/herald", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
