"""Fair-price methodology kernels against their plain-Python references, plus scenario tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    CLASS_FUTURE,
    CLASS_OPTION,
    CLASS_PERPETUAL,
    CLASS_SPOT,
    KIND_ASK,
    KIND_BID,
    KIND_INDEX,
    KIND_MARK,
    KIND_TRADE,
    empty_records,
)
from fairfeed.core.registry import Registry
from fairfeed.hotpath import fairmethods as fm
from fairfeed.hotpath.fairmethods import INPUTS_BOTH, INPUTS_QUOTES, INPUTS_TRADES, NEVER_NS

S = 1_000_000_000
METHODS = list(fm.METHOD_CODES)


def make_records(rows: list[tuple]) -> np.ndarray:
    """Records from ``(instrument, provider, venue, kind, price, ts_receive[, size[, data
    class]])`` rows."""
    recs = empty_records(len(rows))
    for i, row in enumerate(rows):
        inst, prov, venue, kind, price, ts = row[:6]
        recs[i]["instrument"] = inst
        recs[i]["provider"] = prov
        recs[i]["venue"] = venue
        recs[i]["kind"] = kind
        recs[i]["price"] = price
        recs[i]["ts_receive"] = ts
        recs[i]["size"] = row[6] if len(row) > 6 else 1.0
        recs[i]["data_class"] = row[7] if len(row) > 7 else 0
    return recs


def assert_same(got, want, m: int | None = None) -> None:
    for name, x, y in zip(got._fields, got, want, strict=True):
        if name.startswith("work_"):  # scratch
            continue
        if m is not None:
            x, y = x[:m], y[:m]
        np.testing.assert_array_equal(x, y, err_msg=name, strict=True)


# --- random oracle tests ------------------------------------------------------------------------

PRICE_STEPS = [0.0, 0.0, 0.001, -0.001, 0.01, -0.02, 0.03, -0.04, 0.06, -0.07, 0.2]
SIZES = st.one_of(
    st.sampled_from([0.0, 1.0, 2.5, 1.0, np.nan, -1.0, np.inf]),
    st.floats(1e-6, 1e4, allow_nan=False),
)


def mostly(valid: int, invalid: list[int]) -> st.SearchStrategy[int]:
    return st.sampled_from(list(range(valid)) * max(1, 9 // valid) * 2 + invalid)


@st.composite
def scenarios(draw, method: str):
    n_inst = draw(st.integers(1, 4))
    n_prov = draw(st.integers(1, 3))
    n_venue = draw(st.integers(1, 4))
    cells = n_prov * n_venue
    present = draw(
        st.lists(st.sampled_from([True, True, True, False]), min_size=cells, max_size=cells)
    )
    table = np.full(cells, -1, np.int32)
    ids = np.flatnonzero(present)
    table[ids] = np.arange(len(ids), dtype=np.int32)
    venues = (ids % n_venue).tolist()  # source id -> venue id
    table = table.reshape(n_prov, n_venue)
    intervals = [0, 1, 5, 10, 25]
    exclude = draw(st.sampled_from([0.05, 0.05, 0.1, 0.0]))
    marks = draw(st.booleans())
    stride = 2 if marks else 1
    params = fm.FairParams(
        method=fm.METHOD_CODES[method],
        inputs_mode=draw(st.sampled_from([INPUTS_TRADES, INPUTS_QUOTES, INPUTS_BOTH])),
        stale_ns=draw(st.integers(0, 40)),
        min_interval_ns=draw(st.sampled_from(intervals)),
        heartbeat_ns=draw(st.sampled_from([0, 7, 30])),
        outlier_exclude=exclude,
        outlier_readmit=exclude / 2,
        halflife_ns=float(draw(st.sampled_from([5, 50, S]))),
        freshness_tau_ns=float(draw(st.sampled_from([3, 100, S]))),
        venue_cap=draw(st.sampled_from([0.3, 0.5, 0.6, 1.0])),
        min_venues=draw(st.integers(1, 3)),
        bucket_ns=draw(st.sampled_from([3, 10])),
        trim=draw(st.sampled_from([0.0, 0.2, 0.34])),
        # Sources registered so far (capacity beyond them, as when the registry grows live).
        n_sources=draw(
            st.sampled_from([-1, -1, len(venues) * stride, max(len(venues) - 1, 0) * stride])
        ),
        dispute=draw(st.sampled_from([np.inf, 0.05, 0.2])),
        mark_inputs=int(marks),
    )
    buckets = draw(st.sampled_from([1, 3]))
    base = draw(st.sampled_from([100.0, 1e-4, 31000.0]))
    price = st.one_of(
        st.sampled_from(PRICE_STEPS).map(lambda x: base * (1 + x)),
        st.sampled_from([np.nan, np.inf]),
        st.floats(base * 0.5, base * 1.5),
    )
    row = st.tuples(
        mostly(n_inst, [n_inst]),
        mostly(n_prov, [n_prov]),
        mostly(n_venue, [n_venue]),
        st.sampled_from([KIND_TRADE, KIND_BID, KIND_ASK] * 4 + [KIND_MARK] * 4 + [KIND_INDEX, 0]),
        price,
        st.integers(0, 10),
        SIZES,
        st.sampled_from([CLASS_PERPETUAL] * 3 + [CLASS_FUTURE, CLASS_SPOT, CLASS_OPTION]),
    )
    steps = draw(
        st.lists(
            st.tuples(
                st.lists(row, min_size=0, max_size=25),
                st.one_of(st.sampled_from(intervals), st.integers(0, 20)),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return n_inst, table, venues, params, buckets, steps


def run_oracle(scenario) -> None:
    n_inst, table, venues, params, buckets, steps = scenario
    stride = 2 if params.mark_inputs else 1
    active = venues if params.n_sources < 0 else venues[: params.n_sources // stride]
    slots = fm.slot_venues(active, bool(params.mark_inputs))
    a_nb = fm.make_arrays(n_inst, slots, buckets, len(venues) * stride)
    a_ref = fm.make_arrays(n_inst, slots, buckets, len(venues) * stride)
    o_nb = fm.make_out(n_inst, len(venues) * stride)
    o_ref = fm.make_out(n_inst, len(venues) * stride)
    now = 1_000
    for batch, advance in steps:
        recs = make_records([(i, p, v, k, x, now + dt, q, c) for i, p, v, k, x, dt, q, c in batch])
        n = len(recs)
        got = fm.update_fair_nb(recs, n, table, params, a_nb)
        assert got == fm.update_fair_reference(recs, n, table, params, a_ref)
        assert_same(a_nb, a_ref)
        now += advance
        for _ in range(2):  # the second pass at the same time: heartbeats and throttled ones
            m = fm.compute_fair_full_nb(now, params, a_nb, o_nb)
            assert m == fm.compute_fair_full_reference(now, params, a_ref, o_ref)
            assert_same(a_nb, a_ref)
            assert_same(o_nb, o_ref, m)
            status = o_nb.status[:m]
            for code, name in fm.FAIR_STATUS_NAMES.items():
                if (status == code).any():
                    event(f"status {name}")
            if (o_nb.reasons[:m] == fm.REASON_OUTLIER).any():
                event("outlier excluded")
            if (o_nb.marks[:m] > 0).any():
                event("a mark used")
                if (o_nb.marks[:m] < o_nb.sources[:m]).any():
                    event("a mark used with trades or quotes")


@pytest.mark.parametrize("method", METHODS)
def test_kernels_match_reference(method):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios(method))
    def check(scenario):
        run_oracle(scenario)

    check()


@settings(max_examples=200, deadline=None)
@given(
    xs=st.lists(st.floats(1e-3, 1e6), min_size=1, max_size=9),
    data=st.data(),
)
def test_weighted_median_and_cap_match_reference(xs, data):
    k = len(xs)
    ws = data.draw(
        st.lists(st.sampled_from([0.0, 1.0, 2.0, 0.5]) | st.floats(0, 10), min_size=k, max_size=k)
    )
    cap = data.draw(st.sampled_from([0.2, 0.3, 0.5, 0.9, 1.0]))
    x, w = np.array(xs), np.array(ws)
    assert fm._weighted_median_nb(x.copy(), w.copy(), k) == fm.weighted_median_reference(xs, ws)
    shares = w.copy()
    fm._cap_shares_nb(shares, k, cap, np.zeros(k, np.int64))
    want = fm.cap_shares_reference(ws, cap)
    np.testing.assert_array_equal(shares, want)
    assert sum(want) == pytest.approx(1.0)
    if k * cap > 1:
        assert max(want) <= cap * (1 + 1e-12)
    if len(set(ws)) == 1:  # equal weights: the plain median
        assert fm.weighted_median_reference(xs, ws) == fm.median_reference(xs)


# --- scenarios ------------------------------------------------------------------------------------

# Four sources on three venues: (provider 0, venue 0) = 0, (p0, v1) = 1, (p0, v2) = 2,
# (provider 1, venue 0) = 3 — venue 0 is seen through two vendors.
TABLE = np.array([[0, 1, 2], [3, -1, -1]], np.int32)
VENUES = [0, 1, 2, 0]


def book(method: str = "two_level", n_inst: int = 2, **kw) -> fm.FairBook:
    kw.setdefault("min_interval", 0.0)
    return fm.FairBook(n_inst, TABLE, VENUES, method=method, **kw)


def trades(*rows) -> np.ndarray:
    """``(provider, venue, price, ts[, size])`` trades of instrument 0."""
    return make_records([(0, r[0], r[1], KIND_TRADE, r[2], r[3], *r[4:]) for r in rows])


def three_venues(b: fm.FairBook, ts: int, prices=(100.0, 100.0, 100.0)) -> None:
    b.update(trades((0, 0, prices[0], ts), (0, 1, prices[1], ts), (0, 2, prices[2], ts)))


@pytest.mark.parametrize("method", METHODS)
def test_single_spike_does_not_move_the_price(method):
    b = book(method)
    three_venues(b, S)
    assert b.compute(S).price.tolist() == [100.0]
    b.update(trades((0, 2, 106.0, S + 1)))  # one 6 % tick on venue 2
    out = b.compute(S + 2)
    assert out.price.tolist() == [100.0]
    assert out.reasons[0].tolist() == [0, 0, 2, 3]  # venue 2 excluded as an outlier
    assert out.sources.tolist() == [2] and out.venues.tolist() == [2]


def test_sustained_shift_excluded_then_readmitted_below_half_the_gate():
    b = book("median", min_venues=3)
    three_venues(b, S)
    b.compute(S)
    t = S
    steps = (
        (106.0, True, 1),
        (104.0, True, 0),
        (103.0, True, 0),
        (102.4, False, 1),
        (104.0, False, 0),
    )
    for price, excluded, emitted in steps:
        t += 1
        b.update(trades((0, 2, price, t)))
        out = b.compute(t)
        assert b.arrays.gate_out[0, 2] == excluded, price
        assert len(out.price) == emitted, price  # unchanged results are not re-emitted
        if emitted:
            assert out.reasons[0][2] == (fm.REASON_OUTLIER if excluded else 0)
            assert out.status[0] == (fm.FAIR_DEGRADED if excluded else fm.FAIR_OK)
            assert out.price[0] == 100.0  # median of 100, 100 / of 100, 100, 102.4


def test_gate_needs_three_venues_and_two_vendors_of_one_venue_count_once():
    b = book("two_level")
    # Venue 0 through two vendors at 100 and venue 1 at 110: two venues, no gate.
    b.update(trades((0, 0, 100.0, S), (1, 0, 100.0, S), (0, 1, 110.0, S)))
    out = b.compute(S)
    assert out.reasons[0].tolist() == [0, 0, 3, 0]
    assert out.venues.tolist() == [2] and out.sources.tolist() == [3]
    # Equal volume and age per venue: 50/50 → mean of the two venue medians (the vendor
    # duplicate did not tip it to 100).
    assert out.price[0] == pytest.approx(105.0)
    # With the plain median the duplicate counts twice.
    m = book("median")
    m.update(trades((0, 0, 100.0, S), (1, 0, 100.0, S), (0, 1, 110.0, S)))
    assert m.compute(S).price.tolist() == [100.0]


@pytest.mark.parametrize("method", METHODS)
def test_two_sources_or_two_venues_apart_are_disputed_not_ok(method):
    """8 % apart, 6 % dispute threshold: the midpoint is no consensus; 0.3 % apart is ``ok``."""
    b = book(method, dispute=0.06, min_venues=2)
    b.update(trades((0, 0, 100.0, S), (0, 1, 108.0, S)))
    assert b.compute(S).status.tolist() == [fm.FAIR_DISPUTED]
    b.update(trades((0, 1, 100.3, S + 1)))
    assert b.compute(S + 1).status.tolist() == [fm.FAIR_OK]
    # a third venue: the gate decides, no dispute
    b.update(trades((0, 1, 108.0, S + 2), (0, 2, 100.0, S + 2)))
    assert b.compute(S + 2).status.tolist() != [fm.FAIR_DISPUTED]


def test_two_venues_of_two_level_apart_are_disputed():
    """Two venues, one of them through two vendors (three sources): still two venues apart."""
    b = book("two_level", dispute=0.06)
    b.update(trades((0, 0, 100.0, S), (1, 0, 100.0, S), (0, 1, 108.0, S)))
    out = b.compute(S)
    assert out.venues.tolist() == [2] and out.status.tolist() == [fm.FAIR_DISPUTED]


def test_volume_weights_and_ewma_decay():
    b = book("two_level", volume_halflife=1.0, freshness_tau=1e9, venue_cap=1.0)
    b.update(trades((0, 0, 100.0, S, 1.0), (0, 1, 101.0, S, 3.0)))
    assert b.compute(S).price.tolist() == [101.0]  # 75 % of the volume at 101
    a = b.arrays
    assert a.vol[0, 0] == 1.0 and a.vol[0, 1] == 3.0
    # One half-life later venue 0 trades 5: 1·½ + 5 = 5.5 against 3·½ = 1.5.
    b.update(trades((0, 0, 99.0, 2 * S, 5.0)))
    assert a.vol[0, 0] == pytest.approx(5.5)
    assert b.compute(2 * S).price.tolist() == [99.0]
    # Quotes add no volume.
    q = make_records([(0, 0, 1, KIND_BID, 100.0, 3 * S), (0, 0, 1, KIND_ASK, 102.0, 3 * S)])
    b.update(q)
    assert a.vol[0, 1] == 3.0 and a.vol_ts[0, 1] == S


def test_venue_cap_limits_a_dominant_venue():
    # Venue 0 has 90 % of the volume; capped at 0.4 of three venues it no longer decides alone.
    kw = {"freshness_tau": 1e9}
    capped = book("two_level", venue_cap=0.4, **kw)
    free = book("two_level", venue_cap=1.0, **kw)
    for b in (capped, free):
        b.update(trades((0, 0, 100.0, S, 18.0), (0, 1, 101.0, S, 1.0), (0, 2, 102.0, S, 1.0)))
    assert free.compute(S).price.tolist() == [100.0]
    assert capped.compute(S).price.tolist() == [101.0]  # shares 0.4, 0.3, 0.3
    assert fm.cap_shares_reference([18, 1, 1], 0.4) == pytest.approx([0.4, 0.3, 0.3])


def test_freshness_decay_shifts_weight_to_fresh_venues():
    b = book("two_level", freshness_tau=1.0, venue_cap=1.0, stale_after=100.0)
    b.update(trades((0, 0, 100.0, 0, 1.0), (0, 1, 101.0, 2 * S, 1.0)))
    # At 2 s: weights e^-2 and e^0: venue 1 dominates.
    assert b.compute(2 * S).price.tolist() == [101.0]
    # Same ages: equal weights, the mean of two.
    c = book("two_level", freshness_tau=1.0, venue_cap=1.0)
    c.update(trades((0, 0, 100.0, S, 1.0), (0, 1, 101.0, S, 1.0)))
    assert c.compute(S).price.tolist() == [100.5]


def test_inverse_variance_prefers_the_quiet_source():
    b = book("inverse_variance", volume_halflife=1000.0)
    t = S
    for j in range(20):  # venue 0 jumps around ±1 %, venue 1 is steady; equal volume
        t += S // 10
        b.update(trades((0, 0, 100.0 * (1.01 if j % 2 else 0.99), t), (0, 1, 100.5, t)))
    v = b.arrays.var_num[0] / np.where(b.arrays.var_den[0] > 0, b.arrays.var_den[0], np.nan)
    assert v[0] > 100 * max(v[1], 1e-40)
    assert b.compute(t).price.tolist() == [100.5]


def test_windowed_vwm_buckets_roll_over():
    b = book("windowed_vwm", window_bucket=1.0, window_buckets=3, stale_after=100.0)
    a = b.arrays
    b.update(trades((0, 0, 100.0, S + 1, 1.0), (0, 1, 102.0, S + 2, 3.0)))  # bucket 1
    b.update(trades((0, 0, 110.0, 2 * S, 1.0)))  # bucket 2: only venue 0
    assert a.bucket_id[0, 0].tolist() == [-1, 1, 2]
    out = b.compute(2 * S + 5)
    # bucket 1: VWM of 100 (1) and 102 (3) = 102; bucket 2: 110; mean 106. The gate compares
    # last prices 110 and 102 (two venues: no gate).
    assert out.price.tolist() == [106.0]
    b.update(trades((0, 0, 120.0, 4 * S, 1.0)))  # bucket 4 reuses slot 1: bucket 1 is gone
    assert a.bucket_id[0, 0].tolist() == [-1, 4, 2]
    assert a.bucket_price[0, 0, 1] == 120.0 and a.bucket_vol[0, 0, 1] == 1.0
    # window at 4.x s = buckets 2..4: bucket 2 → 110, bucket 4 → 120.
    assert b.compute(4 * S + 5).price.tolist() == [115.0]
    # A late record for a bucket whose slot holds a newer one leaves the ring alone.
    b.update(trades((0, 0, 1.0, S + 3, 1.0)))
    assert a.bucket_price[0, 0, 1] == 120.0


def test_trimmed_mean():
    b = book("trimmed_mean", trim=0.25, outlier_exclude=0.0, outlier_readmit=0.0)
    b.update(trades((0, 0, 100.0, S), (1, 0, 101.0, S), (0, 1, 103.0, S), (0, 2, 200.0, S)))
    assert b.compute(S).price.tolist() == [102.0]  # drops 100 and 200


def test_status_codes_stale_carry_and_heartbeat():
    b = book("median", stale_after=1.0, heartbeat_interval=5.0, min_venues=2)
    b.update(trades((0, 0, 100.0, S)))
    out = b.compute(S)
    assert out.status.tolist() == [fm.FAIR_SINGLE_SOURCE]
    b.update(trades((1, 0, 101.0, S)))  # the same venue through a second vendor
    out = b.compute(S + 1)
    assert out.status.tolist() == [fm.FAIR_DEGRADED]
    assert out.sources.tolist() == [2] and out.venues.tolist() == [1]
    assert out.dispersion[0] == pytest.approx(1 / 100.5)
    assert out.oldest_age_ns.tolist() == [1]
    b.update(trades((0, 1, 100.5, S)))
    out = b.compute(S + 2)
    assert out.status.tolist() == [fm.FAIR_OK] and out.price.tolist() == [100.5]
    # Unchanged input: nothing until the heartbeat.
    b.update(trades((0, 1, 100.5, S + 3)))
    assert len(b.compute(S + 4).price) == 0
    assert len(b.compute(2 * S).price) == 0  # not dirty, no heartbeat due
    # The sources go stale: the next heartbeat (5 s after the last emission) carries the price.
    hb = S + 2 + 5 * S
    assert len(b.compute(hb - 1).price) == 0
    out = b.compute(hb)
    assert out.status.tolist() == [fm.FAIR_STALE] and out.price.tolist() == [100.5]
    assert out.sources.tolist() == [0] and math.isnan(out.dispersion[0])
    assert out.oldest_age_ns.tolist() == [hb - (S + 3)]  # since the newest input
    assert out.reasons[0].tolist() == [1, 1, 3, 1]
    # A stale input (old ts) marks it dirty but changes nothing: no second stale message.
    b.update(trades((0, 0, 90.0, S)))
    assert len(b.compute(hb + 1).price) == 0
    # Heartbeat re-emission of the unchanged stale value.
    assert b.compute(hb + 5 * S).status.tolist() == [fm.FAIR_STALE]
    # Fresh data: back to a live price at once.
    b.update(trades((0, 0, 99.0, hb + 5 * S + 10)))
    out = b.compute(hb + 5 * S + 20)
    assert out.status.tolist() == [fm.FAIR_SINGLE_SOURCE] and out.price.tolist() == [99.0]


def test_never_priced_instrument_is_not_emitted_when_stale():
    b = book("median", stale_after=1.0)
    b.update(trades((0, 0, 100.0, 0)))
    assert len(b.compute(5 * S).price) == 0
    assert b.arrays.last_emit_ns[0] == NEVER_NS and not b.arrays.dirty.any()


def test_min_interval_throttles_and_final_ignores_it():
    b = book("median", min_interval=1.0)
    b.update(trades((0, 0, 100.0, S)))
    assert b.compute(S).price.tolist() == [100.0]
    b.update(trades((0, 0, 101.0, S + 5)))
    assert len(b.compute(S + 10).price) == 0 and b.arrays.dirty[0]
    assert b.compute(S + 10, final=True).price.tolist() == [101.0]


def test_heartbeat_re_emits_unchanged_price():
    b = book("median", heartbeat_interval=2.0, stale_after=100.0)
    b.update(trades((0, 0, 100.0, S)))
    assert len(b.compute(S).price) == 1
    assert len(b.compute(2 * S).price) == 0
    out = b.compute(3 * S)
    assert out.price.tolist() == [100.0] and out.status.tolist() == [fm.FAIR_SINGLE_SOURCE]
    assert len(b.compute(3 * S + 1).price) == 0


def test_from_config_and_validation():
    from fairfeed.core.config import FairConfig

    reg = Registry.build(
        [("BTC-USD", CLASS_SPOT), ("ETH-USD", CLASS_SPOT)],
        [("sim-a", "binance"), ("sim-b", "binance"), ("sim-a", "coinbase")],
    )
    b = fm.FairBook.from_config(reg, FairConfig())
    assert b.arrays.last_price.shape == (2, 3)
    assert b.arrays.group_start.tolist() == [0, 2, 3]  # binance (two vendors), coinbase
    assert b.method == FairConfig().method == "two_level"
    # Capacity beyond the registered sources; a source registered later joins its venue.
    big = fm.FairBook.from_config(reg, FairConfig(), n_instruments=8, n_sources=6)
    assert big.arrays.last_price.shape == (8, 6) and big.params.n_sources == 3
    big.set_source_venues([0, 0, 1, 1])
    assert big.arrays.group_start.tolist() == [0, 2, 4] and big.params.n_sources == 4
    with pytest.raises(ValueError):
        fm.make_params(method="mean")
    with pytest.raises(ValueError):
        fm.make_params(outlier_exclude=0.02, outlier_readmit=0.03)
    with pytest.raises(TypeError):
        b.update(np.zeros(3))


@settings(max_examples=200, deadline=None)
@given(
    xs=st.lists(st.sampled_from([1.0, 2.0, 2.0, 3.0, -0.5]) | st.floats(-1e6, 1e6), max_size=12),
    data=st.data(),
)
def test_sorts_match_a_stable_sort(xs, data):
    """Both sorts, with and without branches (up to / beyond ``BRANCHLESS_MAX`` values)."""
    k = len(xs)
    ws = data.draw(st.lists(st.floats(0, 10), min_size=k, max_size=k))
    x = np.array([*xs, 7.0])  # a value past k stays put
    fm._sort_nb(x, k)
    assert x.tolist() == [*sorted(xs), 7.0]
    x, w = np.array([*xs, 7.0]), np.array([*ws, 8.0])
    fm._sort2_nb(x, w, k)
    want = sorted(zip(xs, ws, strict=True), key=lambda t: t[0])  # stable: ties keep their order
    assert list(zip(x[:k].tolist(), w[:k].tolist(), strict=True)) == want
    assert (x[k], w[k]) == (7.0, 8.0)


def test_bound_kernels_match_the_dispatcher_for_any_batch_layout():
    """FairBook calls its kernels through entry points bound to its state's types; batches of
    other layouts (strided, read-only) go through the dispatcher. Same state either way, also
    after the state is replaced (sources added live)."""
    rng = np.random.default_rng(5)
    rows = [
        (0, 0, int(v), KIND_TRADE, float(100 + rng.standard_normal()), 1_000 + i)
        for i, v in enumerate(rng.integers(0, 3, 64))
    ]
    recs = make_records(rows)
    strided = np.repeat(recs, 2)[::2]
    frozen = recs.copy()
    frozen.flags.writeable = False
    books = [book(), book(), book()]
    for b, batch in zip(books, (recs, strided, frozen), strict=True):
        b.update(batch)
        b.set_source_venues(VENUES)  # new arrays and params: rebinds
        b.update(batch)
    outs = [b.compute(10_000) for b in books]
    for b, out in zip(books[1:], outs[1:], strict=True):
        for name, want in books[0].arrays._asdict().items():
            np.testing.assert_array_equal(getattr(b.arrays, name), want, err_msg=name)
        for got, want in zip(out, outs[0], strict=True):
            np.testing.assert_array_equal(got, want)
    assert len(outs[0].instrument) == 1


# --- mark prices as inputs (``mark_inputs``) ------------------------------------------------------


def marks(*rows, data_class: int = CLASS_PERPETUAL) -> np.ndarray:
    """``(provider, venue, price, ts)`` mark prices of instrument 0."""
    return make_records([(0, *r[:2], KIND_MARK, *r[2:4], 0.0, data_class) for r in rows])


def perp_trades(*rows) -> np.ndarray:
    """``(provider, venue, price, ts[, size])`` trades of instrument 0, a perpetual."""
    return make_records(
        [(0, r[0], r[1], KIND_TRADE, r[2], r[3], r[4] if len(r) > 4 else 1.0, CLASS_PERPETUAL)
         for r in rows]
    )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data_class", [CLASS_PERPETUAL, CLASS_FUTURE])
def test_a_mark_only_instrument_is_priced_at_its_mark(method, data_class):
    b = book(method, mark_inputs=True)
    assert b.update(marks((0, 0, 101.25, S), data_class=data_class)) == 0
    out = b.compute(S)
    assert out.price.tolist() == [101.25]
    assert out.sources.tolist() == [1] and out.marks.tolist() == [1]
    assert out.venues.tolist() == [1] and out.status.tolist() == [fm.FAIR_SINGLE_SOURCE]
    # the mark's slot, never the source's trade / quote state
    assert np.isnan(b.arrays.last_price[0, 0]) and b.arrays.last_price[0, 1] == 101.25
    assert out.reasons[0].tolist() == [3, 3, 3, 3]  # no trade or quote of any source
    assert out.mark_reasons[0].tolist() == [0, 3, 3, 3]  # source 0's mark used


# A trade at 100 (size 1) and the same source's mark at 101. The median methods take both;
# the volume-weighted ones weigh the mark as a source without traded volume.
MIXED = {
    "two_level": 100.5,  # the venue's median of its two inputs
    "median": 100.5,
    "trimmed_mean": 100.5,
    "inverse_variance": 100.0,  # weights ¾ (½ volume + ¼ variance) and ¼
    "windowed_vwm": 100.0,  # the bucket's volume-weighted median: the mark weighs 0
}


@pytest.mark.parametrize("method", METHODS)
def test_mixed_trades_and_marks_per_method(method):
    b = book(method, mark_inputs=True)
    b.update(perp_trades((0, 0, 100.0, S)))
    b.update(marks((0, 0, 101.0, S)))
    out = b.compute(S)
    assert out.price.tolist() == [MIXED[method]]
    assert out.sources.tolist() == [2] and out.marks.tolist() == [1]
    assert out.venues.tolist() == [1]  # a mark is its venue's view, not a venue of its own
    assert out.status.tolist() == [fm.FAIR_DEGRADED]  # one venue, min_venues 2
    assert out.reasons[0].tolist() == [0, 3, 3, 3] and out.mark_reasons[0].tolist() == [0, 3, 3, 3]
    # Neither overwrote the other: a later trade moves only the trade slot.
    b.update(perp_trades((0, 0, 100.2, S + 1)))
    assert b.arrays.last_price[0, :2].tolist() == [100.2, 101.0]
    # Without mark inputs the same records give the trade alone.
    off = book(method)
    assert off.update(marks((0, 0, 101.0, S))) == 1  # skipped
    off.update(perp_trades((0, 0, 100.0, S)))
    out = off.compute(S)
    assert out.price.tolist() == [100.0] and out.sources.tolist() == [1]
    assert out.marks.tolist() == [0] and out.mark_reasons.shape == (1, 0)


@pytest.mark.parametrize("data_class", [CLASS_SPOT, CLASS_OPTION, 0])
def test_marks_of_other_data_classes_are_never_inputs(data_class):
    b = book("median", mark_inputs=True)
    assert b.update(marks((0, 0, 101.0, S), data_class=data_class)) == 1
    assert len(b.compute(S).price) == 0 and np.isnan(b.arrays.last_price).all()
    # an index price is no input either
    index = marks((0, 0, 99.0, S))
    index["kind"] = KIND_INDEX
    assert b.update(index) == 1


def test_marks_go_stale_are_gated_and_counted_as_their_own_inputs():
    b = book("median", mark_inputs=True, stale_after=1.0, min_venues=1)
    # three venues trade at 100; venue 2's mark is 10 % off: the gate excludes the mark alone
    b.update(perp_trades((0, 0, 100.0, S), (0, 1, 100.0, S), (0, 2, 100.0, S)))
    b.update(marks((0, 2, 110.0, S)))
    out = b.compute(S)
    assert out.price.tolist() == [100.0] and out.sources.tolist() == [3]
    assert out.marks.tolist() == [0]
    assert out.reasons[0].tolist() == [0, 0, 0, 3]
    assert out.mark_reasons[0].tolist() == [3, 3, fm.REASON_OUTLIER, 3]
    # the trades go stale, the mark (now in line) stays fresh: the mark alone prices it
    b.update(marks((0, 2, 100.5, 3 * S)))
    out = b.compute(3 * S)
    assert out.price.tolist() == [100.5] and out.marks.tolist() == [1]
    assert out.reasons[0].tolist() == [1, 1, 1, 3]
    assert out.mark_reasons[0].tolist() == [3, 3, 0, 3]
    # the mark stale, a trade at the same price instead: only the mark count changed, and
    # that is a change (published at once, not at the next heartbeat)
    b.update(perp_trades((0, 2, 100.5, 5 * S)))
    out = b.compute(5 * S)
    assert out.price.tolist() == [100.5] and out.sources.tolist() == [1]
    assert out.status.tolist() == [fm.FAIR_SINGLE_SOURCE] and out.marks.tolist() == [0]
    assert out.mark_reasons[0].tolist() == [3, 3, fm.REASON_STALE, 3]


def test_mark_slots_follow_sources_registered_live():
    from fairfeed.core.config import FairConfig

    reg = Registry.build(
        [("BTC-USDT-PERP", CLASS_PERPETUAL)], [("binance-f", "BINANCE"), ("kraken-f", "KRAKEN")]
    )
    b = fm.FairBook.from_config(reg, FairConfig(mark_inputs=True), n_instruments=4, n_sources=3)
    assert b.arrays.last_price.shape == (4, 6) and b.params.n_sources == 4
    assert b.arrays.group_start.tolist() == [0, 2, 4]
    b.set_source_venues([0, 1, 0])  # a second vendor of venue 0: its two slots join it
    assert b.params.n_sources == 6 and b.arrays.group_start.tolist() == [0, 4, 6]
    assert sorted(b.arrays.group_src[:4].tolist()) == [0, 1, 4, 5]
    with pytest.raises(ValueError):
        b.set_source_venues([0, 1, 0, 1])
