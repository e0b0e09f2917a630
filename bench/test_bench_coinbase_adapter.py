"""Coinbase adapter end to end: socket → picows → parser → records → ``ctx.emit`` (µs/message).

Run: ``.venv/bin/pytest bench/test_bench_coinbase_adapter.py --benchmark-only -s``.

The messages are the local CoinbaseServer's own (``match`` + ``ticker`` on the Exchange feed,
``market_trades`` + ``ticker`` on Advanced Trade), generated once, then played as fast as
possible by a ReplayServer in a *forked child process*, so the server's CPU does not count.
The figure is the adapter process's CPU time (``time.process_time``) from connect to the last
message, divided by the messages: what one ingest worker spends per Coinbase message. The
wall-clock rate is in ``extra_info`` too (bounded by the Python replay server).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import numpy as np
import pytest

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.records import CLASS_CODES
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.local.coinbase import SEQ_MARK, CoinbaseServer
from fairfeed.local.replay import ReplayServer
from fairfeed.local.wsserver import Conn
from fairfeed.providers.base import IngestContext
from fairfeed.providers.coinbase.adapter import CoinbaseAdapter

PRICES = {"BTC-USD": 64000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0, "XRP-USD": 0.5}
EVENTS = 40_000
REGISTRY = Registry.build([(s, CLASS_CODES["spot"]) for s in PRICES], [("coinbase", "COINBASE")])


def _frames(feed: str) -> list[str]:
    """The server's messages for EVENTS events on every product, subscription answers first."""
    cfg = SimulatorConfig(prices=PRICES, quote_ratio=0.5, seed=1)
    srv = CoinbaseServer("coinbase", cfg, feed=feed)

    class _Ws:
        request = None

    conn = Conn(_Ws(), 0)  # type: ignore[arg-type]
    idx = list(range(len(PRICES)))
    if feed == "exchange":
        conn.state["channels"] = {"matches": set(idx), "ticker": set(idx)}
        out = ['{"type":"subscriptions","channels":[]}']
    else:
        conn.state["channels"] = {"market_trades": set(idx), "ticker": set(idx)}
        out = [srv._at("subscriptions", '{"subscriptions":{}}') for _ in range(3)]
    for _ in range(EVENTS // 1000):
        out += srv.format_events(conn, srv.market.events(idx, 1000))
    return [t.replace(SEQ_MARK, str(i), 1) for i, t in enumerate(out)]


def _serve(frames: list[str], port_q) -> None:
    async def main() -> None:
        async with ReplayServer([(0, t) for t in frames], speed=0, keep_open=True) as srv:
            port_q.put(srv.port)
            await asyncio.Event().wait()

    asyncio.run(main())


def _run_once(feed: str, url: str, n_frames: int) -> tuple[float, float, int]:
    counters = DictCounters()
    emitted = [0]

    def emit(records: np.ndarray) -> None:
        emitted[0] += len(records)

    provider = ProviderConfig(name="coinbase", kind="coinbase", venue="COINBASE", url=url,
                              feed=feed)  # fmt: skip
    subs = tuple(Subscription.resolve(REGISTRY, "coinbase", "COINBASE", i, "spot") for i in PRICES)
    ctx = IngestContext(provider, url, subs, REGISTRY, emit, counters)

    async def main() -> tuple[float, float]:
        adapter = CoinbaseAdapter(ctx)
        cpu0, t0 = time.process_time(), time.perf_counter()
        task = asyncio.create_task(adapter.run())
        end = time.monotonic() + 60
        while counters[Slot.FRAMES_IN] < n_frames:
            assert time.monotonic() < end, "the replay did not arrive"
            await asyncio.sleep(0.002)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        await adapter.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return cpu, wall

    cpu, wall = asyncio.run(main())
    assert counters[Slot.PARSE_ERRORS] == 0 and counters[Slot.GAPS] == 0
    return cpu, wall, counters[Slot.RECORDS_IN]


@pytest.mark.parametrize("feed", ["exchange", "advanced"])
def test_adapter_end_to_end(benchmark, feed):
    frames = _frames(feed)
    mp = multiprocessing.get_context("fork")
    port_q = mp.Queue()
    child = mp.Process(target=_serve, args=(frames, port_q), daemon=True)
    child.start()
    try:
        url = f"ws://127.0.0.1:{port_q.get(timeout=10)}"
        results = []
        benchmark.pedantic(
            lambda: results.append(_run_once(feed, url, len(frames))), rounds=3, iterations=1
        )
    finally:
        child.terminate()
        child.join(5)
    cpu, wall, records = min(results)
    benchmark.extra_info.update(
        messages=len(frames),
        records=records,
        us_per_msg=round(cpu / len(frames) * 1e6, 2),
        us_per_record=round(cpu / records * 1e6, 2),
        wall_msgs_per_s=round(len(frames) / wall),
    )
    print(f"\n{feed}: {benchmark.extra_info}")
