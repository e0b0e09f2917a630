"""Fair-price methodology kernels at 10,000 instruments × 5 sources, against the old plain median.

Run: ``.venv/bin/pytest bench/test_bench_fair.py --benchmark-only -s``. Costs per record are in
each result's ``extra_info`` (``--benchmark-json`` keeps them) and printed with ``-s``:

- ``test_update``: the update kernel on a batch of 4096 records (trades and quotes, random
  instruments and sources), µs/record;
- ``test_compute``: one compute pass over the instruments a 4096-record batch made dirty (about
  3,400 of 10,000) and over all 10,000, µs/instrument;
- ``test_update_and_compute``: update + compute of one 4096-record batch, the per-record cost of
  the compute loop's fair-price work (target < 0.2 µs/record);
- ``test_update_and_compute_capacity``: the same with the arrays sized as the daemon sizes them
  (``max_sources`` = 128 source columns, 5 of them registered): the loops are bounded by the
  registered sources, but every instrument's row is 128 columns wide;
- ``test_latency``: records fed at 28,000/s in real time, in the batches the compute loop would
  read, the loop sleeping 0.5 ms when idle as ``ComputeWorker`` does; per output message,
  latency = time the encoded message exists − ``ts_receive`` of the newest input of that
  instrument (p50 / p99 / max, µs).

``old`` is ``fairprice.compute_fair_nb`` / ``update_state_nb`` (plain median, no methodology).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench import fairprice as fp
from fairfeed.core.records import CLASS_SPOT, KIND_ASK, KIND_BID, KIND_TRADE, empty_records
from fairfeed.core.registry import Registry
from fairfeed.hotpath import fairmethods as fm
from fairfeed.hotpath.warmup import warm_up
from fairfeed.kafka.encode import TickEncoder

N_INSTRUMENTS = 10_000
N_SOURCES = 5  # five providers, one venue each
BATCH = 4096
NOW = 1_700_000_000 * 1_000_000_000
METHODS = [*fm.METHOD_CODES, "old"]
RATE = 28_000  # records per second, the seed's load
DAEMON_CAPACITY = 128  # DaemonConfig.max_sources default: source columns of the daemon's arrays


def source_table() -> np.ndarray:
    return np.arange(N_SOURCES, dtype=np.int32).reshape(N_SOURCES, 1)


def random_batch(n: int, seed: int = 1, now: int = NOW) -> np.ndarray:
    rng = np.random.default_rng(seed)
    recs = empty_records(n)
    recs["instrument"] = rng.integers(0, N_INSTRUMENTS, n)
    recs["provider"] = rng.integers(0, N_SOURCES, n)
    recs["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK], n)
    recs["price"] = 100.0 * (1 + 0.001 * rng.standard_normal(n))
    recs["size"] = rng.exponential(1.0, n)
    recs["ts_receive"] = now - rng.integers(0, 1_000_000_000, n)
    return recs


class Old:
    """The old kernels behind the same update / compute calls."""

    method = "old"

    def __init__(self) -> None:
        self.state = fp.FairState(N_INSTRUMENTS, N_SOURCES, source_table(), "both")
        self.stale_ns = fp.seconds_to_ns(10.0)
        self.interval_ns = fp.seconds_to_ns(0.05)

    def update(self, recs: np.ndarray) -> None:
        s = self.state
        fp.update_state_nb(recs, len(recs), s.source_table, s.inputs_mode, s.last_price,
                           s.last_ts, s.last_bid, s.last_ask, s.dirty)  # fmt: skip

    def compute(self, now: int) -> int:
        s = self.state
        return fp.compute_fair_nb(now, self.stale_ns, self.interval_ns, s.last_price, s.last_ts,
                                  s.dirty, s.last_emit_ns, s.out_instrument, s.out_price,
                                  s.out_sources, s.out_oldest_age_ns)  # fmt: skip

    @property
    def dirty(self) -> np.ndarray:
        return self.state.dirty

    @property
    def last_emit_ns(self) -> np.ndarray:
        return self.state.last_emit_ns


class New:
    def __init__(self, method: str, capacity: int | None = None) -> None:
        self.method = method
        self.book = fm.FairBook(
            N_INSTRUMENTS,
            source_table(),
            list(range(N_SOURCES)),
            capacity,
            method=method,
            inputs="both",
        )

    def update(self, recs: np.ndarray) -> None:
        b = self.book
        fm.update_fair_nb(recs, len(recs), b.source_table, b.params, b.arrays)

    def compute(self, now: int) -> int:
        return fm.compute_fair_full_nb(now, self.book.params, self.book.arrays, self.book.out)

    @property
    def dirty(self) -> np.ndarray:
        return self.book.arrays.dirty

    @property
    def last_emit_ns(self) -> np.ndarray:
        return self.book.arrays.last_emit_ns


def make(method: str, capacity: int | None = None):
    warm_up()
    return Old() if method == "old" else New(method, capacity)


def primed(method: str, capacity: int | None = None):
    """Every (instrument, source) has a price; nothing dirty."""
    eng = make(method, capacity)
    warm = random_batch(200_000, seed=2)
    warm["kind"] = KIND_TRADE
    eng.update(warm)
    eng.compute(NOW)
    eng.dirty[:] = False
    return eng


def report(benchmark, per: str, count: int) -> None:
    mean_us = benchmark.stats.stats.mean * 1e6
    benchmark.extra_info[f"us_per_{per}"] = mean_us / count
    benchmark.extra_info["us_per_call"] = mean_us
    print(f"\n{benchmark.name}: {mean_us:.1f} µs/call, {mean_us / count:.4f} µs/{per}")


@pytest.mark.parametrize("method", METHODS)
def test_update(benchmark, method):
    eng = primed(method)
    recs = random_batch(BATCH, seed=5, now=NOW + 10**9)
    benchmark(eng.update, recs)
    report(benchmark, "record", BATCH)


@pytest.mark.parametrize("dirty", ["batch", "all"])
@pytest.mark.parametrize("method", METHODS)
def test_compute(benchmark, method, dirty):
    eng = primed(method)
    recs = random_batch(BATCH, seed=5, now=NOW + 10**9)
    eng.update(recs)
    ids = np.flatnonzero(eng.dirty) if dirty == "batch" else np.arange(N_INSTRUMENTS)
    state = {"now": NOW + 2 * 10**9}

    def setup():
        eng.dirty[ids] = True
        eng.last_emit_ns[:] = fp.NEVER_NS  # due, and every result counts as changed
        if method != "old":
            eng.book.arrays.last_fair[:] = np.nan
        state["now"] += 1

    def run():
        return eng.compute(state["now"])

    benchmark.pedantic(run, setup=setup, rounds=200, warmup_rounds=5)
    report(benchmark, "instrument", len(ids))
    benchmark.extra_info["instruments"] = len(ids)


@pytest.mark.parametrize("method", METHODS)
def test_update_and_compute(benchmark, method):
    """The fair-price work per 4096-record batch of the compute loop, per record."""
    run_update_and_compute(benchmark, primed(method))


@pytest.mark.parametrize("method", list(fm.METHOD_CODES))
def test_update_and_compute_capacity(benchmark, method):
    """As ``test_update_and_compute``, arrays with the daemon's 128 source columns."""
    run_update_and_compute(benchmark, primed(method, DAEMON_CAPACITY))


