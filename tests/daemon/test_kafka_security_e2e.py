"""The daemon against a broker that requires SASL: the start names the authentication failure,
the compute process connects with the same settings, the daemon keeps running and spools, and
the password appears in no output, log or `ctl status`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.daemon.daemon_process import DaemonProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

SECRET = "e2e-Secret-pa55"


def test_the_daemon_logs_in_with_the_files_settings(
    tmp_path: Path, auth_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FF_TEST_KAFKA_PASSWORD", SECRET)
    conf = tmp_path / "f.toml"
    conf.write_text(f"""
[daemon]
workers = 1
[kafka]
bootstrap = "{auth_broker}"
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "SCRAM-SHA-256"
sasl_username = "fairfeed"
sasl_password_env = "FF_TEST_KAFKA_PASSWORD"
flush_timeout = 0.5
[metrics]
listen = ""
[[providers]]
name = "sim"
kind = "simulator"
venue = "SIMX"
[providers.serve]
rate = 50
prices = {{ "BTC-USD" = 64000.0 }}
[[subscriptions]]
provider = "sim"
instruments = ["BTC-USD"]
""")
    daemon = DaemonProcess(tmp_path, conf)
    try:
        scram = "SASL SCRAM authentication failed: broker responded with unknown-user"
        wait_for(lambda: scram in daemon.stderr(), 60, "the start's topic check")
        assert "(SASL_PLAINTEXT SCRAM-SHA-256 as fairfeed): cannot list topics" in daemon.stderr()
        # The compute process (a forked child, the password read from its inherited
        # environment) connects the same way: its own topic check names the same failure.
        wait_for(
            lambda: any("[compute " in line and scram in line
                        for line in daemon.stderr().splitlines()),
            30,
            "the compute process's login",
        )  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-m", "fairfeed", "ctl", "--socket", str(daemon.socket), "--json",
             "status"],
            capture_output=True, text=True, timeout=30, env=dict(os.environ),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        status = orjson.loads(res.stdout)
        assert status["kafka"]["security"] == "SASL_PLAINTEXT SCRAM-SHA-256 as fairfeed"
        assert SECRET not in res.stdout
    finally:
        code = daemon.stop(signal.SIGTERM)
    out = daemon.stdout() + daemon.stderr()
    assert SECRET not in out
    assert code == 0, daemon.stderr()[-3000:]  # undelivered output stays in the spool
