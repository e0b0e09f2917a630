"""Micro-benchmarks of the fair-price kernels.

Run: ``.venv/bin/pytest bench/test_bench_kernel.py --benchmark-only``. Per-record and per-instrument
costs are in each result's ``extra_info`` (``--benchmark-json`` keeps them) and printed with ``-s``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import fairprice as fp
from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE, empty_records
from fairfeed.hotpath.warmup import warm_up

N_INSTRUMENTS = 1000
N_PROVIDERS = 5  # one venue each: 5 sources
NOW = 1_700_000_000 * 1_000_000_000


def source_table() -> np.ndarray:
    return np.arange(N_PROVIDERS, dtype=np.int32).reshape(N_PROVIDERS, 1)


def random_batch(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    recs = empty_records(n)
    recs["instrument"] = rng.integers(0, N_INSTRUMENTS, n)
    recs["provider"] = rng.integers(0, N_PROVIDERS, n)
    recs["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK], n)
    recs["price"] = 100.0 + rng.standard_normal(n)
    recs["size"] = 1.0
    recs["ts_receive"] = NOW - rng.integers(0, 1_000_000_000, n)
    return recs


def new_state(inputs: str = "both") -> fp.FairState:
    warm_up()
    return fp.FairState(N_INSTRUMENTS, N_PROVIDERS, source_table(), inputs)


def report(benchmark, per: str, count: int) -> None:
    mean_us = benchmark.stats.stats.mean * 1e6
    benchmark.extra_info[f"us_per_{per}"] = mean_us / count
    benchmark.extra_info["us_per_call"] = mean_us
    print(f"\n{benchmark.name}: {mean_us:.2f} µs/call, {mean_us / count:.4f} µs/{per}")


@pytest.mark.parametrize("batch", [1, 256, 4096])
@pytest.mark.parametrize("inputs", ["trades", "both"])
def test_update_state(benchmark, batch, inputs):
    state = new_state(inputs)
    recs = random_batch(batch)
    mode = fp.INPUTS_CODES[inputs]
    args = (
        recs,
        batch,
        state.source_table,
        mode,
        state.last_price,
        state.last_ts,
        state.last_bid,
        state.last_ask,
        state.dirty,
    )
    skipped = benchmark(fp.update_state_nb, *args)
    assert skipped == 0
    report(benchmark, "record", batch)


@pytest.mark.parametrize("batch", [256, 4096])
def test_fair_state_update_wrapper(benchmark, batch):
    """``FairState.update``: the kernel plus the Python wrapper's checks."""
    state = new_state()
    recs = random_batch(batch)
    benchmark(state.update, recs)
    report(benchmark, "record", batch)


@pytest.mark.parametrize("dirty_count", [256, N_INSTRUMENTS])
def test_compute_fair(benchmark, dirty_count):
    """Fair prices of ``dirty_count`` instruments with 5 fresh sources each (median of 5)."""
    state = new_state()
    warm = random_batch(50_000, seed=2)
    warm["kind"] = KIND_TRADE  # every (instrument, source) gets a price
    state.update(warm)
    assert not np.isnan(state.last_price).any()
    dirty_ids = np.random.default_rng(3).choice(N_INSTRUMENTS, dirty_count, replace=False)
    stale_ns = fp.seconds_to_ns(10.0)
    interval_ns = fp.seconds_to_ns(0.05)

    def setup():
        state.dirty[:] = False
        state.dirty[dirty_ids] = True
        state.last_emit_ns[:] = fp.NEVER_NS

    def run():
        return fp.compute_fair_nb(
            NOW,
            stale_ns,
            interval_ns,
            state.last_price,
            state.last_ts,
            state.dirty,
            state.last_emit_ns,
            state.out_instrument,
            state.out_price,
            state.out_sources,
            state.out_oldest_age_ns,
        )

    benchmark.pedantic(run, setup=setup, rounds=2000, warmup_rounds=10)
    setup()
    assert run() == dirty_count
    report(benchmark, "instrument", dirty_count)
