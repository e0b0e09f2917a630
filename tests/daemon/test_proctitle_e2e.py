"""A running daemon names its processes: ``fairfeed: ROLE`` in /proc/PID/cmdline (ps aux, top -c)
and ``ff: ROLE`` in /proc/PID/comm (ps -e, top), for the supervisor and every child."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairfeed.daemon.proctitle import COMM_MAX, comm_name
from fairfeed.kafka.broker import LocalBroker
from tests.daemon.daemon_process import DaemonProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

ROLES = ("simulators", "ingest-0", "ingest-1", "compute")


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode().strip()


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def test_every_process_has_its_title(tmp_path: Path, kafka_broker: LocalBroker) -> None:
    conf = tmp_path / "f.toml"
    conf.write_text(f"""
[daemon]
workers = 2
[kafka]
bootstrap = "{kafka_broker.bootstrap}"
create_topics = true
ticks_topic = "title.ticks"
fair_topic = "title.fair"
[metrics]
listen = ""
[[providers]]
name = "sim"
kind = "simulator"
venue = "SIMX"
[providers.serve]
rate = 50
prices = {{ "BTC-USD" = 64000.0, "ETH-USD" = 3200.0, "SOL-USD" = 150.0 }}
[[subscriptions]]
provider = "sim"
instruments = ["BTC-USD", "ETH-USD", "SOL-USD"]
""")
    daemon = DaemonProcess(tmp_path, conf)
    try:
        wait_for(
            lambda: all(daemon.pid_of(r) for r in ROLES), 90, f"children started\n{daemon.stderr}"
        )
        pids = {"supervisor": daemon.pid} | {r: daemon.pid_of(r) for r in ROLES}
        for role, pid in pids.items():
            assert pid is not None
            wait_for(lambda p=pid, r=role: _cmdline(p) == f"fairfeed: {r}", 10, f"{role} title")
            assert _comm(pid) == f"ff: {role}" == comm_name(role), role
            assert len(_comm(pid)) <= COMM_MAX
        # Supervisor and children are told apart by their titles alone.
        assert len({_cmdline(p) for p in pids.values()}) == len(pids)
        assert len({_comm(p) for p in pids.values()}) == len(pids)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    assert daemon.leftovers() == []
