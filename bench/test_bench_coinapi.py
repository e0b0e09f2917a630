"""CoinAPI parser cost, µs per message.

Run: ``.venv/bin/pytest bench/test_bench_coinapi.py --benchmark-only -s``. The messages are what
the local CoinAPI server sends (its own formatting: 7-digit timestamps, 9-decimal numbers, a
trade ``uuid``), over four symbols of three venues; ``us_per_msg`` and ``us_per_record`` land in
``extra_info``. Mixes: ``trade`` (1 record each), ``quote`` (2 records each), ``mixed`` (half and
half, the usual trade + quote subscription).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import CLASS_PERPETUAL, CLASS_SPOT, empty_records
from fairfeed.local.coinapi import CoinApiServer
from fairfeed.providers.coinapi.parse import CoinApiParser

SYMBOLS = {
    "COINBASE_SPOT_BTC_USD": (0, 1, CLASS_SPOT),
    "KRAKEN_SPOT_BTC_USD": (0, 2, CLASS_SPOT),
    "COINBASE_SPOT_ETH_USD": (1, 1, CLASS_SPOT),
    "BINANCE_PERP_BTC_USDT": (2, 3, CLASS_PERPETUAL),
}
N = 4000
TS = 1_786_309_548_000_000_000


def _messages(quote_ratio: float) -> list[bytes]:
    cfg = SimulatorConfig(prices=dict.fromkeys(SYMBOLS, 100.0), quote_ratio=quote_ratio, seed=5)
    server = CoinApiServer("bench", cfg)
    conn = SimpleNamespace(state={"types": {"trade", "quote"}})
    events = server.market.events(list(range(len(SYMBOLS))), N)
    return [m.encode() for m in server.format_events(conn, events)]


@pytest.mark.parametrize(("mix", "quote_ratio"), [("trade", 0.0), ("quote", 1.0), ("mixed", 0.5)])
def test_parse(benchmark, mix, quote_ratio):
    msgs = _messages(quote_ratio)
    parser = CoinApiParser(SYMBOLS, provider=1)
    out = empty_records(3 * N)

    def run():
        parser.reset()
        n = 0
        for m in msgs:
            r = parser.parse(m, out, n, TS)
            assert r > 0, parser.error
            n += r
        return n

    records = benchmark(run)
    per_pass = benchmark.stats.stats.median
    benchmark.extra_info["messages"] = len(msgs)
    benchmark.extra_info["records"] = records
    benchmark.extra_info["us_per_msg"] = per_pass / len(msgs) * 1e6
    benchmark.extra_info["us_per_record"] = per_pass / records * 1e6
    us_msg, us_rec = per_pass / len(msgs) * 1e6, per_pass / records * 1e6
    print(f"\ncoinapi {mix:6s}: {len(msgs)} msgs, {records} records, {us_msg:.2f} µs/msg, "
          f"{us_rec:.2f} µs/record")  # fmt: skip
