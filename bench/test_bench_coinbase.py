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