def run_update_and_compute(benchmark, eng) -> None:
    batches = [random_batch(BATCH, seed=10 + j, now=NOW + 10**9) for j in range(16)]
    state = {"j": 0, "now": NOW + 10**9}

    def run():
        j = state["j"] = state["j"] + 1
        state["now"] += 60_000_000  # past min_interval: every dirty instrument is due
        eng.update(batches[j % len(batches)])
        eng.compute(state["now"])

    benchmark.pedantic(run, rounds=300, warmup_rounds=5)
    report(benchmark, "record", BATCH)


def latency_run(method: str, seconds: float = 3.0) -> dict[str, float]:
    """Feed ``RATE`` records/s in real time; latency per output message, in µs."""
    eng = make(method)  # empty state: no heartbeats of old data in the run
    reg = Registry.build(
        [(f"I{i}", CLASS_SPOT) for i in range(N_INSTRUMENTS)],
        [(f"p{j}", "v") for j in range(N_SOURCES)],
    )
    reg_table = reg.source_table()  # sources 0..4 = (provider j, venue 0): same as source_table()
    assert (reg_table.ravel() == np.arange(N_SOURCES)).all()
    enc = TickEncoder(reg)
    n = int(RATE * seconds)
    feed = random_batch(n, seed=7)
    gaps = np.random.default_rng(8).exponential(1e9 / RATE, n)
    lat: list[np.ndarray] = []
    start = time.time_ns() + 1_000_000
    due = start + np.cumsum(gaps).astype(np.int64)
    feed["ts_receive"] = due
    last_ts = eng.state.last_ts if method == "old" else eng.book.arrays.last_ts
    pos = 0
    while pos < n:
        now = time.time_ns()
        end = min(int(np.searchsorted(due, now, side="right")), pos + BATCH)
        if end > pos:
            eng.update(feed[pos:end])
            pos = end
        m = eng.compute(time.time_ns())
        if m:
            if method == "old":
                s = eng.state
                inst = s.out_instrument[:m]
                enc.fair(inst, s.out_price[:m], s.out_sources[:m], s.out_oldest_age_ns[:m], now)
            else:
                o = eng.book.out
                inst = o.instrument[:m]
                enc.fair(inst, o.price[:m], o.sources[:m], o.oldest_age_ns[:m], now,
                         eng.method, venues=o.venues[:m], dispersion=o.dispersion[:m],
                         status=o.status[:m], reasons=o.reasons[:m])  # fmt: skip
            done = time.time_ns()
            newest = last_ts[inst.astype(np.intp)].max(axis=1)
            lat.append((done - newest) / 1e3)
        elif end == pos:
            time.sleep(0.0005)
    all_lat = np.concatenate(lat)
    fresh = all_lat[all_lat < 1e6]  # heartbeats of old inputs are not input latency
    return {
        "outputs": float(len(all_lat)),
        "p50_us": float(np.percentile(fresh, 50)),
        "p99_us": float(np.percentile(fresh, 99)),
        "max_us": float(fresh.max()),
    }


@pytest.mark.parametrize("method", ["two_level", "median", "old"])
def test_latency(benchmark, method):
    res = benchmark.pedantic(latency_run, args=(method,), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(
        f"\nlatency {method} at {RATE}/s: p50 {res['p50_us']:.0f} µs, p99 {res['p99_us']:.0f} µs,"
        f" max {res['max_us']:.0f} µs over {res['outputs']:.0f} outputs"
    )
