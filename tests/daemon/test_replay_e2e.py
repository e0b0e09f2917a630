"""`fairfeed replay` end to end: the real daemon plays a capture with 1 and 2 ingest workers,
stops by itself, and every recorded record reaches the ticks topic exactly once. `fairfeed
record` against a local server, replayed, gives the same records."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fairfeed.core.config import load
from fairfeed.core.records import MAX_MARKET_KIND, empty_records
from fairfeed.core.subscriptions import Subscription
from fairfeed.daemon.run import build_registry
from fairfeed.kafka.broker import read_topic
from fairfeed.kafka.encode import decode_ticks_records
from fairfeed.local.capture import received
from fairfeed.providers.coinbase.parse import ExchangeFeedParser

CAPTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "captures"
EXCHANGE = CAPTURES / "COINBASE.ws.28.0"
FIELDS = ("ts_exchange", "price", "size", "sequence", "instrument", "kind", "side")

pytestmark = pytest.mark.slow


def _products() -> list[str]:
    _, frames = received(EXCHANGE)
    return sorted({json.loads(t).get("product_id") for _, t in frames} - {None})


def _config(tmp_path: Path, workers: int, bootstrap: str = "", tag: str = "r") -> Path:
    insts = ", ".join(f'"{p}"' for p in _products())
    kafka = (
        f'[kafka]\nbootstrap = "{bootstrap}"\ncreate_topics = true\nticks_topic = "{tag}.ticks"\n'
        f'fair_topic = "{tag}.fair"\nanomalies_topic = "{tag}.anomalies"\n'
        if bootstrap
        else ""
    )
    path = tmp_path / "replay.toml"
    path.write_text(
        f"[daemon]\nworkers = {workers}\nheartbeat_interval = 0.1\n{kafka}"
        '[[providers]]\nname = "cb"\nkind = "coinbase"\nvenue = "COINBASE"\n'
        f'[providers.replay]\ncapture = "{EXCHANGE}"\n'
        f'[[subscriptions]]\nprovider = "cb"\ninstruments = [{insts}]\n'
    )
    return path


def _replay(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fairfeed", "replay", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def _parsed(config: Path, capture: Path, parser_class: type, **variant) -> collections.Counter:
    """The capture's market records, parsed directly by the provider's parser."""
    cfg = load(config)
    registry = build_registry(cfg)
    p = next(q for q in cfg.providers)
    subs = [
        Subscription.resolve(registry, p.name, s.venue, s.instrument, s.data_class)
        for s in cfg.streams()
    ]
    parser = parser_class.for_subscriptions(subs, **variant)
    out = empty_records(4096)
    got: collections.Counter = collections.Counter()
    for _, text in received(capture)[1]:
        n = parser.parse(text.encode(), out, 0, 1)
        for r in out[: max(n, 0)]:
            if r["kind"] <= MAX_MARKET_KIND:
                got[tuple(r[f].item() for f in FIELDS)] += 1
    return got


def _published(bootstrap: str, topic: str, config: Path) -> collections.Counter:
    registry = build_registry(load(config))
    got: collections.Counter = collections.Counter()
    for msg in read_topic(bootstrap, topic, group="replay-e2e"):
        for r in decode_ticks_records(msg.value(), registry):
            got[tuple(r[f].item() for f in FIELDS)] += 1
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_replay_publishes_every_record_once(tmp_path, kafka_broker, kafka_topic, workers):
    config = _config(tmp_path, workers, kafka_broker.bootstrap, kafka_topic)
    done = _replay(str(EXCHANGE), "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    got = _published(kafka_broker.bootstrap, f"{kafka_topic}.ticks", config)
    expected = _parsed(config, EXCHANGE, ExchangeFeedParser, trade_sequence=True)
    assert sum(expected.values()) == 311  # 97 trades (last_match is history), 107 bids, 107 asks
    assert got == expected


def test_replay_without_broker_writes_json(tmp_path):
    out = tmp_path / "result.json"
    done = _replay(str(EXCHANGE), "--config", str(_config(tmp_path, 2)), "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    # a fair price per product that traded live (a last_match alone is history, not a trade)
    _, frames = received(EXCHANGE)
    traded = {m["product_id"] for m in map(json.loads, (t for _, t in frames))
              if m.get("type") == "match"}  # fmt: skip
    assert set(summary["fair_status"]) == traded
    assert all(sum(c.values()) >= 1 for c in summary["fair_status"].values())
    assert isinstance(summary["anomalies"], list)


def test_replay_bad_capture_is_a_message(tmp_path):
    bad = tmp_path / "x.ws.1"
    bad.write_text("garbage line\n")
    done = _replay(str(bad))
    assert done.returncode == 2
    assert "not a readable capture" in done.stderr and "Traceback" not in done.stderr
    done = _replay(str(tmp_path / "missing.jsonl.zst"))
    assert done.returncode == 2 and "no such capture file" in done.stderr


def test_record_then_replay_round_trip(tmp_path, kafka_broker, kafka_topic):
    """Record a local Binance server over loopback, replay the recording through the daemon
    (2 workers): the records published are those parsed from the recording, once each."""
    from fairfeed.core.config import SimulatorConfig
    from fairfeed.daemon.record import record
    from fairfeed.local.binance import BinanceServer
    from fairfeed.local.thread import LoopThread
    from fairfeed.providers.binance.parse import BinanceParser

    prices = {"BTC-USDT": 60000.0, "ETH-USDT": 3000.0}
    server = BinanceServer("bn", SimulatorConfig(prices=prices, rate=200.0, seed=3))
    with LoopThread(server).start():
        live = tmp_path / "live.toml"
        live.write_text(
            '[[providers]]\nname = "bn"\nkind = "binance"\nvenue = "BINANCE"\n'
            f'url = "{server.url}"\n'
            '[[subscriptions]]\nprovider = "bn"\ninstruments = ["BTC-USDT", "ETH-USDT"]\n'
        )
        capture = tmp_path / "bn.jsonl.zst"
        frames = record(load(live), capture, 2.0)
    assert frames > 50
    _, recv = received(capture)
    assert len(recv) == frames and (np.diff([t for t, _ in recv]) >= 0).all()
    replay_cfg = tmp_path / "replay-bn.toml"
    replay_cfg.write_text(
        f'[daemon]\nworkers = 2\n[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\n'
        "create_topics = true\n"
        f'ticks_topic = "{kafka_topic}.ticks"\nfair_topic = "{kafka_topic}.fair"\n'
        f'anomalies_topic = "{kafka_topic}.anomalies"\n'
        '[[providers]]\nname = "bn"\nkind = "binance"\nvenue = "BINANCE"\n'
        f'[providers.replay]\ncapture = "{capture}"\n'
        '[[subscriptions]]\nprovider = "bn"\ninstruments = ["BTC-USDT", "ETH-USDT"]\n'
    )
    done = _replay(str(capture), "--config", str(replay_cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _parsed(replay_cfg, capture, BinanceParser, agg=False)
    assert sum(expected.values()) > 50
    assert _published(kafka_broker.bootstrap, f"{kafka_topic}.ticks", replay_cfg) == expected
