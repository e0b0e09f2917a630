"""Rate drops and adaptive no-data thresholds end to end: the real daemon against local Kraken
servers over real sockets, faults injected on the liquid server, events read back from the
anomalies topic (docs/anomalies.md).

Server kr-a streams two liquid instruments (~100 msgs/s each); kr-b one illiquid instrument (a
record every ~1.7 s: longer than the 1.5 s floor of the no-data threshold, far below the rate
floor). Under the adaptive threshold kr-b never alarms, while kr-a alarms 1.5 s into a silence;
a 20 s drop of kr-a to 5 % of its rate is one `rate_drop`, within `rate_drop_for` + 1 s. The
detection delays are printed (``pytest -s``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault
from fairfeed.local.kraken import KrakenServer
from fairfeed.local.wsserver import ServerThread
from tests.daemon.anomaly_rig import Feed, brief, read_events, write_config
from tests.daemon.daemon_process import DaemonProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

TAG = "rate"
LIQUID = {"BTC-USD": 64000.0, "ETH-USD": 3200.0}
ILLIQUID = {"SOL-USD": 150.0}
RATE_DROP_FOR = 2.0
NO_DATA_FLOOR = 1.5
ANOMALIES = f"""
[anomalies]
evaluate_interval = 0.2
first_data_timeout = 10.0
heartbeat_timeout = 3.0
no_data_adaptive = true
no_data_factor = 4.0
no_data_floor = {NO_DATA_FLOOR}
no_data_cap = 60.0
rate_drop_for = {RATE_DROP_FOR}
"""


def _events(bootstrap: str, t0: int = 0) -> list[dict]:
    return read_events(bootstrap, TAG, t0)


def test_rate_drop_and_adaptive_no_data(tmp_path: Path, kafka_broker) -> None:
    delays: dict[str, float] = {}
    bootstrap = kafka_broker.bootstrap
    servers = [
        KrakenServer("kr-a", SimulatorConfig(prices=LIQUID, rate=200, seed=1, volatility_bps=0.5),
                     heartbeat_interval=0.5),
        KrakenServer("kr-b", SimulatorConfig(prices=ILLIQUID, rate=0.6, seed=2,
                                             volatility_bps=0.5), heartbeat_interval=0.5),
    ]  # fmt: skip
    threads = ServerThread(*servers).start()
    feeds = [
        Feed("kr-a", "VENUE-A", servers[0].url, tuple(LIQUID)),
        Feed("kr-b", "VENUE-B", servers[1].url, tuple(ILLIQUID)),
    ]
    daemon = DaemonProcess(tmp_path, write_config(tmp_path, TAG, bootstrap, ANOMALIES, feeds))
    try:
        # Clean: until the illiquid stream has shown its rhythm (the adaptive threshold learns
        # 16 gaps, under the cap meanwhile) nothing at all, though its gaps exceed the floor.
        wait_for(lambda: servers[0].stats.records > 0, 30, "data from kr-a")
        wait_for(lambda: servers[1].stats.events >= 20, 60, "20 illiquid events", interval=0.5)
        assert _events(bootstrap) == []

        def scenario(fault, amount, kind, threshold_s, hold=0.0):
            """``fault`` for ``hold`` seconds (at least until detected): one start, one end."""
            t0 = time.time_ns()
            threads.inject(fault, amount, 0)
            start = wait_for(
                lambda: [e for e in _events(bootstrap, t0) if e["phase"] == "start"],
                threshold_s + 10, f"a {kind} event", interval=0.3,
            )  # fmt: skip
            assert [brief(e) for e in start] == [(kind, "start", "kr-a/*/*/*")], start
            late = (start[0]["detected"] - t0) / 1e9
            assert late <= threshold_s + 1.0, f"{kind} detected after {late:.2f}s"
            delays[kind] = late
            time.sleep(max(0.0, hold - (time.time_ns() - t0) / 1e9))  # the fault's duration
            threads.call(servers[0].clear)
            wait_for(
                lambda: any(e["phase"] == "end" for e in _events(bootstrap, t0)),
                20, f"the end of {kind}", interval=0.3,
            )  # fmt: skip
            # nothing else: in particular no second start, and nothing about kr-b
            got = _events(bootstrap, t0)
            assert [brief(e) for e in got] == [
                (kind, "start", "kr-a/*/*/*"), (kind, "end", "kr-a/*/*/*"),
            ], [(*brief(e), (e["detected"] - t0) / 1e9, e["values"]) for e in got]  # fmt: skip
            return got

        # the liquid pair's adaptive threshold is the floor: its gaps are a few ms
        silent = scenario(Fault.HEARTBEATS_ONLY, 0, "no_data", NO_DATA_FLOOR)
        assert silent[0]["threshold"] == NO_DATA_FLOOR
        drop = scenario(Fault.RATE_SCALE, 0.05, "rate_drop", RATE_DROP_FOR, hold=20.0)
        assert drop[0]["values"]["rate"] < 0.2 * drop[0]["values"]["baseline"]
        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()
        assert not [e for e in _events(bootstrap) if "kr-b" in e["key"]]
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        threads.stop()
        print("\ndetection delays (fault -> event):", {k: round(v, 2) for k, v in delays.items()})
