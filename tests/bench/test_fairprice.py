"""The baseline plain-median kernels (``bench/fairprice.py``) against their plain references,
plus hand-computed cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_TRADE,
    empty_records,
)
from fairfeed.core.registry import Registry
from fairfeed.hotpath.warmup import warm_up

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO))

from bench import fairprice as fp  # noqa: E402

S = 1_000_000_000


def make_records(rows: list[tuple]) -> np.ndarray:
    """Records from ``(instrument, provider, venue, kind, price, ts_receive)`` rows."""
    recs = empty_records(len(rows))
    for i, (inst, prov, venue, kind, price, ts) in enumerate(rows):
        recs[i]["instrument"] = inst
        recs[i]["provider"] = prov
        recs[i]["venue"] = venue
        recs[i]["kind"] = kind
        recs[i]["price"] = price
        recs[i]["ts_receive"] = ts
        recs[i]["ts_exchange"] = ts - 7
        recs[i]["size"] = 1.0
    return recs


def new_arrays(n_inst: int, n_src: int) -> dict[str, np.ndarray]:
    return {
        "last_price": np.full((n_inst, n_src), np.nan),
        "last_ts": np.zeros((n_inst, n_src), np.int64),
        "last_bid": np.full((n_inst, n_src), np.nan),
        "last_ask": np.full((n_inst, n_src), np.nan),
        "dirty": np.zeros(n_inst, np.bool_),
        "last_emit_ns": np.full(n_inst, fp.NEVER_NS, np.int64),
        "out_instrument": np.zeros(n_inst, np.uint32),
        "out_price": np.zeros(n_inst),
        "out_sources": np.zeros(n_inst, np.int32),
        "out_oldest_age_ns": np.zeros(n_inst, np.int64),
    }


def run_update(fn, a, records, table, mode) -> int:
    return fn(
        records,
        len(records),
        table,
        mode,
        a["last_price"],
        a["last_ts"],
        a["last_bid"],
        a["last_ask"],
        a["dirty"],
    )


def run_compute(fn, a, now, stale, interval) -> int:
    return fn(
        now,
        stale,
        interval,
        a["last_price"],
        a["last_ts"],
        a["dirty"],
        a["last_emit_ns"],
        a["out_instrument"],
        a["out_price"],
        a["out_sources"],
        a["out_oldest_age_ns"],
    )


def assert_same(a: dict, b: dict, m: int | None = None) -> None:
    for key in a:
        x, y = a[key], b[key]
        if key.startswith("out_") and m is not None:
            x, y = x[:m], y[:m]
        np.testing.assert_array_equal(x, y, err_msg=key, strict=True)


# --- random oracle tests ------------------------------------------------------------------------

GOOD_PRICES = st.one_of(
    st.sampled_from([100.0, 100.5, 101.0, 99.0, 1e-8, 12345.678]),  # repeats and ties
    st.floats(1e-6, 1e7, allow_nan=False, allow_infinity=False),
)
BAD_PRICES = st.sampled_from([np.nan, np.inf, -np.inf])  # skipped


def mostly(valid: int, invalid: list[int]) -> st.SearchStrategy[int]:
    """Ids ``0..valid-1`` about 90 % of the time, else one of ``invalid``."""
    return st.sampled_from(list(range(valid)) * max(1, 9 // valid) * 2 + invalid)


@st.composite
def scenarios(draw):
    n_inst = draw(st.integers(1, 5))
    n_prov = draw(st.integers(1, 3))
    n_venue = draw(st.integers(1, 3))
    # Dense source ids over a random subset of (provider, venue); the rest is -1 (unknown).
    cells = n_prov * n_venue
    present = draw(
        st.lists(st.sampled_from([True, True, True, False]), min_size=cells, max_size=cells)
    )
    table = np.full(n_prov * n_venue, -1, np.int32)
    ids = np.flatnonzero(present)
    table[ids] = np.arange(len(ids), dtype=np.int32)
    table = table.reshape(n_prov, n_venue)
    n_src = max(len(ids), 1)
    mode = draw(st.sampled_from([fp.INPUTS_TRADES, fp.INPUTS_QUOTES, fp.INPUTS_BOTH]))
    stale = draw(st.integers(0, 40))
    intervals = [0, 1, 5, 10, 25]
    interval = draw(st.sampled_from(intervals))
    row = st.tuples(
        mostly(n_inst, [n_inst]),  # n_inst itself is out of range
        mostly(n_prov, [n_prov]),  # n_prov is outside the table
        mostly(n_venue, [n_venue]),
        st.sampled_from([KIND_TRADE, KIND_BID, KIND_ASK] * 4 + [0, 9]),
        st.one_of(GOOD_PRICES, GOOD_PRICES, GOOD_PRICES, GOOD_PRICES, BAD_PRICES),
        st.integers(0, 10),  # ts offset within the step
    )
    steps = draw(
        st.lists(
            # (batch, time advance); advances often equal an interval, to hit its boundary
            st.tuples(
                st.lists(row, min_size=1, max_size=30),
                st.one_of(st.sampled_from(intervals), st.integers(0, 20)),
            ),
            min_size=1,
            max_size=10,
        )
    )
    return n_inst, n_src, table, mode, stale, interval, steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_kernels_match_reference(scenario):
    n_inst, n_src, table, mode, stale, interval, steps = scenario
    got, want = new_arrays(n_inst, n_src), new_arrays(n_inst, n_src)
    now = 1_000
    for batch, advance in steps:
        recs = make_records([(i, p, v, k, x, now + dt) for i, p, v, k, x, dt in batch])
        assert run_update(fp.update_state_nb, got, recs, table, mode) == run_update(
            fp.update_state_reference, want, recs, table, mode
        )
        assert_same(got, want)
        now += advance
        dirty_before = int(got["dirty"].sum())
        m = run_compute(fp.compute_fair_nb, got, now, stale, interval)
        assert m == run_compute(fp.compute_fair_reference, want, now, stale, interval)
        assert_same(got, want, m)
        known = (~np.isnan(got["last_price"])).sum(axis=1)[got["out_instrument"][:m]]
        event("emitted" if m else "nothing emitted")
        if (got["out_sources"][:m] < known).any():
            event("a stale source left out")
        if m < dirty_before - int(got["dirty"].sum()):
            event("dirty instrument with no fresh source")
        if got["dirty"].any():
            event("throttled")
        # A second pass at the same time emits nothing new unless something was throttled.
        m2 = run_compute(fp.compute_fair_nb, got, now, stale, interval)
        assert m2 == run_compute(fp.compute_fair_reference, want, now, stale, interval)
        assert_same(got, want, m2)


@settings(max_examples=100, deadline=None)
@given(
    prices=st.lists(st.floats(1e-3, 1e6, allow_nan=False), min_size=1, max_size=12),
    ages=st.data(),
)
def test_median_matches_numpy_on_many_sources(prices, ages):
    n = len(prices)
    ts = np.array(ages.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), np.int64)
    a = new_arrays(1, n)
    a["last_price"][0] = prices
    a["last_ts"][0] = ts
    a["dirty"][0] = True
    now, stale = 20, 10
    m = run_compute(fp.compute_fair_nb, a, now, stale, 0)
    fresh = now - ts <= stale
    if not fresh.any():
        assert m == 0
        return
    assert m == 1
    assert a["out_price"][0] == np.median(np.array(prices)[fresh])
    assert a["out_sources"][0] == fresh.sum()
    assert a["out_oldest_age_ns"][0] == (now - ts[fresh]).max()


# --- hand-computed cases ------------------------------------------------------------------------

# Three sources: (provider 0, venue 0) = 0, (provider 0, venue 1) = 1, (provider 1, venue 0) = 2;
# (provider 1, venue 1) is unknown.
TABLE = np.array([[0, 1], [2, -1]], np.int32)


def state(inputs: str = "trades", n_inst: int = 3) -> fp.FairState:
    return fp.FairState(n_inst, 3, TABLE, inputs)


def test_median_of_three():
    st_ = state()
    st_.update(
        make_records(
            [
                (0, 0, 0, KIND_TRADE, 100.0, 10),
                (0, 0, 1, KIND_TRADE, 103.0, 11),
                (0, 1, 0, KIND_TRADE, 101.0, 12),
            ]
        )
    )
    out = st_.compute(20, 1.0, 0.0)
    assert out.instrument.tolist() == [0]
    assert out.price.tolist() == [101.0]
    assert out.sources.tolist() == [3]
    assert out.oldest_age_ns.tolist() == [10]


def test_median_of_two_is_mean():
    st_ = state()
    st_.update(make_records([(1, 0, 0, KIND_TRADE, 100.0, 5), (1, 1, 0, KIND_TRADE, 101.0, 6)]))
    out = st_.compute(10, 1.0, 0.0)
    assert out.instrument.tolist() == [1]
    assert out.price.tolist() == [100.5]
    assert out.sources.tolist() == [2]


def test_latest_observation_per_source_wins():
    st_ = state()
    st_.update(make_records([(0, 0, 0, KIND_TRADE, 100.0, 5), (0, 0, 0, KIND_TRADE, 90.0, 6)]))
    out = st_.compute(10, 1.0, 0.0)
    assert out.price.tolist() == [90.0]
    assert out.sources.tolist() == [1]


def test_stale_source_excluded_at_boundary():
    st_ = state()
    stale_s = 1.0
    st_.update(
        make_records(
            [
                (0, 0, 0, KIND_TRADE, 100.0, 0),
                (0, 0, 1, KIND_TRADE, 200.0, 1),
                (0, 1, 0, KIND_TRADE, 300.0, 2),
            ]
        )
    )
    # At now = 1 s + 1 ns the first source is 1 ns too old; the second is exactly stale_after old.
    out = st_.compute(S + 1, stale_s, 0.0)
    assert out.price.tolist() == [250.0]
    assert out.sources.tolist() == [2]
    assert out.oldest_age_ns.tolist() == [S]


def test_no_fresh_source_not_emitted_and_dirty_cleared():
    st_ = state()
    st_.update(make_records([(2, 0, 0, KIND_TRADE, 100.0, 0)]))
    out = st_.compute(5 * S, 1.0, 0.0)
    assert len(out.instrument) == 0
    assert not st_.dirty.any()
    assert st_.last_emit_ns[2] == fp.NEVER_NS


def test_quotes_mode_uses_mid_once_both_sides_known():
    st_ = state("quotes")
    st_.update(make_records([(0, 0, 0, KIND_TRADE, 500.0, 1), (0, 0, 0, KIND_BID, 99.0, 2)]))
    assert len(st_.compute(10, 1.0, 0.0).price) == 0  # trade ignored, ask still unknown
    st_.update(make_records([(0, 0, 0, KIND_ASK, 101.0, 3)]))
    out = st_.compute(10, 1.0, 0.0)
    assert out.price.tolist() == [100.0]
    assert st_.last_ts[0, 0] == 3
    st_.update(make_records([(0, 0, 0, KIND_BID, 100.0, 4)]))  # one side moves: new mid
    assert st_.compute(10, 1.0, 0.0).price.tolist() == [100.5]


def test_trades_mode_ignores_quotes_and_both_mode_takes_the_latest():
    trades = state("trades")
    trades.update(make_records([(0, 0, 0, KIND_BID, 99.0, 1), (0, 0, 0, KIND_ASK, 101.0, 1)]))
    assert not trades.dirty.any()
    assert len(trades.compute(10, 1.0, 0.0).price) == 0
    both = state("both")
    both.update(
        make_records(
            [
                (0, 0, 0, KIND_BID, 99.0, 1),
                (0, 0, 0, KIND_ASK, 101.0, 1),
                (0, 0, 0, KIND_TRADE, 104.0, 2),
            ]
        )
    )
    assert both.compute(10, 1.0, 0.0).price.tolist() == [104.0]


def test_min_interval_throttles_and_keeps_dirty():
    st_ = state()
    st_.update(make_records([(0, 0, 0, KIND_TRADE, 100.0, 0)]))
    assert st_.compute(1_000, 10.0, 1e-6).price.tolist() == [100.0]  # first emission at 1000 ns
    st_.update(make_records([(0, 0, 0, KIND_TRADE, 101.0, 1_500)]))
    assert len(st_.compute(1_999, 10.0, 1e-6).price) == 0  # 999 ns after: throttled
    assert st_.dirty[0]
    assert st_.compute(2_000, 10.0, 1e-6).price.tolist() == [101.0]  # exactly 1 µs after
    assert not st_.dirty[0]
    assert len(st_.compute(5_000, 10.0, 1e-6).price) == 0  # nothing changed since


def test_unknown_sources_and_bad_records_are_skipped_and_counted():
    st_ = state()
    recs = make_records(
        [
            (0, 1, 1, KIND_TRADE, 100.0, 1),  # table says -1
            (0, 5, 0, KIND_TRADE, 100.0, 1),  # provider outside the table
            (0, 0, 7, KIND_TRADE, 100.0, 1),  # venue outside the table
            (3, 0, 0, KIND_TRADE, 100.0, 1),  # instrument out of range
            (0, 0, 0, 0, 100.0, 1),  # unknown kind
            (0, 0, 0, KIND_TRADE, np.nan, 1),  # no price
            (0, 0, 0, KIND_TRADE, 42.0, 1),  # the only good one
        ]
    )
    assert st_.update(recs) == 6
    assert st_.update(recs, n=2) == 2
    assert st_.skipped == 8
    assert st_.compute(2, 1.0, 0.0).price.tolist() == [42.0]


def test_multiple_instruments_in_one_pass_ascending():
    st_ = state()
    st_.update(make_records([(2, 0, 0, KIND_TRADE, 3.0, 1), (0, 0, 0, KIND_TRADE, 1.0, 1)]))
    out = st_.compute(2, 1.0, 0.0)
    assert out.instrument.tolist() == [0, 2]
    assert out.price.tolist() == [1.0, 3.0]


def test_from_registry_and_validation():
    reg = Registry.build(
        [("BTC-USD", CLASS_SPOT), ("ETH-USD", CLASS_SPOT)],
        [("sim-a", "binance"), ("sim-b", "binance"), ("sim-a", "coinbase")],
    )
    st_ = fp.FairState.from_registry(reg, "both")
    assert st_.last_price.shape == (2, 3)
    assert st_.inputs_mode == fp.INPUTS_BOTH
    rows = [(1, reg.provider_id("sim-a"), reg.venue_id("coinbase"), KIND_TRADE, 7.0, 1)]
    st_.update(make_records(rows))
    assert st_.last_price[1, 2] == 7.0
    with pytest.raises(ValueError):
        fp.FairState(2, 3, TABLE, "mids")
    with pytest.raises(TypeError):
        st_.update(np.zeros(3, np.float64))


def test_warm_up_is_idempotent():
    first = warm_up()
    assert warm_up() == first
