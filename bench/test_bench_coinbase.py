"""Coinbase parser cost on real captured frames (µs per message).

Run: ``.venv/bin/pytest bench/test_bench_coinbase.py --benchmark-only -s``. Each benchmark parses
a fixed list of real frames from tests/data/captures (one frame = one message on
Coinbase); ``us_per_msg`` and ``us_per_record`` land in ``extra_info``.

Message mixes:

* ``data``: the messages that make records (Exchange: match, last_match, ticker; Advanced
  Trade: market_trades updates, ticker, heartbeats), what a trades + ticker subscription gets;
* ``all``: every received frame of the capture, including the level-2 traffic the parsers skip
  (Exchange: 97 % l2update; Advanced Trade: 75 % l2_data).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fairfeed.core.records import CLASS_SPOT, empty_records
from fairfeed.local.capture import received
from fairfeed.providers.coinbase.parse import AdvancedTradeParser, ExchangeFeedParser

CAPTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "captures"
TS = 1_786_309_548_000_000_000


def _frames(name: str, mix: str) -> list[bytes]:
    frames = [t for _, t in received(CAPTURES / name)[1]]
    if mix == "data":
        keep = []
        for t in frames:
            m = json.loads(t)
            if m.get("type") in ("match", "last_match", "ticker") or (
                m.get("channel") in ("ticker", "heartbeats")
                or (m.get("channel") == "market_trades" and m["events"][0]["type"] == "update")
            ):
                keep.append(t)
        # Renumber Advanced Trade's per-connection sequence_num, or the skipped messages
        # would read as gaps and add GAP records.
        frames = [
            re.sub(r'"sequence_num":\d+', f'"sequence_num":{i}', t) for i, t in enumerate(keep)
        ]
    return [t.encode() for t in frames]


def _parser(kind: str, frames: list[bytes]):
    products = set()
    for t in frames:
        m = json.loads(t)
        products.add(m.get("product_id"))
        for e in m.get("events", ()):
            products.update(x["product_id"] for x in [*e.get("trades", []), *e.get("tickers", [])])
    ids = {p: i for i, p in enumerate(sorted(products - {None}))}
    cls = ExchangeFeedParser if kind == "exchange" else AdvancedTradeParser
    return cls(ids, 1, 2, CLASS_SPOT)


@pytest.mark.parametrize("mix", ["data", "all"])
@pytest.mark.parametrize(
    ("kind", "capture"),
    [("exchange", "COINBASE.ws.28.0"), ("advanced", "COINBASE.jsonl.zst")],
)
def test_parse_capture(benchmark, kind, capture, mix):
    frames = _frames(capture, mix)
    parser = _parser(kind, frames)
    out = empty_records(4096)

    def run():
        parser.reset()
        n = 0
        for f in frames:
            r = parser.parse(f, out, 0, TS)
            assert r >= -2, parser.error  # records, HEARTBEAT or CONTROL, never an error
            if r > 0:
                n += r
        return n

    records = benchmark(run)
    per_pass = benchmark.stats.stats.median
    benchmark.extra_info["messages"] = len(frames)
    benchmark.extra_info["records"] = records
    benchmark.extra_info["us_per_msg"] = per_pass / len(frames) * 1e6
    if records:
        benchmark.extra_info["us_per_record"] = per_pass / records * 1e6
    print(
        f"\n{kind:8s} {mix:4s}: {len(frames)} msgs, {records} records, "
        f"{per_pass / len(frames) * 1e6:.2f} µs/msg"
    )


def _frames_of_50() -> list[bytes]:
    """The local Advanced Trade server's market_trades messages of 50 trades each (one
    product: each frame is one run of its trades), bench/e2e.py's coinbase shape."""
    from fairfeed.core.config import SimulatorConfig
    from fairfeed.local.coinbase import SEQ_MARK, CoinbaseServer

    srv = CoinbaseServer("c", SimulatorConfig(prices={"BTC-USD": 64000.0}, quote_ratio=0.0,
                                              seed=1), feed="advanced")  # fmt: skip
    conn = type("C", (), {"state": {"channels": {"market_trades": {0}}}})()
    texts = []
    for _ in range(40):
        texts += srv.format_events(conn, srv.market.events([0], 50))
    return [t.replace(SEQ_MARK, str(i), 1).encode() for i, t in enumerate(texts)]


@pytest.mark.parametrize("path", ["scanner", "msgspec"])
def test_parse_50_trade_frames(benchmark, path):
    """One ``market_trades`` frame of 50 trades at a time: the parser as the ingest worker
    calls it (the Numba scanner first) against the msgspec decode alone (its reference)."""
    frames = _frames_of_50()
    parser = AdvancedTradeParser({"BTC-USD": 1}, 1, 2, CLASS_SPOT)
    parse = parser.parse if path == "scanner" else parser.parse_msgspec
    out = empty_records(64)

    def run():
        parser.reset()
        n = 0
        for f in frames:
            r = parse(f, out, 0, TS)
            assert r == 50, parser.error
            n += r
        return n

    records = benchmark(run)
    per_pass = benchmark.stats.stats.median
    benchmark.extra_info["messages"] = len(frames)
    benchmark.extra_info["records"] = records
    benchmark.extra_info["us_per_msg"] = per_pass / len(frames) * 1e6
    benchmark.extra_info["us_per_record"] = per_pass / records * 1e6
    print(f"\n{path:8s} 50-trade frames: {per_pass / records * 1e9:.0f} ns/record, "
          f"{per_pass / len(frames) * 1e6:.2f} µs/msg")  # fmt: skip
