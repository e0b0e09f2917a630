"""What the metrics cost: the compute stage per record with metrics on vs off (same run), and one
scrape of /metrics at 1000 instruments × 5 sources.

Run: ``.venv/bin/pytest bench/test_bench_metrics.py --benchmark-only -s``. Per-record figures are
in each result's ``extra_info`` and printed; ``docs/metrics.md`` quotes them.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fairfeed.core import config as config_mod
from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE, empty_records
from fairfeed.core.subscriptions import Stream, SubscriptionSet
from fairfeed.daemon.compute import Pipeline
from fairfeed.daemon.metrics import FairfeedCollector, render_text
from fairfeed.daemon.run import build_registry
from fairfeed.daemon.supervisor import ChildSpec
from fairfeed.hotpath.metrics import N_HOPS, warm_metrics
from fairfeed.hotpath.warmup import warm_up
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.counters import SlotCounters
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.ipc.ring import Ring
from fairfeed.ipc.streams import StreamBoard

N_INSTRUMENTS = 1000
N_PROVIDERS = 5
BATCH = 4096
NOW = 1_700_000_000 * 1_000_000_000


def _config() -> config_mod.Config:
    insts = ", ".join(f'"I{i}-USD"' for i in range(N_INSTRUMENTS))
    parts = [
        "[daemon]\nmax_instruments = 2048\nmax_sources = 16\n",
        "[anomalies]\nenabled = false\n",
    ]
    for p in range(N_PROVIDERS):
        parts.append(
            f'[[providers]]\nname = "p{p}"\nkind = "simulator"\nvenue = "V{p}"\n'
            f'url = "ws://127.0.0.1:1"\n[[subscriptions]]\nprovider = "p{p}"\n'
            f"instruments = [{insts}]\n"
        )
    return config_mod.loads("\n".join(parts))


class _NullSink:
    def produce(self, topic, key, value, on_delivery=None) -> bool:
        return True


def _batch(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    recs = empty_records(n)
    recs["instrument"] = rng.integers(0, N_INSTRUMENTS, n)
    recs["provider"] = rng.integers(0, N_PROVIDERS, n)
    recs["venue"] = recs["provider"]
    recs["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK], n)
    recs["price"] = 100.0 + rng.standard_normal(n)
    recs["size"] = 1.0
    recs["ts_exchange"] = NOW - 50_000_000
    recs["ts_provider"] = NOW - 20_000_000
    recs["ts_receive"] = NOW - rng.integers(0, 1_000_000, n)
    return recs


@pytest.fixture(scope="module")
def segments():
    warm_up()
    warm_metrics()
    cfg = _config()
    d = cfg.daemon
    tag = f"ffbench-{os.getpid()}"
    control = ControlBlock.create(f"{tag}-control", 2, d.max_instruments)
    streams = StreamBoard.create(f"{tag}-streams", d.max_instruments, d.max_sources)
    board = MetricsBoard.create(f"{tag}-metrics", d.max_instruments, d.max_sources)
    ring = Ring.create(f"{tag}-ring", 1 << 14)
    yield SimpleNamespace(cfg=cfg, control=control, streams=streams, board=board, ring=ring)
    for seg in (control, streams, board, ring):
        seg.close()
        seg.unlink()


@pytest.mark.parametrize("metrics", ["off", "on"])
def test_compute_per_record(benchmark, segments, metrics):
    """``Pipeline.process`` of one 4096-record batch read from a ring (kernels, encode, a null
    producer), with and without the metrics board."""
    s = segments
    registry = build_registry(s.cfg)
    board = s.board if metrics == "on" else None
    pipe = Pipeline(
        s.cfg, registry, _NullSink(), s.control, SlotCounters(s.control, 0), s.streams, board
    )
    recs = _batch(BATCH)
    buf = empty_records(BATCH)

    def setup():
        for k in range(0, BATCH, 64):  # 64 writes: 64 publish stamps to walk
            s.ring.write(recs[k : k + 64])
        assert s.ring.read_into(buf) == BATCH
        return (buf, s.ring), {}

    benchmark.pedantic(pipe.process, setup=setup, rounds=60, warmup_rounds=3)
    us = benchmark.stats.stats.mean * 1e6
    benchmark.extra_info["us_per_record"] = us / BATCH
    print(f"\nmetrics {metrics}: {us:.0f} µs per batch, {us / BATCH * 1000:.1f} ns per record")


def test_metrics_kernel_per_record(benchmark, segments):
    """The metrics work alone: ``MetricsBoard.update`` + ``batch_done`` per 4096-record batch."""
    s = segments
    registry = build_registry(s.cfg)
    table = np.full((N_PROVIDERS, 16), -1, np.int32)
    for sid, (p, v) in enumerate(registry.sources):
        table[p, v] = sid
    recs = _batch(BATCH)
    buf = empty_records(BATCH)
    offsets = NOW - recs["ts_receive"]  # 0-1 ms

    def setup():
        now = time.time_ns()  # realistic hop values: receive 0-1 ms before the ring write
        recs["ts_receive"] = now - offsets
        recs["ts_provider"] = now - 20_000_000
        recs["ts_exchange"] = now - 50_000_000
        for k in range(0, BATCH, 64):
            s.ring.write(recs[k : k + 64])
        tail0 = s.ring.read_count
        s.ring.read_into(buf)
        return (tail0,), {}

    def work(tail0):
        s.board.update(buf, table, time.time_ns(), s.ring, tail0)
        s.board.batch_done(1000)

    benchmark.pedantic(work, setup=setup, rounds=200, warmup_rounds=3)
    us = benchmark.stats.stats.mean * 1e6
    benchmark.extra_info["us_per_record"] = us / BATCH
    print(f"\nmetrics kernel: {us:.1f} µs per batch, {us / BATCH * 1000:.1f} ns per record")


@pytest.mark.parametrize("writer", ["render_text", "generate_latest"])
def test_scrape_1000_instruments_5_sources(benchmark, segments, writer):
    """One full exposition at 1000 instruments × 5 sources: the daemon's ``render_text`` and
    prometheus_client's ``generate_latest`` (same output)."""
    s = segments
    registry = build_registry(s.cfg)
    n_src = len(registry.sources)
    rng = np.random.default_rng(3)
    s.streams.count[:N_INSTRUMENTS, :n_src] = rng.integers(1, 10**6, (N_INSTRUMENTS, n_src))
    s.streams.last_ts[:N_INSTRUMENTS, :n_src] = NOW
    s.board.price[:N_INSTRUMENTS, :n_src] = 100.0
    s.control.fair_price[:N_INSTRUMENTS] = 100.0
    s.board.hist[:n_src, :N_HOPS, 3] = 10
    live = SubscriptionSet(
        Stream(registry.providers[p], registry.venues[v], inst, "spot")
        for p, v in registry.sources
        for inst in registry.instruments
    )
    children = [ChildSpec(name, i, lambda: 0) for i, name in enumerate(["ingest-0", "compute"])]
    rt = SimpleNamespace(
        cfg=s.cfg,
        registry=registry,
        book=SimpleNamespace(live=live),
        control=s.control,
        streams=s.streams,
        rings=[s.ring],
        workers=[SimpleNamespace(name="ingest-0")],
        children=children,
        supervisor=None,
    )
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FairfeedCollector(rt, s.board, max_series=10000))
    body = generate_latest(reg)  # the rate window starts
    fn = render_text if writer == "render_text" else generate_latest
    body = benchmark.pedantic(fn, args=(reg,), rounds=10, warmup_rounds=1)
    lines = sum(1 for ln in body.splitlines() if not ln.startswith(b"#"))
    ms = benchmark.stats.stats.mean * 1e3
    benchmark.extra_info["samples"] = lines
    benchmark.extra_info["bytes"] = len(body)
    print(f"\nscrape ({writer}): {ms:.1f} ms for {lines} samples ({len(body) / 1e6:.2f} MB)")
    assert lines > N_INSTRUMENTS * n_src * 4
