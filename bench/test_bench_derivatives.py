"""Derivatives data cost: the Binance USD-M parser per message (markPrice@1s, forceOrder against
aggTrade on the same parser), and the compute pass's derivatives path (filter, metrics board,
encoding) against the ticks encoding of the same pass.

Run: ``.venv/bin/pytest bench/test_bench_derivatives.py --benchmark-only``; ``us_per_msg`` /
``us_per_pass`` land in ``extra_info``. Judge them as ratios to the baselines of the same run
(``aggTrade`` messages; ``ticks`` of the pass).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from bench.test_bench_encode import make_batch
from fairfeed.core.config import SimulatorConfig
from fairfeed.core.counters import DictCounters
from fairfeed.core.records import (
    CLASS_PERPETUAL,
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    empty_records,
)
from fairfeed.core.registry import Registry
from fairfeed.daemon.derivatives import DerivativesPath
from fairfeed.hotpath.metrics import warm_metrics
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.kafka.collect import CollectSink
from fairfeed.kafka.encode import TickEncoder
from fairfeed.local.binance import BinanceServer
from fairfeed.providers.binance.parse import BinanceParser
from fairfeed.providers.binance.symbols import stream_name

PRICES = {"BTC-USDT-PERP": 64000.0, "ETH-USDT-PERP": 3000.0}
STREAMS = ("aggTrade", "markPrice@1s", "forceOrder")
TS = 1_786_309_548_000_000_000


def _frames() -> tuple[dict[str, list[bytes]], BinanceParser]:
    cfg = SimulatorConfig(prices=PRICES, quote_ratio=0.0, seed=7)
    server = BinanceServer("b", cfg, market="usdm", mark_interval=0.0, liquidation_every=1)
    streams = {stream_name(s, k, "usdm") for s in PRICES for k in STREAMS}
    state = {"streams": streams, "combined": True, "next_mark": {}, "pushed": frozenset(STREAMS)}
    conn = SimpleNamespace(state=state)
    msgs = server.format_events(conn, server.market.events(list(range(len(PRICES))), 2000))
    by: dict[str, list[bytes]] = {k: [] for k in STREAMS}
    for m in msgs:
        by[next(k for k in STREAMS if f'@{k}"' in m)].append(m.encode())
    ids = {stream_name(s, k, "usdm"): i for i, s in enumerate(PRICES) for k in STREAMS}
    return by, BinanceParser(ids, 1, 2, CLASS_PERPETUAL, agg=True)


@pytest.mark.parametrize("stream", STREAMS)
def test_parse(benchmark, stream: str) -> None:
    frames, parser = _frames()
    msgs = frames[stream]
    out = empty_records(3 * len(msgs) + 3)

    def run() -> int:
        n = 0
        for m in msgs:
            n += parser.parse(m, out, n, TS)
        return n

    n = benchmark(run)
    assert n >= len(msgs)
    benchmark.extra_info["us_per_msg"] = round(benchmark.stats.stats.median / len(msgs) * 1e6, 3)


REGISTRY = Registry.build(
    [("BTC-USD", CLASS_PERPETUAL), ("ETH-USD", CLASS_PERPETUAL), ("SOL-USD", CLASS_PERPETUAL)],
    [("sim-a", "ALPHAX"), ("sim-b", "BETAX"), ("sim-c", "GAMMAX")],
)


def _pass(n: int, derivatives: int) -> np.ndarray:
    """A compute pass of ``n`` market records with ``derivatives`` of them derivatives data."""
    rec = make_batch(n)
    rec["data_class"] = CLASS_PERPETUAL
    idx = np.linspace(0, n - 1, derivatives).astype(np.intp)
    rec["kind"][idx] = np.resize([KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_LIQUIDATION],
                                 derivatives)  # fmt: skip
    return rec


@pytest.mark.parametrize("size", [(32, 3), (4096, 16)])
@pytest.mark.parametrize("what", ["ticks", "derivatives"])
def test_pass(benchmark, what: str, size: tuple[int, int], tmp_path) -> None:
    """A pass of n records of which k are derivatives data: the ticks encoding of the pass (the
    baseline) or its derivatives path. (32, 3): a pass at ~28k records/s with one mark price
    (mark, index, funding); (4096, 16): a full pass."""
    warm_metrics()
    batch = _pass(*size)
    enc = TickEncoder(REGISTRY)
    board = MetricsBoard.create(f"ffbench-{os.getpid()}-deriv", 4096, 128)
    sink = CollectSink(tmp_path / "out", frozenset(), DictCounters())
    try:
        path = DerivativesPath(enc, sink, "d", board, REGISTRY.source_table())
        fn = (lambda: enc.ticks(batch)) if what == "ticks" else (lambda: path.process(batch))
        benchmark(fn)
        benchmark.extra_info["us_per_pass"] = round(benchmark.stats.stats.median * 1e6, 2)
        if what == "derivatives":
            assert not np.isnan(board.deriv[0]).all()
    finally:
        sink.close()
        board.close()
        board.unlink()
