"""The systemd unit passes `systemd-analyze verify` (no warning either), is hardened to an
exposure of at most 2.0 (`systemd-analyze security --offline=true`), and says what the daemon
needs: Type=notify with a watchdog, a stop timeout above the daemon's own, its directories."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fairfeed.core.config import DaemonConfig, KafkaConfig
from fairfeed.daemon.ctl_server import default_socket_path
from fairfeed.daemon.subscriptions import default_state_file

UNIT = Path(__file__).resolve().parents[2] / "ops" / "systemd" / "fairfeed.service"
INSTALL_PREFIX = "/opt/fairfeed"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")
# Required, never skipped: `make test` installs the Debian package `systemd` (tools/).
assert ANALYZE, "systemd-analyze missing: apt-get install systemd"


def _entries() -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys included (unlike configparser)."""
    out, section = [], ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _entries() if s == section and k == key]


def _seconds(value: str) -> float:
    units = {"s": 1, "min": 60, "ms": 0.001}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s)?", value):
        total += float(num) * units[unit or "s"]
    return total


@pytest.fixture(scope="module")
def installed_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unit with its install prefix pointing at this environment's `fairfeed` (verify fails
    when an Exec binary is missing); every other line as committed."""
    root = tmp_path_factory.mktemp("opt-fairfeed")
    (root / "bin").mkdir()
    (root / "bin" / "fairfeed").symlink_to(Path(sys.executable).parent / "fairfeed")
    unit = tmp_path_factory.mktemp("unit") / "fairfeed.service"
    unit.write_text(UNIT.read_text().replace(f"{INSTALL_PREFIX}/bin/", f"{root}/bin/"))
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


def test_unit_verifies_without_warnings(installed_unit: Path) -> None:
    proc = _analyze("verify", str(installed_unit))
    # verify exits 0 on unknown keys and bad values and only warns: stderr must be empty.
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_unit_exposure_is_at_most_two(installed_unit: Path) -> None:
    proc = _analyze(
        "security", "--offline=true", f"--threshold={MAX_EXPOSURE * 10:.0f}", str(installed_unit)
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout
    assert float(m[1]) <= MAX_EXPOSURE, proc.stdout


def test_unit_runs_the_daemon_as_a_notify_service_with_a_watchdog() -> None:
    assert _values("Type") == ["notify"]
    assert _values("NotifyAccess") == ["main"]  # only the supervisor speaks for the service
    assert _seconds(_values("WatchdogSec")[0]) >= 10  # pings every half: 0.1 s ticks, slack
    (start,) = _values("ExecStart")
    assert start.split()[1:3] == ["run", "--config"] and "--no-live" in start
    assert any("warm-up" in v for v in _values("ExecStartPre"))
    assert _values("ExecReload") == ["/bin/kill -HUP $MAINPID"]  # SIGHUP = ctl reload


def test_stop_timeout_leaves_the_daemon_its_own_deadline() -> None:
    stop = _seconds(_values("TimeoutStopSec")[0])
    assert stop > DaemonConfig().stop_timeout + 5
    assert DaemonConfig().stop_timeout >= KafkaConfig().flush_timeout


def test_numba_can_jit_and_cache_under_the_hardening() -> None:
    # Numba's JIT maps writable+executable memory; the package directory is read-only.
    assert "yes" not in _values("MemoryDenyWriteExecute")
    assert any(v.startswith("NUMBA_CACHE_DIR=%C/") for v in _values("Environment"))
    assert _values("CacheDirectory") == ["fairfeed"]


def test_the_daemon_finds_its_directories_where_systemd_makes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _values("StateDirectory") == ["fairfeed"] and _values("RuntimeDirectory") == ["fairfeed"]
    assert any(v.startswith("-/etc/fairfeed/") for v in _values("EnvironmentFile"))
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/fairfeed")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/fairfeed")
    assert default_state_file().is_relative_to("/var/lib/fairfeed")
    assert default_socket_path().is_relative_to("/run/fairfeed")
