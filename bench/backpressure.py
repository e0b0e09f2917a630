"""Ring overflow policies under a steady load: share of records dropped with a small ring.

``python -m bench.backpressure [--seconds S] [--rate R] [--capacity C] [--timeout-ms T]``

One local Binance server (its own thread and loop) streams ``rate`` events/s (half quotes, so
~1.5 records per event) to the real Binance adapter; the records go through one of the
policies into a ``capacity``-record shared-memory ring that a forked consumer process drains
like compute does (whatever is there, up to 4096 a pass; 0.5 ms sleep when empty; ~0.2 µs per
record; a 5–15 ms hiccup every ~200 passes, as a Kafka flush or a GC pause would). For each
policy: records emitted, dropped, drop %, the event loop's worst lag and the server's pongs.

* ``old`` — the former ``Ring.write``: a batch that does not fit waits, sleeping 0.2 ms in the
  event loop, up to ``block_timeout``, then what does not fit is dropped;
* ``new`` — the worker's :class:`~fairfeed.daemon.backpressure.RingWriter`: hold back, pause
  reading, retry on a loop timer, drop only after ``block_timeout`` of pause.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable

import numpy as np

from fairfeed.core.config import ProviderConfig, SimulatorConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.options import BinanceOptions
from fairfeed.core.records import CLASS_SPOT, RECORD_DTYPE
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.daemon.backpressure import RingWriter
from fairfeed.ipc.ring import OverflowPolicy, Ring
from fairfeed.local.binance import BinanceServer
from fairfeed.local.thread import LoopThread
from fairfeed.providers.base import IngestContext
from fairfeed.providers.binance.adapter import BinanceAdapter

PRICES = {"BTC-USDT": 64000.0, "ETH-USDT": 3000.0, "SOL-USDT": 150.0, "XRP-USDT": 0.5}
REGISTRY = Registry.build([(s, CLASS_SPOT) for s in PRICES], [("binance", "binance")])
POLICIES = ("old", "new")


def _consume(ring: Ring, stop, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Forked child: compute's reading pattern on the inherited ring mapping."""
    out = np.empty(4096, RECORD_DTYPE)
    rng = random.Random(seed)
    passes = 0
    while not stop.is_set():
        k = ring.read_into(out)
        passes += 1
        if not k:
            time.sleep(0.0005)
        else:
            time.sleep(k * 2e-7)
        if passes % 200 == 0:
            time.sleep(rng.uniform(0.005, 0.015))


def old_emit(ring: Ring, counters: DictCounters, timeout: float) -> Callable[[np.ndarray], None]:
    """The former policy: wait in the event loop (0.2 ms sleeps) up to ``timeout``, then drop."""

    def emit(records: np.ndarray) -> None:
        n = len(records)
        if ring.free() < n and timeout > 0:
            deadline = time.monotonic() + timeout
            while ring.free() < n and time.monotonic() < deadline:
                time.sleep(0.0002)
        k = ring.write(records)
        ring.count_dropped(n - k)
        counters.add(Slot.RECORDS_OUT, k)
        counters.add(Slot.RING_DROPPED, n - k)

    return emit


async def _run_policy(url: str, ring: Ring, policy: str, timeout: float, seconds: float) -> dict:
    counters = DictCounters()
    emitted = 0
    adapter: BinanceAdapter | None = None
    writer: RingWriter | None = None
    if policy == "new":
        writer = RingWriter(
            ring,
            counters,
            OverflowPolicy(block_timeout=timeout),
            lambda: adapter.pause_reading(),  # type: ignore[union-attr]
            lambda: adapter.resume_reading(),  # type: ignore[union-attr]
        )
        inner = writer.emit
    else:
        inner = old_emit(ring, counters, timeout)

    def emit(records: np.ndarray) -> None:
        nonlocal emitted
        emitted += len(records)
        inner(records)

    provider = ProviderConfig(
        name="binance", kind="binance", venue="binance", url=url, stale_after=10.0,
        options=BinanceOptions(),
    )  # fmt: skip
    subs = tuple(Subscription.resolve(REGISTRY, "binance", "binance", i, "spot") for i in PRICES)
    adapter = BinanceAdapter(IngestContext(provider, url, subs, REGISTRY, emit, counters))
    loop = asyncio.get_running_loop()
    worst = 0.0

    async def lag() -> None:
        nonlocal worst
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            worst = max(worst, now - last - 0.005)
            last = now

    task = asyncio.create_task(adapter.run())
    ticker = asyncio.create_task(lag())
    await asyncio.sleep(seconds)  # the measured window: a fixed load for a fixed time
    await adapter.close()
    await task
    if writer is not None:
        await writer.drain()
        writer.close()
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    dropped = counters[Slot.RING_DROPPED]
    return {
        "policy": policy,
        "emitted": emitted,
        "dropped": dropped,
        "drop_pct": 100.0 * dropped / emitted if emitted else 0.0,
        "worst_loop_lag_ms": worst * 1000,
        "pauses": writer.pauses if writer else 0,
        "reconnects": counters[Slot.RECONNECTS],
    }


def run(
    policy: str, *, seconds: float = 5.0, rate: float = 5000.0, capacity: int = 64,
    timeout_ms: float = 50.0, seed: int = 1,
) -> dict:  # fmt: skip
    """One policy against a fresh server, ring and consumer; the figures as a dict."""
    cfg = SimulatorConfig(prices=PRICES, rate=rate, quote_ratio=0.5, seed=seed)
    server = BinanceServer("binance", cfg)
    ring = Ring.create(f"ffbench-bp-{os.getpid()}-{policy}", capacity)
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    consumer = ctx.Process(target=_consume, args=(ring, stop, seed), daemon=True)
    consumer.start()
    try:
        with LoopThread(server).start():
            result = asyncio.run(_run_policy(server.url, ring, policy, timeout_ms / 1000, seconds))
            result["pongs"] = server.pongs
            result["pong_timeouts"] = server.pong_timeouts
    finally:
        stop.set()
        consumer.join(5)
        if consumer.is_alive():
            consumer.kill()
        ring.close()
        ring.unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s from the server")
    ap.add_argument("--capacity", type=int, default=64, help="ring records")
    ap.add_argument("--timeout-ms", type=float, default=50.0, help="block_timeout_ms")
    args = ap.parse_args()
    print(
        f"ring {args.capacity} records, {args.rate:g} events/s, block_timeout "
        f"{args.timeout_ms:g} ms, {args.seconds:g} s per run"
    )
    print(f"{'policy':<10}{'emitted':>10}{'dropped':>10}{'drop %':>9}{'loop lag ms':>13}"
          f"{'pauses':>8}")  # fmt: skip
    for policy, timeout in (("old", args.timeout_ms), ("old", 0.0), ("new", args.timeout_ms)):
        r = run(policy, seconds=args.seconds, rate=args.rate, capacity=args.capacity,
                timeout_ms=timeout)  # fmt: skip
        label = f"{policy} {timeout:g}"
        print(f"{label:<10}{r['emitted']:>10}{r['dropped']:>10}{r['drop_pct']:>9.2f}"
              f"{r['worst_loop_lag_ms']:>13.1f}{r['pauses']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
