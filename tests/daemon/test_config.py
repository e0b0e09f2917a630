"""Configuration: validated once at load, precise errors naming the file and the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fairfeed.core import config
from fairfeed.core.config import ConfigError

PROVIDER = '[[providers]]\nname = "a"\nkind = "simulator"\nvenue = "V"\nurl = "ws://x"\n'


def test_embedded_default_is_valid_and_frozen() -> None:
    cfg = config.load()
    assert cfg.source == "<embedded default>"
    assert len(cfg.providers) >= 2 and all(p.serve for p in cfg.providers)
    assert cfg.kafka.bootstrap == ""  # so the daemon starts its own broker
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daemon.workers = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nworkerz = 2\n", "unknown key 'daemon.workerz'"),
        ("colour = 1\n", "unknown key 'colour'"),
        (PROVIDER + "speed = 3\n", "unknown key 'providers[0].speed'"),
        ("[daemon]\nworkers = '2'\n", "daemon.workers: expected an integer, got a string"),
        ("[fair]\nstale_after = true\n", "fair.stale_after: expected a number, got a boolean"),
        ("[kafka]\nbootstrap = 9092\n", "kafka.bootstrap: expected a string, got an integer"),
        ("providers = 1\n", "providers: expected an array"),
        ("[ring]\ncapacity = 1000\n", "ring.capacity: must be a power of two"),
        ("[daemon]\nworkers = 0\n", "daemon.workers: must be >= 1"),
        ("[fair]\nmethod = 'mean'\n", "fair.method: must be one of two_level, median"),
        ("[fair]\noutlier_readmit = 0.06\n", "fair.outlier_readmit: must be between 0 and"),
        ("[fair]\nvenue_cap = 0\n", "fair.venue_cap: must be in (0, 1]"),
        ("[fair]\ntrim = 0.5\n", "fair.trim: must be in [0, 0.5)"),
        ("[fair]\nheartbeat_interval = 0.01\n", "fair.heartbeat_interval: must be 0 (off)"),
        ("[fair]\nwindow_buckets = 0\n", "fair.window_buckets: must be between 1 and 256"),
        ("[fair]\nfreshness_tau = 0\n", "fair.freshness_tau: must be > 0"),
        ("[fair]\nmin_venues = 0\n", "fair.min_venues: must be >= 1"),
        ('[[providers]]\nname = "a"\n', "providers[0]: missing required key(s) kind"),
        (PROVIDER.replace("simulator", "carrier-pigeon"), "unknown provider kind"),
        (PROVIDER + PROVIDER, "duplicate provider name 'a'"),
        ('[[subscriptions]]\nprovider = "zz"\ninstruments = ["X"]\n', "unknown provider 'zz'"),
        ("[daemon\n", "invalid TOML"),
    ],
)
def test_bad_configuration_names_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.loads(text, "/etc/fairfeed/site.toml")
    assert str(err.value).startswith("/etc/fairfeed/site.toml: ")
    assert message in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        config.load(tmp_path / "nope.toml")


def test_daemon_refuses_to_start_on_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[kafka]\nbootstrapp = 'x:1'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}: unknown key 'kafka.bootstrapp'" in proc.stderr


def test_check_config_accepts_the_shipped_default(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(config.resources.files("fairfeed.core").joinpath("default.toml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"ok ({len(config.load().providers)} providers)" in proc.stdout
