"""Kraken Futures parser cost (µs per message and per record), against the Kraken spot parser
measured in the same run on the same market events (the ratio is the figure to quote).

Run: ``.venv/bin/pytest bench/test_bench_kraken_futures.py --benchmark-only -s``. The messages
are the local servers' own formatters' output (``KrakenFuturesServer`` / ``KrakenServer``
``format_events``) over the shared random-walk market, without the sockets. A Kraken Futures
ticker carries six records (bid, ask, mark, index, funding, open interest), a spot v2 ticker
two.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import CLASS_PERPETUAL, CLASS_SPOT, empty_records
from fairfeed.local.kraken import KrakenServer
from fairfeed.local.kraken_futures import KrakenFuturesServer
from fairfeed.providers.kraken.parse import KrakenParser
from fairfeed.providers.kraken.symbols import to_symbol
from fairfeed.providers.kraken_futures.parse import KrakenFuturesParser, Product

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0, "XRP-USD": 0.5}
PERPS = {f"{k}-PERP": v for k, v in PRICES.items()}
RATIO = {"trades": 0.0, "book": 1.0, "mixed": 0.5}
N = 4000
TS = 1_786_309_548_000_000_000


def _spot(mix: str) -> tuple[list[bytes], KrakenParser]:
    server = KrakenServer("k", SimulatorConfig(prices=PRICES, quote_ratio=RATIO[mix], seed=7))
    everything = set(range(len(PRICES)))
    conn = SimpleNamespace(state={"channels": {"trade": everything, "ticker": everything}})
    msgs = server.format_events(conn, server.market.events(list(everything), N))
    ids = {to_symbol(s): i for i, s in enumerate(PRICES)}
    return [m.encode() for m in msgs], KrakenParser(ids, 1, 2, CLASS_SPOT)


def _futures(mix: str) -> tuple[list[bytes], KrakenFuturesParser]:
    cfg = SimulatorConfig(prices=PERPS, quote_ratio=RATIO[mix], seed=7)
    # half linear (PF_), half inverse (PI_): the inverse sizes divide by the price
    products = {"SOL-USD-PERP": "PI_SOLUSD", "XRP-USD-PERP": "PI_XRPUSD"}
    server = KrakenFuturesServer("kf", cfg, products=products)
    everything = set(range(len(PERPS)))
    conn = SimpleNamespace(state={"feeds": {"trade": everything, "ticker": everything}})
    msgs = server.format_events(conn, server.market.events(list(everything), N))
    table = {p: Product(i, CLASS_PERPETUAL, p[1] == "I", 1.0) for i, p in enumerate(server.wire)}
    return [m.encode() for m in msgs], KrakenFuturesParser(table, 1, 2)


def _pass(frames, parser, out) -> int:
    n = 0
    for f in frames:
        r = parser.parse(f, out, 0, TS)
        assert r > 0, parser.error
        n += r
    return n


@pytest.mark.parametrize("mix", ["trades", "book", "mixed"])
def test_parse(benchmark, mix):
    frames, parser = _futures(mix)
    spot_frames, spot = _spot(mix)
    out = empty_records(8192)
    # the baseline, alternating with the measured parser so both see the same machine load
    spot_t, fut_t = [], []
    for _ in range(15):
        t0 = time.perf_counter()
        spot_n = _pass(spot_frames, spot, out)
        t1 = time.perf_counter()
        _pass(frames, parser, out)
        t2 = time.perf_counter()
        spot_t.append(t1 - t0)
        fut_t.append(t2 - t1)
    records = benchmark(lambda: _pass(frames, parser, out))
    fut, base = statistics.median(fut_t), statistics.median(spot_t)
    info = {
        "messages": len(frames), "records": records,
        "us_per_msg": fut / len(frames) * 1e6, "us_per_record": fut / records * 1e6,
        "spot_us_per_msg": base / len(spot_frames) * 1e6,
        "spot_us_per_record": base / spot_n * 1e6,
    }  # fmt: skip
    info["ratio_per_record"] = info["us_per_record"] / info["spot_us_per_record"]
    benchmark.extra_info.update(info)
    print(
        f"\nkraken_futures {mix:6s}: {len(frames)} msgs, {records} records, "
        f"{info['us_per_msg']:.2f} µs/msg, {info['us_per_record']:.2f} µs/record; "
        f"kraken spot {info['spot_us_per_msg']:.2f} µs/msg, "
        f"{info['spot_us_per_record']:.2f} µs/record; per-record ratio "
        f"{info['ratio_per_record']:.2f}"
    )
