"""Binance and Kraken parser cost (µs per message), on messages in each venue's wire format.

Run: ``.venv/bin/pytest bench/test_bench_binance_kraken.py --benchmark-only -s``. The
messages are produced by the local servers' own formatters (``BinanceServer`` /
``KrakenServer.format_events``) over the shared random-walk market: the exact text a
connection carries, without the sockets. ``us_per_msg`` and ``us_per_record`` land in
``extra_info``.

Mixes: ``trades`` (trade stream / channel only), ``book`` (bookTicker / ticker only), ``mixed``
(half each). Kraken groups consecutive trades of one symbol into one message, so its trade
messages carry more than one record on average.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import CLASS_SPOT, empty_records
from fairfeed.local.binance import BinanceServer
from fairfeed.local.kraken import KrakenServer
from fairfeed.providers.binance.parse import BinanceParser
from fairfeed.providers.binance.symbols import stream_name
from fairfeed.providers.kraken.parse import KrakenParser
from fairfeed.providers.kraken.symbols import to_symbol

PRICES = {"BTC-USDT": 64000.0, "ETH-USDT": 3000.0, "SOL-USDT": 150.0, "XRP-USDT": 0.5}
RATIO = {"trades": 0.0, "book": 1.0, "mixed": 0.5}
N = 4000
TS = 1_786_309_548_000_000_000


def _binance(feed: str, mix: str) -> tuple[list[bytes], BinanceParser]:
    cfg = SimulatorConfig(prices=PRICES, quote_ratio=RATIO[mix], seed=7)
    server = BinanceServer("b", cfg)
    streams = {stream_name(s, k) for s in PRICES for k in (feed, "bookTicker")}
    # the local server's per-connection state: what it serves (every stream kind on spot)
    state = {"streams": streams, "combined": True, "pushed": frozenset((feed, "bookTicker"))}
    conn = SimpleNamespace(state=state)
    msgs = server.format_events(conn, server.market.events(list(range(len(PRICES))), N))
    ids = {stream_name(s, k): i for i, s in enumerate(PRICES) for k in (feed, "bookTicker")}
    return [m.encode() for m in msgs], BinanceParser(ids, 1, 2, CLASS_SPOT, agg=feed == "aggTrade")


def _kraken(mix: str) -> tuple[list[bytes], KrakenParser]:
    cfg = SimulatorConfig(prices=PRICES, quote_ratio=RATIO[mix], seed=7)
    server = KrakenServer("k", cfg)
    everything = set(range(len(PRICES)))
    conn = SimpleNamespace(state={"channels": {"trade": everything, "ticker": everything}})
    msgs = server.format_events(conn, server.market.events(list(everything), N))
    ids = {to_symbol(s): i for i, s in enumerate(PRICES)}
    return [m.encode() for m in msgs], KrakenParser(ids, 1, 2, CLASS_SPOT)


@pytest.mark.parametrize("mix", ["trades", "book", "mixed"])
@pytest.mark.parametrize("kind", ["binance-trade", "binance-aggTrade", "kraken"])
def test_parse(benchmark, kind, mix):
    if kind == "kraken":
        frames, parser = _kraken(mix)
    else:
        frames, parser = _binance(kind.split("-")[1], mix)
    out = empty_records(8192)

    def run():
        n = 0
        for f in frames:
            r = parser.parse(f, out, 0, TS)
            assert r > 0, parser.error
            n += r
        return n

    records = benchmark(run)
    per_pass = benchmark.stats.stats.median
    benchmark.extra_info["messages"] = len(frames)
    benchmark.extra_info["records"] = records
    benchmark.extra_info["us_per_msg"] = per_pass / len(frames) * 1e6
    benchmark.extra_info["us_per_record"] = per_pass / records * 1e6
    print(
        f"\n{kind:16s} {mix:6s}: {len(frames)} msgs, {records} records, "
        f"{per_pass / len(frames) * 1e6:.2f} µs/msg, {per_pass / records * 1e6:.2f} µs/record"
    )
