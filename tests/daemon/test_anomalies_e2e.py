"""Anomaly events end to end: the real daemon against local Kraken servers over real sockets,
faults injected on one server, events read back from the anomalies topic.

One daemon runs every scenario in turn (short thresholds keep the file under ~90 s). The clean
window is 10 s here, not the 60 s of the issue, to keep CI fast; run it longer by hand with
``FAIRFEED_CLEAN_SECONDS=60``.
"""

from __future__ import annotations

import os
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

INSTRUMENTS = {"BTC-USD": 64000.0, "ETH-USD": 3200.0}
PROVIDERS = (("kr-a", "VENUE-A"), ("kr-b", "VENUE-B"), ("kr-c", "VENUE-C"))
CLEAN_S = float(os.environ.get("FAIRFEED_CLEAN_SECONDS", "10"))
TAG = "anom"
ANOMALIES = """
[anomalies]
evaluate_interval = 0.2
no_data_after = 1.5
first_data_timeout = 5.0
heartbeat_timeout = 2.0
divergence = 0.05
divergence_for = 2.0
divergence_clear = 0.03
latency_provider_local_ms = 300.0
latency_exchange_provider_ms = 300.0
clock_skew_ms = 200.0
latency_for = 1.0
gap_quiet = 1.0
"""


def _events(bootstrap: str) -> list[dict]:
    return read_events(bootstrap, TAG)


def _since(bootstrap: str, t0: int) -> list[dict]:
    return read_events(bootstrap, TAG, t0)


def test_each_fault_gives_one_event_of_its_kind_and_one_end(tmp_path: Path, kafka_broker) -> None:
    bootstrap = kafka_broker.bootstrap
    servers = [
        KrakenServer(
            name,
            SimulatorConfig(
                prices=INSTRUMENTS, rate=200, quote_ratio=0.5, seed=i + 1, volatility_bps=0.5
            ),
            heartbeat_interval=0.5,
        )
        for i, (name, _venue) in enumerate(PROVIDERS)
    ]
    threads = ServerThread(*servers).start()
    feeds = [Feed(n, v, s.url, tuple(INSTRUMENTS)) for (n, v), s in zip(PROVIDERS, servers,
                                                                       strict=True)]  # fmt: skip
    daemon = DaemonProcess(tmp_path, write_config(tmp_path, TAG, bootstrap, ANOMALIES, feeds))
    try:
        wait_for(lambda: all(s.stats.records > 0 for s in servers), 30, "data from every server")
        # Clean run: no event at all (including start-up: first data within its timeout).
        time.sleep(CLEAN_S)
        assert _events(bootstrap) == []

        def scenario(fault, amount, kind, key, threshold_s, clear=True, end=True, consequence=""):
            """One fault: one start of ``kind`` (and one end). ``consequence``: a second kind
            the fault may cause, at most one episode (a disconnect loses the trades in flight
            at the cut, which the reconnect reports as a gap)."""
            t0 = time.time_ns()
            threads.inject(fault, amount, 0)

            def own(events):
                return [e for e in events if e["kind"] != consequence]

            start = wait_for(
                lambda: [e for e in own(_since(bootstrap, t0)) if e["phase"] == "start"],
                threshold_s + 10, f"a {kind} event", interval=0.3,
            )  # fmt: skip
            assert [brief(e) for e in start] == [(kind, "start", key)], start
            late = (start[0]["detected"] - t0) / 1e9
            assert late <= threshold_s + 1.0, f"{kind} detected after {late:.2f}s"
            if clear:
                threads.call(servers[0].clear)
            if end:
                wait_for(
                    lambda: any(e["phase"] == "end" for e in own(_since(bootstrap, t0))),
                    20, f"the end of {kind}", interval=0.3,
                )  # fmt: skip
            time.sleep(1.0)  # nothing else follows
            everything = _since(bootstrap, t0)
            extra = [brief(e) for e in everything if e["kind"] == consequence]
            # kr-a's source, or its instruments' streams: at most one episode each
            assert all(key.startswith("kr-a/VENUE-A/") for _k, _p, key in extra), extra
            for key in {key for _k, _p, key in extra}:
                phases = [p for _k, p, k in extra if k == key]
                assert phases in (["start"], ["start", "end"]), extra
            got = own(everything)
            want = [(kind, "start", key)] + ([(kind, "end", key)] if end else [])
            assert [brief(e) for e in got] == want, got
            return got

        # A single 6 % spike (a few ticks) is no divergence; a sustained 6 % offset is one.
        t0 = time.time_ns()
        threads.inject(Fault.PRICE_OFFSET, 600, 0)
        time.sleep(0.02)
        threads.call(servers[0].clear)
        time.sleep(4.0)
        assert _since(bootstrap, t0) == []
        got = scenario(Fault.PRICE_OFFSET, 600, "divergence", "kr-a/*/*/*", 2.0)
        assert got[0]["subject"] == {
            "provider": "kr-a", "venue": None, "data_class": None, "instrument": None,
        }  # fmt: skip
        assert 0.05 < got[0]["values"]["deviation"] < 0.07
        assert got[0]["values"]["subscriptions"] == 2

        scenario(Fault.EXCHANGE_DELAY, 500, "latency_local", "kr-a/*/*/*", 1.0)
        scenario(Fault.EXCHANGE_DELAY, -500, "clock_skew", "kr-a/*/*/*", 1.0)
        gap = scenario(Fault.SEQUENCE_GAP, 5, "gap", "kr-a/VENUE-A/*/*", 0.0, clear=False)
        assert gap[0]["values"]["missed"] >= 5
        scenario(Fault.HEARTBEATS_ONLY, 0, "no_data", "kr-a/*/*/*", 1.5)
        stall = scenario(Fault.STALL, 0, "disconnect", "kr-a/*/*/*", 2.0, consequence="gap")
        assert stall[0]["values"]["reason"] == "heartbeat_timeout"
        disc = scenario(Fault.DISCONNECT, 0, "disconnect", "kr-a/*/*/*", 0.0, clear=False,
                        consequence="gap")  # fmt: skip
        assert disc[0]["values"]["reason"] == "disconnected"
        assert disc[1]["end"] >= disc[1]["start"]
        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        threads.stop()
