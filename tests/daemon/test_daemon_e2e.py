"""The whole daemon, end to end: real simulators over WebSocket, real broker, real consumer."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.partition import worker_for
from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE
from fairfeed.kafka.encode import decode_ticks
from fairfeed.local.simulator import SimulatorServer, SimulatorThread
from tests.conftest import consume_all
from tests.daemon.daemon_process import DaemonProcess, alive
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

INSTRUMENTS = {"BTC-USD": 64000.0, "ETH-USD": 3200.0, "SOL-USD": 150.0}
PROVIDERS = (("sim-a", "VENUE-A", -5.0), ("sim-b", "VENUE-B", 0.0), ("sim-c", "VENUE-C", 7.0))


def _simulators(rate: float, max_events: int) -> SimulatorThread:
    servers = [
        SimulatorServer(
            name,
            SimulatorConfig(
                prices=INSTRUMENTS,
                rate=rate,
                batch=4,
                quote_ratio=0.5,
                price_offset_bps=offset,
                max_events=max_events,
                heartbeat_interval=0.5,
                seed=i + 1,
            ),
        )
        for i, (name, _venue, offset) in enumerate(PROVIDERS)
    ]
    return SimulatorThread(*servers).start()


def _config(tmp_path: Path, sims: SimulatorThread, bootstrap: str, tag: str) -> Path:
    lines = [
        "[daemon]\nworkers = 2\nheartbeat_interval = 0.1\nheartbeat_timeout = 3.0\n",
        f'[kafka]\nbootstrap = "{bootstrap}"\ncreate_topics = true\nticks_topic = "{tag}.ticks"\n'
        f'fair_topic = "{tag}.fair"\n',
        '[fair]\nmethod = "median"\nstale_after = 120.0\nmin_interval = 0.05\n',
    ]
    insts = ", ".join(f'"{i}"' for i in INSTRUMENTS)
    for (name, venue, _), server in zip(PROVIDERS, sims.servers, strict=True):
        lines.append(
            f'[[providers]]\nname = "{name}"\nkind = "simulator"\nvenue = "{venue}"\n'
            f'url = "{server.url}"\n'
        )
        lines.append(f'[[subscriptions]]\nprovider = "{name}"\ninstruments = [{insts}]\n')
    path = tmp_path / "fairfeed.toml"
    path.write_text("\n".join(lines))
    return path


def _messages(bootstrap: str, topic: str) -> list[bytes]:
    """Every value of ``topic``; none while the daemon has not created it yet."""
    try:
        return [v for _p, _k, v in consume_all(bootstrap, topic, timeout=20)]
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return []
        raise


def _tick_groups(bootstrap: str, topic: str) -> list[dict]:
    return [decode_ticks(v) for v in _messages(bootstrap, topic)]


def _count(groups: list[dict]) -> int:
    return sum(g["count"] for g in groups)


def test_every_tick_reaches_kafka_and_fair_price_is_the_median(
    tmp_path: Path, kafka_broker
) -> None:
    bootstrap = kafka_broker.bootstrap
    sims = _simulators(rate=6000, max_events=2500)
    daemon = None
    try:
        daemon = DaemonProcess(tmp_path, _config(tmp_path, sims, bootstrap, "e2e"))

        # Every connection sends max_events and then only heartbeats: wait for the total to settle.
        def settled() -> int:
            total = sum(sims.stats(i).records for i in range(3))
            time.sleep(0.5)
            again = sum(sims.stats(i).records for i in range(3))
            return total if total == again and total > 0 else 0

        sent = wait_for(settled, 60, "the simulators to finish their workload")
        stats = [sims.stats(i) for i in range(3)]
        assert sent == sum(s.records for s in stats)
        wait_for(
            lambda: _count(_tick_groups(bootstrap, "e2e.ticks")) >= sent,
            60,
            f"{sent} ticks in Kafka",
            interval=0.5,
        )
        daemon.note_children()
        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()
        assert daemon.leftovers() == []
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill()
        sims.stop()

    groups = _tick_groups(bootstrap, "e2e.ticks")
    assert _count(groups) == sent  # nothing lost, nothing duplicated
    for (name, venue, _), st in zip(PROVIDERS, stats, strict=True):
        for inst in INSTRUMENTS:
            mine = [g for g in groups if g["provider"] == name and g["instrument"] == inst]
            assert all(g["venue"] == venue and g["data_class"] == "spot" for g in mine)
            kind = np.concatenate([g["kind"] for g in mine])
            seq = np.concatenate([g["sequence"] for g in mine])
            trades = seq[kind == KIND_TRADE]
            bids, asks = seq[kind == KIND_BID], seq[kind == KIND_ASK]
            sym = st.symbol(inst)
            assert len(trades) == sym.trades and len(bids) == len(asks) == sym.quotes
            # Per instrument, sequences rise by one per event across trades and quotes.
            events = np.sort(np.concatenate([trades, bids]))
            assert np.array_equal(events, np.arange(events[0], events[0] + len(events)))
            # Order per instrument holds end to end.
            assert np.all(np.diff(seq[kind != KIND_ASK]) > 0)
            last = np.concatenate([g["price"] for g in mine])[kind == KIND_TRADE][-1]
            assert last == sym.last_trade[0]

    fair: dict[str, dict] = {}
    for _p, key, value in consume_all(bootstrap, "e2e.fair", timeout=20):
        msg = orjson.loads(value)
        assert msg["schema"] == 1 and msg["type"] == "fair" and key == msg["instrument"].encode()
        fair[msg["instrument"]] = msg  # per-key order: the last one wins
    assert set(fair) == set(INSTRUMENTS)
    for inst, msg in fair.items():
        expected = statistics.median(st.symbol(inst).last_trade[0] for st in stats)
        assert msg["sources"] == 3
        assert msg["price"] == pytest.approx(expected, rel=1e-12)


def test_sigkilled_worker_is_back_within_a_second_and_data_flows_again(
    tmp_path: Path, kafka_broker
) -> None:
    bootstrap = kafka_broker.bootstrap
    sims = _simulators(rate=1500, max_events=0)
    daemon = DaemonProcess(tmp_path, _config(tmp_path, sims, bootstrap, "kill"))
    try:
        old = wait_for(lambda: daemon.pid_of("ingest-0"), 30, "ingest-0 to start")
        wait_for(lambda: _count(_tick_groups(bootstrap, "kill.ticks")) > 0, 30, "first ticks")
        daemon.note_children()
        killed_at = time.time_ns()
        t0 = time.monotonic()
        daemon.note_children()

        os.kill(old, signal.SIGKILL)
        new = wait_for(
            lambda: (p := daemon.pid_of("ingest-0")) != old and p, 5, "ingest-0 to restart"
        )
        back = time.monotonic() - t0
        assert back < 1.0, f"restart took {back:.2f}s"
        assert alive(new) and not alive(old)
        owned = {(p, i) for p, _, _ in PROVIDERS for i in INSTRUMENTS if worker_for(p, i, 2) == 0}
        assert owned, "worker 0 owns no subscription: choose other names"

        def fresh_from_worker0() -> bool:
            for g in _tick_groups(bootstrap, "kill.ticks"):
                if (g["provider"], g["instrument"]) in owned and g["ts_receive"].max() > killed_at:
                    return True
            return False

        wait_for(fresh_from_worker0, 10, "data from the restarted worker", interval=0.3)
        assert daemon.stop(signal.SIGINT) == 0, daemon.stderr()
        assert daemon.leftovers() == []
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        sims.stop()


def test_embedded_default_shows_fair_prices_and_stops_cleanly(tmp_path: Path) -> None:
    """What `make run` does: no config, its own broker and local servers for every protocol
    (Kaiko over gRPC; CoinAPI, Coinbase, Kraken, Binance and the simulator over WebSocket)."""
    daemon = DaemonProcess(tmp_path, None, live=True)
    try:
        wait_for(lambda: "kafka" in daemon.stdout(), 30, "the start-up announcement")
        port = daemon.stdout().split("kafka", 1)[1].split()[0].rsplit(":", 1)[1]

        def all_priced() -> bool:
            """The last live-view block shows a fair price for every instrument, and the
            instruments with several providers get them from several sources."""
            block = daemon.stdout().rsplit("fairfeed  up", 1)[-1].splitlines()[3:]
            prices = {
                line.split()[0]: int(line.split("sources")[1].split()[0])
                for line in block
                if "sources" in line
            }
            return prices.keys() == {"BTC-USD", "ETH-USD", "BTC-USDT"} and min(prices.values()) >= 3

        wait_for(all_priced, 60, "live fair prices for every instrument", interval=0.2)
        daemon.note_children()
        assert daemon.stop(signal.SIGINT) == 0, daemon.stderr()
        assert daemon.leftovers() == []
        # The broker started for the run is gone too.

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def test_sigkilled_supervisor_leaves_no_child_segment_or_broker(tmp_path: Path) -> None:
    """Even the hardest stop cleans up: children and the broker die with the supervisor
    (PDEATHSIG), and the resource tracker unlinks the segments the supervisor created."""
    daemon = DaemonProcess(tmp_path, None, live=True)
    try:
        wait_for(lambda: "sources 3" in daemon.stdout(), 60, "fair prices")
        port = daemon.stdout().split("kafka", 1)[1].split()[0].rsplit(":", 1)[1]
        kids = daemon.note_children()
        assert len(kids) >= 4  # simulators, 2 ingest workers, compute (+ tracker, broker)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        assert daemon.leftovers(grace=10.0) == []
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def test_malformed_frames_reach_the_dead_letter_topic_and_data_keeps_flowing(
    tmp_path: Path, kafka_broker
) -> None:
    bootstrap = kafka_broker.bootstrap
    sims = _simulators(rate=600, max_events=0)
    daemon = DaemonProcess(tmp_path, _config(tmp_path, sims, bootstrap, "dlq"))
    try:
        wait_for(lambda: _count(_tick_groups(bootstrap, "dlq.ticks")) > 0, 30, "first ticks")
        bad = ['{"type":"batch","events":[{"e":"trade","s":"BTC-USD"}]}', "not json at all"]
        for raw in bad:
            assert sims.inject(raw, 1) >= 1  # sim-b, on every connection it has
        letters = wait_for(
            lambda: [orjson.loads(v) for v in _messages(bootstrap, "fairfeed.deadletter")],
            20,
            "dead letters",
        )
        before = _count(_tick_groups(bootstrap, "dlq.ticks"))
        wait_for(lambda: _count(_tick_groups(bootstrap, "dlq.ticks")) > before, 10, "more ticks")
        assert daemon.stop() == 0, daemon.stderr()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        sims.stop()
    frames = {m["frame"] for m in letters}
    assert set(bad) <= frames
    for m in letters:
        assert m["schema"] == 1 and m["type"] == "dead_letter" and m["provider"] == "sim-b"
        assert m["error"] and m["size"] == len(m["frame"]) and m["truncated"] is False
