"""Anomaly kernels against their plain-Python oracles, plus hand-checked episodes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_FUNDING,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_STATUS,
    KIND_TRADE,
    NO_INSTRUMENT,
    RECORD_DTYPE,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.hotpath import anomaly as an
from fairfeed.hotpath.anomaly_reference import evaluate_reference, update_reference

S = 1_000_000_000
T0 = 1_700_000_000 * S
# 3 instruments (2 classes), 4 sources: providers 0-2, provider 3 shares venue 2 with provider 2
CLASSES = [1, 1, 3]
SOURCES = [(0, 0), (1, 1), (2, 2), (3, 2)]
SUBS = [(i, s) for i in range(3) for s in range(4) if not (i == 2 and s == 0)]


def make_state(thr_scale: float = 1.0, max_events: int = 256, n_rings: int = 2) -> an.AnomalyState:
    thr = an.threshold_rows(len(SUBS))
    for name in ("no_data", "first_data", "div_for", "lat_for", "rate_for"):
        thr[name] = 2 * S * thr_scale
    thr["lat_ex"] = thr["lat_local"] = 200e6
    g = an.default_globals()._replace(hb_timeout=3.0 * S, gap_quiet=2.0 * S, rate_base=20.0 * S)
    state = an.AnomalyState(CLASSES, SOURCES, 4, 3, SUBS, thr, g, n_rings, T0, max_events)
    state.provs["derivs_data"][3] = 1  # provider 3 streams derivatives values only
    return state


def rec(kind, inst, src, ts, price=100.0, flags=0, size=1.0, tex=0, tpr=0) -> np.ndarray:
    r = np.zeros(1, RECORD_DTYPE)
    p, v = SOURCES[src]
    r["kind"], r["instrument"], r["provider"], r["venue"] = kind, inst, p, v
    r["ts_receive"], r["price"], r["flags"], r["size"] = ts, price, flags, size
    r["ts_exchange"], r["ts_provider"] = tex, tpr
    return r


def run_both(state, steps, fair_of):
    """Apply ``steps`` (records or an evaluation time) to the kernel and the oracle."""
    ref = copy.deepcopy(state)
    got, want = [], []
    for step in steps:
        if callable(step):  # a live change, applied to both
            step(state)
            step(ref)
        elif isinstance(step, np.ndarray):
            a = state.update(step)
            b = update_reference(step, len(step), ref.sub_table, ref.source_table, ref.subs,
                                 ref.provs, ref.bursts, ref.sub_bursts)  # fmt: skip
            assert a == b
        else:
            now, dropped = step
            fair = fair_of(now)
            ei, ef = state.evaluate(now, fair, dropped)
            got.append((ei.copy(), ef.copy()))
            m = evaluate_reference(now, ref.thr, ref.gthr, ref.layout, ref.arrays, dropped, fair,
                                   ref.ev_i, ref.ev_f)  # fmt: skip
            want.append((ref.ev_i[:m].copy(), ref.ev_f[:m].copy()))
    for (gi, gf), (wi, wf) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_allclose(gf, wf, rtol=1e-12, equal_nan=True)
    for name in ("subs", "provs", "bursts", "sub_bursts", "onset", "active", "sub_open",
                 "group_open", "spreads", "clock", "meas"):  # fmt: skip
        assert_same(getattr(state, name), getattr(ref, name), name)
    return got


def assert_same(got: np.ndarray, want: np.ndarray, name: str) -> None:
    """Integers equal, floats equal to 1e-12 (NaN = NaN), field by field."""
    for field in got.dtype.names or [None]:
        g, w = (got, want) if field is None else (got[field], want[field])
        what = name if field is None else f"{name}.{field}"
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-12, equal_nan=True, err_msg=what)
        else:
            np.testing.assert_array_equal(g, w, err_msg=what)


KINDS = [KIND_TRADE, KIND_BID, KIND_ASK, KIND_HEARTBEAT, KIND_STATUS, KIND_GAP, KIND_MARK,
         KIND_FUNDING, KIND_LIQUIDATION, 99]  # fmt: skip
_record = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 3),  # instrument (3 = unknown)
    st.integers(0, 3),  # source
    st.integers(0, 400),  # ms after the batch time
    st.sampled_from([94.0, 100.0, 100.5, 108.0, float("nan")]),
    st.sampled_from([STATUS_CONNECTED, STATUS_DISCONNECTED, STATUS_SUBSCRIBE_ERROR, 7]),
    st.sampled_from([(0, 0), (1, 2), (3, 0), (900, 1), (0, -150)]),  # exchange, provider lags ms
)
_step = st.one_of(
    st.lists(_record, min_size=1, max_size=12).map(lambda rs: ("recs", rs)),
    st.tuples(st.integers(50, 3000), st.integers(0, 3)).map(lambda t: ("eval", t)),
    st.integers(0, len(SUBS) - 1).map(lambda k: ("toggle", k)),  # unsubscribe / re-subscribe
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_step, min_size=1, max_size=60), st.integers(1, 40), st.booleans())
def test_kernels_match_the_oracle(steps, cap, fair_moves) -> None:
    state = make_state(max_events=cap)
    state_rows = state.thr.copy()
    now = T0
    plan = []
    dropped = np.zeros(2, np.int64)
    for what, arg in steps:
        if what == "recs":
            batch = np.concatenate([
                rec(kind, NO_INSTRUMENT if kind in (KIND_HEARTBEAT, KIND_STATUS) else inst,
                    src, now + ms * 1_000_000, price, flags, 3.0,
                    now - (lags[0] + lags[1]) * 1_000_000 if lags[0] else 0,
                    now - lags[1] * 1_000_000 if lags[1] else 0)
                for kind, inst, src, ms, price, flags, lags in arg
            ])  # fmt: skip
            plan.append(batch)
        elif what == "toggle":

            def toggle(state, k=arg, now=now):
                if state.monitored[k]:
                    state.disable(k)
                else:
                    state.enable(k, state_rows[k], now)

            plan.append(toggle)
        else:
            now += arg[0] * 1_000_000
            dropped = dropped + np.array([arg[1] // 2, arg[1] % 2])
            plan.append((now, dropped.copy()))

    def fair_of(t):
        return np.array([100.0, 101.0 if fair_moves and t % 2 else 100.0, np.nan])

    run_both(state, plan, fair_of)


def _feed(state, t, insts=(0, 1, 2), srcs=(0, 1, 2, 3), price=100.0, hb=True):
    rows = [rec(KIND_TRADE, i, s, t, price) for i in insts for s in srcs if (i, s) in SUBS]
    if hb:
        rows += [rec(KIND_HEARTBEAT, NO_INSTRUMENT, s, t) for s in range(4)]
    state.update(np.concatenate(rows))


def _events(state, until, step=S // 4, fair=100.0, feed=None):
    out = []
    t = int(state.clock[0]["last_eval"]) or T0
    while t < until:
        t += step
        if feed is not None:
            feed(t)
        ei, _ = state.evaluate(t, np.full(3, fair))
        out += [(t, *row) for row in ei.tolist()]
    return out


def test_silent_provider_with_heartbeats_is_one_provider_event_and_ends_once() -> None:
    state = make_state()
    _events(state, T0 + 5 * S, feed=lambda t: _feed(state, t))
    # provider 1 stops data but keeps heartbeats
    ev = _events(
        state, T0 + 12 * S,
        feed=lambda t: (_feed(state, t, srcs=(0, 2, 3)),
                        state.update(rec(KIND_HEARTBEAT, NO_INSTRUMENT, 1, t))),
    )  # fmt: skip
    assert [(e[1 + an.E_KIND], e[1 + an.E_LEVEL], e[1 + an.E_PROVIDER]) for e in ev] == [
        (an.A_NO_DATA, an.LV_PROVIDER, 1)
    ]
    assert ev[0][0] - (T0 + 5 * S) <= 2 * S + S // 4
    ev = _events(state, T0 + 20 * S, feed=lambda t: _feed(state, t))
    assert [(e[1 + an.E_KIND], e[1 + an.E_PHASE]) for e in ev] == [(an.A_NO_DATA, an.PHASE_END)]


def test_stall_without_heartbeats_is_a_disconnect_not_no_data() -> None:
    state = make_state()
    _events(state, T0 + 5 * S, feed=lambda t: _feed(state, t))
    ev = _events(state, T0 + 12 * S, feed=lambda t: _feed(state, t, srcs=(0, 2, 3), hb=False))
    kinds = [(e[1 + an.E_KIND], e[1 + an.E_PHASE], e[1 + an.E_PROVIDER]) for e in ev]
    assert kinds == [(an.A_DISCONNECT, an.PHASE_START, 1)]
    ev = _events(state, T0 + 20 * S, feed=lambda t: _feed(state, t))
    assert [(e[1 + an.E_KIND], e[1 + an.E_PHASE]) for e in ev] == [(an.A_DISCONNECT, an.PHASE_END)]


def test_short_disconnect_between_evaluations_gives_start_and_end() -> None:
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))
    t = T0 + 3 * S
    state.update(np.concatenate([
        rec(KIND_STATUS, NO_INSTRUMENT, 0, t + 10, flags=STATUS_DISCONNECTED),
        rec(KIND_STATUS, NO_INSTRUMENT, 0, t + 20, flags=STATUS_CONNECTED),
    ]))  # fmt: skip
    ev = _events(state, T0 + 6 * S, feed=lambda t: _feed(state, t))
    got = [(e[1 + an.E_KIND], e[1 + an.E_PHASE], e[1 + an.E_START], e[1 + an.E_END]) for e in ev]
    assert got == [(an.A_DISCONNECT, 0, t + 10, 0), (an.A_DISCONNECT, 1, t + 10, t + 20)]


def test_divergence_needs_the_duration_and_clears_with_hysteresis() -> None:
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))

    def spike(t):
        _feed(state, t)
        if t == T0 + 3 * S + S // 4:
            state.update(rec(KIND_TRADE, 0, 1, t, 107.0))  # one tick, 7 % off

    assert _events(state, T0 + 8 * S, feed=spike) == []

    def offset(t, price):
        _feed(state, t)
        state.update(rec(KIND_TRADE, 0, 1, t, price))

    ev = _events(state, T0 + 12 * S, feed=lambda t: offset(t, 107.0))
    assert [(e[1 + an.E_KIND], e[1 + an.E_LEVEL], e[1 + an.E_INSTRUMENT]) for e in ev] == [
        (an.A_DIVERGENCE, an.LV_SUB, 0)
    ]
    assert _events(state, T0 + 14 * S, feed=lambda t: offset(t, 105.0)) == []  # above clear
    ev = _events(state, T0 + 16 * S, feed=lambda t: offset(t, 103.0))
    assert [(e[1 + an.E_KIND], e[1 + an.E_PHASE]) for e in ev] == [(an.A_DIVERGENCE, 1)]


def test_gap_burst_and_ring_overflow() -> None:
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))
    t = T0 + 3 * S
    state.update(np.concatenate([rec(KIND_GAP, i, 2, t + i, size=4.0) for i in range(3)]))
    ei, ef = state.evaluate(t + S // 4, np.full(3, 100.0), np.array([0, 17]))
    rows = sorted(zip(ei.tolist(), ef.tolist(), strict=True))
    assert [(r[0][an.E_KIND], r[0][an.E_PROVIDER], r[0][an.E_VENUE], r[1][:2]) for r in rows] == [
        (an.A_GAP, 2, 2, [3.0, 12.0]),
        (an.A_RING_OVERFLOW, -1, -1, [17.0, 17.0]),
    ]
    ev = _events(state, T0 + 8 * S, feed=lambda t: _feed(state, t))
    assert sorted(e[1 + an.E_KIND] for e in ev if e[1 + an.E_PHASE] == 1) == [
        an.A_GAP, an.A_RING_OVERFLOW,
    ]  # fmt: skip


def _gap_rows(ev):
    return [
        (e[1 + an.E_PHASE], e[1 + an.E_LEVEL], e[1 + an.E_INSTRUMENT], e[1 + an.E_COUNT])
        for e in ev
        if e[1 + an.E_KIND] == an.A_GAP
    ]


def test_a_second_instrument_gapping_during_the_first_ones_episode_has_its_own() -> None:
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))
    t = T0 + 3 * S
    state.update(rec(KIND_GAP, 0, 1, t + 1, size=5.0))
    ev = _events(state, t + S, feed=lambda t: _feed(state, t))
    state.update(rec(KIND_GAP, 1, 1, t + S + 1, size=7.0))  # instrument 0's episode is open
    ev += _events(state, t + 8 * S, feed=lambda t: _feed(state, t))
    assert _gap_rows(ev) == [
        (an.PHASE_START, an.LV_SUB, 0, 1), (an.PHASE_START, an.LV_SUB, 1, 1),
        (an.PHASE_END, an.LV_SUB, 0, 1), (an.PHASE_END, an.LV_SUB, 1, 1),
    ]  # fmt: skip
    subjects = [(e[1 + an.E_PROVIDER], e[1 + an.E_VENUE], e[1 + an.E_CLASS]) for e in ev]
    assert subjects == [(1, 1, CLASSES[0]), (1, 1, CLASSES[1])] * 2


def test_gaps_of_many_instruments_at_once_are_one_event_of_their_source() -> None:
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))
    t = T0 + 3 * S
    state.update(np.concatenate([rec(KIND_GAP, i, 1, t + i, size=2.0) for i in range(3)]))
    ev = _events(state, t + S, feed=lambda t: _feed(state, t))
    state.update(rec(KIND_GAP, 0, 1, t + S + 1, size=4.0))  # joins the open source episode
    ev += _events(state, t + 8 * S, feed=lambda t: _feed(state, t))
    assert _gap_rows(ev) == [
        (an.PHASE_START, an.LV_SOURCE, -1, 3),
        (an.PHASE_END, an.LV_SOURCE, -1, 3),
    ]
    state.update(rec(KIND_GAP, 2, 1, t + 8 * S + 1, size=1.0))  # after it: its own again
    ev = _events(state, t + 9 * S, feed=lambda t: _feed(state, t))
    assert _gap_rows(ev) == [(an.PHASE_START, an.LV_SUB, 2, 1)]


def test_gaps_of_two_instruments_straddling_an_evaluation_are_one_source_event() -> None:
    """Instrument 0's gap arrives just before an evaluation, instrument 1's just after it (the
    same fault; records of two streams reach the kernels a few ms apart): one source episode,
    not two subscription episodes. A lone gap still gets its own, one evaluation later."""
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))
    t = int(state.clock[0]["last_eval"])
    state.update(rec(KIND_GAP, 0, 1, t + S // 4 - 1, size=2.0))
    ev = _events(state, t + S // 4, feed=lambda t: _feed(state, t))  # sees instrument 0's only
    assert _gap_rows(ev) == []  # held for one evaluation
    state.update(rec(KIND_GAP, 1, 1, t + S // 4 + 1, size=3.0))
    ev += _events(state, t + 8 * S, feed=lambda t: _feed(state, t))
    assert _gap_rows(ev) == [
        (an.PHASE_START, an.LV_SOURCE, -1, 2),
        (an.PHASE_END, an.LV_SOURCE, -1, 2),
    ]
    t = int(state.clock[0]["last_eval"])
    state.update(rec(KIND_GAP, 2, 1, t + 1, size=1.0))
    first = _events(state, t + S // 4, feed=lambda t: _feed(state, t))
    then = _events(state, t + S // 2, feed=lambda t: _feed(state, t))
    assert _gap_rows(first) == [] and _gap_rows(then) == [(an.PHASE_START, an.LV_SUB, 2, 1)]


def test_a_gap_in_a_connection_sequence_is_an_event_of_its_source() -> None:
    state = make_state()
    _events(state, T0 + 3 * S, feed=lambda t: _feed(state, t))
    t = T0 + 3 * S
    state.update(rec(KIND_GAP, NO_INSTRUMENT, 3, t + 1, size=9.0))
    ei, ef = state.evaluate(t + S // 4, np.full(3, 100.0))
    assert ei[:, an.E_LEVEL].tolist() == [an.LV_SOURCE]
    assert ei[0, [an.E_PROVIDER, an.E_VENUE, an.E_COUNT]].tolist() == [3, 2, 0]
    assert ef[0, :2].tolist() == [1.0, 9.0]


def test_growing_the_monitored_set_continues_open_episodes() -> None:
    """A state rebuilt with one more subscription (new instrument, source, provider and venue)
    and carried over emits exactly the events the old state emits for the old subscriptions:
    no episode restarts, none loses its end."""
    old = make_state()
    _events(old, T0 + 5 * S, feed=lambda t: _feed(old, t))

    def trouble(state, t):  # provider 1 silent (heartbeats on); source 2 off by 8 % on instrument 1
        _feed(state, t, srcs=(0, 2, 3))
        state.update(rec(KIND_HEARTBEAT, NO_INSTRUMENT, 1, t))
        state.update(rec(KIND_TRADE, 1, 2, t, 108.0))

    _events(old, T0 + 9 * S, feed=lambda t: trouble(old, t))
    assert old.open_count() == 2  # the provider's silence, the outlier's divergence

    sources = [*SOURCES, (4, 3)]
    thr = np.concatenate([old.thr, old.thr[:1]])
    grown = an.AnomalyState(
        [*CLASSES, 3], sources, 5, 4, [*SUBS, (3, 4)], thr, old.gthr, 2, T0 + 9 * S, 256
    )
    grown.carry_over(old)
    control = old  # goes on alone, as if nothing had been added

    def new_sub(t):
        r = rec(KIND_TRADE, 3, 0, t)
        r["provider"], r["venue"] = 4, 3
        h = rec(KIND_HEARTBEAT, NO_INSTRUMENT, 0, t)
        h["provider"], h["venue"] = 4, 3
        grown.update(np.concatenate([r, h]))

    got, want = [], []
    t = T0 + 9 * S
    while t < T0 + 20 * S:
        t += S // 4
        for state, out, n in ((grown, got, 4), (control, want, 3)):
            (trouble if t < T0 + 13 * S else lambda s, t: _feed(s, t))(state, t)
            if state is grown:
                new_sub(t)
            ei, _ = state.evaluate(t, np.full(n, 100.0))
            out += [(t, *row) for row in ei.tolist()]
    assert got == want
    ends = {(e[1 + an.E_KIND], e[1 + an.E_LEVEL]) for e in want if e[1 + an.E_PHASE] == 1}
    assert ends == {
        (an.A_NO_DATA, an.LV_PROVIDER),
        (an.A_DIVERGENCE, an.LV_SUB),
    }
    assert not [e for e in want if e[1 + an.E_PHASE] == 0]  # nothing restarted
    assert grown.open_count() == control.open_count() == 0


def test_carry_over_refuses_a_reordered_subscription_list() -> None:
    old = make_state()
    reordered = list(reversed(SUBS))
    thr = an.threshold_rows(len(SUBS))
    new = an.AnomalyState(CLASSES, SOURCES, 4, 3, reordered, thr, old.gthr, 2, T0, 256)
    with pytest.raises(ValueError, match="old subscriptions must come first"):
        new.carry_over(old)


def _provider_silent(state, t):  # provider 1 stops data, keeps heartbeats
    _feed(state, t, srcs=(0, 2, 3))
    state.update(rec(KIND_HEARTBEAT, NO_INSTRUMENT, 1, t))


def test_an_unsubscribed_stream_leaves_the_roll_up_of_its_provider() -> None:
    state = make_state()
    _events(state, T0 + 5 * S, feed=lambda t: _feed(state, t))
    state.disable(SUBS.index((0, 1)))  # provider 1 keeps instruments 1 and 2
    ev = _events(state, T0 + 12 * S, feed=lambda t: _provider_silent(state, t))
    got = [(e[1 + an.E_KIND], e[1 + an.E_LEVEL], e[1 + an.E_PROVIDER], e[1 + an.E_COUNT])
           for e in ev]  # fmt: skip
    assert got == [(an.A_NO_DATA, an.LV_PROVIDER, 1, 2)]  # one event, for its two streams


def test_an_open_group_ends_when_its_members_are_unsubscribed() -> None:
    state = make_state()
    _events(state, T0 + 5 * S, feed=lambda t: _feed(state, t))
    ev = _events(state, T0 + 12 * S, feed=lambda t: _provider_silent(state, t))
    assert [(e[1 + an.E_LEVEL], e[1 + an.E_PHASE]) for e in ev] == [(an.LV_PROVIDER, 0)]
    for inst in (0, 1):
        state.disable(SUBS.index((inst, 1)))
    # one silent member left: the provider episode goes on (it covers the last stream)
    assert _events(state, T0 + 14 * S, feed=lambda t: _provider_silent(state, t)) == []
    state.disable(SUBS.index((2, 1)))
    ev = _events(state, T0 + 15 * S, feed=lambda t: _provider_silent(state, t))
    got = [(e[1 + an.E_KIND], e[1 + an.E_LEVEL], e[1 + an.E_PHASE], e[1 + an.E_COUNT]) for e in ev]
    assert got == [(an.A_NO_DATA, an.LV_PROVIDER, an.PHASE_END, 0)]
    assert state.open_count() == 0


def test_a_heartbeat_just_before_a_stall_does_not_make_it_no_data() -> None:
    """The connection dies right after a heartbeat that followed the last record: a dead
    connection (disconnect once the heartbeat timeout passes), not an alive-but-silent one."""
    state = make_state()
    _events(state, T0 + 5 * S, feed=lambda t: _feed(state, t))
    t_stall = T0 + 5 * S
    state.update(rec(KIND_HEARTBEAT, NO_INSTRUMENT, 1, t_stall + 10_000_000))

    def others(t):  # the other providers go on, data and heartbeats
        _feed(state, t, srcs=(0, 2, 3), hb=False)
        state.update(np.concatenate([rec(KIND_HEARTBEAT, NO_INSTRUMENT, s, t) for s in (0, 2, 3)]))

    ev = _events(state, T0 + 12 * S, feed=others)
    kinds = [(e[1 + an.E_KIND], e[1 + an.E_PHASE], e[1 + an.E_PROVIDER]) for e in ev]
    assert kinds == [(an.A_DISCONNECT, an.PHASE_START, 1)]


def _pair_state(sources, n_prov, n_venue) -> an.AnomalyState:
    """One instrument on each of ``sources`` (2 s thresholds, 6 % divergence, 4 % clear)."""
    thr = an.threshold_rows(len(sources))
    for name in ("no_data", "first_data", "div_for", "lat_for", "rate_for"):
        thr[name] = 2 * S
    thr["div"], thr["div_clear"] = 0.06, 0.04
    subs = [(0, s) for s in range(len(sources))]
    return an.AnomalyState([1], sources, n_prov, n_venue, subs, thr, an.default_globals(), 0, T0)


def _pair_events(state, sources, until, prices, fair=None):
    """Trades at ``prices(t)`` (one per source), evaluated every 250 ms up to ``until``."""
    out, t = [], int(state.clock[0]["last_eval"]) or T0
    while t < until:
        t += S // 4
        rows = []
        for s, price in enumerate(prices(t)):
            r = np.zeros(1, RECORD_DTYPE)
            r["kind"], r["instrument"], (r["provider"], r["venue"]) = KIND_TRADE, 0, sources[s]
            r["ts_receive"], r["price"] = t, price
            rows.append(r)
        state.update(np.concatenate(rows))
        ei, ef = state.evaluate(t, np.array([fair(t) if fair else np.nan]))
        out += [(t, *ri, *rf) for ri, rf in zip(ei.tolist(), ef.tolist(), strict=True)]
    return out


def _brief(e):
    return (e[1 + an.E_KIND], e[1 + an.E_PHASE], e[1 + an.E_LEVEL], e[1 + an.E_PROVIDER],
            e[1 + an.E_VENUE], e[1 + an.E_PEER_PROVIDER], e[1 + an.E_PEER_VENUE])  # fmt: skip


@pytest.mark.parametrize("sources", [[(0, 0), (1, 1)], [(0, 0), (1, 0)]], ids=["2venues", "1venue"])
def test_two_sources_8pct_apart_are_one_pair_event_naming_both(sources) -> None:
    """With two sources the fair price is their midpoint (each 4 % off): only the pair sees it.
    On one venue too, and no ``venue_divergence`` besides."""
    state = _pair_state(sources, 2, 2)
    mid = lambda t: 104.0  # noqa: E731 - the fair price of two sources 8 % apart
    assert _pair_events(state, sources, T0 + 3 * S, lambda t: (100.0, 100.0), mid) == []
    t1 = T0 + 3 * S
    ev = _pair_events(state, sources, T0 + 8 * S, lambda t: (100.0, 108.0), mid)
    assert [_brief(e) for e in ev] == [(an.A_DIVERGENCE, 0, an.LV_PAIR, *sources[1], *sources[0])]
    assert ev[0][0] - t1 <= 2 * S + S // 4  # the duration, then the next evaluation
    assert ev[0][1 + an.N_EI] == pytest.approx(0.08)
    ev = _pair_events(state, sources, T0 + 10 * S, lambda t: (100.0, 105.0), mid)
    assert ev == []  # above the clear threshold
    ev = _pair_events(state, sources, T0 + 12 * S, lambda t: (101.0, 100.0), mid)
    # the end names the start's sources in the start's order, though the other is higher now
    assert [_brief(e) for e in ev] == [(an.A_DIVERGENCE, 1, an.LV_PAIR, *sources[1], *sources[0])]
    assert ev[0][1 + an.N_EI + 1 : 1 + an.N_EI + 3] == (100.0, 101.0)  # its price, the peer's
    assert state.open_count() == 0


def test_small_offsets_and_single_spikes_raise_nothing() -> None:
    sources = [(0, 0), (1, 1)]
    state = _pair_state(sources, 2, 2)
    assert _pair_events(state, sources, T0 + 6 * S, lambda t: (100.0, 100.3)) == []
    spike = T0 + 7 * S
    ev = _pair_events(state, sources, T0 + 12 * S,
                      lambda t: (100.0, 110.0 if t == spike else 100.0))  # fmt: skip
    assert ev == []


def test_three_sources_name_the_outlier_and_its_peer() -> None:
    sources = [(0, 0), (1, 1), (2, 2)]
    state = _pair_state(sources, 3, 3)
    ev = _pair_events(state, sources, T0 + 6 * S, lambda t: (100.0, 100.1, 92.0))
    assert [_brief(e) for e in ev] == [(an.A_DIVERGENCE, 0, an.LV_SUB, 2, 2, 1, 1)]
    assert ev[0][1 + an.N_EI] == pytest.approx(92.0 / 100.0 - 1.0)  # from the median
    ev = _pair_events(state, sources, T0 + 9 * S, lambda t: (100.0, 100.1, 100.0))
    assert [_brief(e)[:3] for e in ev] == [(an.A_DIVERGENCE, 1, an.LV_SUB)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([92.0, 100.0, 100.3, 108.0]),
                          st.integers(1, 8)), min_size=1, max_size=40))  # fmt: skip
def test_pair_and_outlier_kernels_match_the_oracle(steps) -> None:
    """Each step: which of 4 sources (0 = all) trade, at which price, then an evaluation after
    ``n`` x 250 ms (so sources go stale and the fresh count moves through 1, 2, 3, 4)."""
    sources = [(0, 0), (1, 1), (2, 1), (3, 2)]
    state = _pair_state(sources, 4, 3)
    plan, now = [], T0
    for who, price, wait in steps:
        batch = []
        for s in range(4) if who == 0 else [who]:
            r = np.zeros(1, RECORD_DTYPE)
            r["kind"], r["instrument"], (r["provider"], r["venue"]) = KIND_TRADE, 0, sources[s]
            r["ts_receive"], r["price"] = now, price if s else 100.0
            batch.append(r)
        plan.append(np.concatenate(batch))
        now += wait * S // 4
        plan.append((now, np.zeros(0, np.int64)))
    run_both(state, plan, lambda t: np.array([100.0 + (t // S) % 3]))


def _pairs_of(n_inst, sources, max_events=256) -> an.AnomalyState:
    """``n_inst`` instruments on each of ``sources`` (as :func:`_pair_state`)."""
    subs = [(i, s) for i in range(n_inst) for s in range(len(sources))]
    thr = an.threshold_rows(len(subs))
    for name in ("no_data", "first_data", "div_for", "lat_for", "rate_for"):
        thr[name] = 2 * S
    thr["div"], thr["div_clear"] = 0.06, 0.04
    n_prov = max(p for p, _v in sources) + 1
    n_venue = max(v for _p, v in sources) + 1
    return an.AnomalyState([1] * n_inst, sources, n_prov, n_venue, subs, thr,
                           an.default_globals(), 0, T0, max_events)  # fmt: skip


def _trades(sources, t, prices) -> np.ndarray:
    """One trade per (instrument, source) at ``prices[instrument][source]`` (NaN: none)."""
    rows = []
    for i, row in enumerate(prices):
        for s, price in enumerate(row):
            if price == price:
                r = np.zeros(1, RECORD_DTYPE)
                r["kind"], r["instrument"], (r["provider"], r["venue"]) = KIND_TRADE, i, sources[s]
                r["ts_receive"], r["price"] = t, price
                rows.append(r)
    return np.concatenate(rows)


def test_a_source_off_on_every_instrument_is_one_source_pair_event() -> None:
    """Two sources, one of them 8 % off on three instruments: one `pair` event over them (no
    instrument), which a fourth instrument joins, and which ends once all are back."""
    sources = [(0, 0), (1, 1)]
    state = _pairs_of(4, sources)
    out, t = [], T0

    def run(until, prices):
        nonlocal t
        while t < until:
            t += S // 4
            state.update(_trades(sources, t, prices))
            ei, ef = state.evaluate(t, np.full(4, np.nan))
            out.extend((t, ri, rf) for ri, rf in zip(ei.tolist(), ef.tolist(), strict=True))

    run(T0 + 3 * S, [(100.0, 100.0)] * 4)
    assert out == []
    run(T0 + 6 * S, [(100.0, 108.0)] * 3 + [(100.0, 100.0)])
    run(T0 + 10 * S, [(100.0, 108.0)] * 4)  # the fourth joins the open episode
    assert len(out) == 1
    _t, ri, rf = out[0]
    assert (ri[an.E_KIND], ri[an.E_PHASE], ri[an.E_LEVEL], ri[an.E_INSTRUMENT]) == (
        an.A_DIVERGENCE, an.PHASE_START, an.LV_PAIR, -1,
    )  # fmt: skip
    assert (ri[an.E_PROVIDER], ri[an.E_PEER_PROVIDER], ri[an.E_COUNT]) == (1, 0, 6)
    assert rf[:3] == pytest.approx([0.08, 108.0, 100.0])
    run(T0 + 12 * S, [(100.0, 100.0)] * 2 + [(100.0, 108.0)] * 2)  # still two of them
    assert len(out) == 1
    run(T0 + 14 * S, [(100.0, 100.0)] * 4)
    assert len(out) == 2
    _t, ri, rf = out[1]
    assert (ri[an.E_PHASE], ri[an.E_INSTRUMENT], ri[an.E_COUNT]) == (an.PHASE_END, -1, 8)
    assert state.open_count() == 0
    # one instrument alone afterwards: its own episode
    run(T0 + 18 * S, [(100.0, 100.0)] * 3 + [(100.0, 108.0)])
    assert [(ri[an.E_PHASE], ri[an.E_INSTRUMENT]) for _t, ri, _f in out[2:]] == [(0, 3)]


@settings(max_examples=150, deadline=None)
@given(
    # biased towards every instrument and the pair trading at once: source-pair episodes
    st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 3, 3]), st.sampled_from([0, 0, 0, 1, 2, 3]),
                       st.sampled_from([92.0, 100.0, 100.3, 108.0]), st.integers(1, 4)),
             min_size=1, max_size=50),
    st.integers(1, 12),
)  # fmt: skip
def test_source_pair_roll_up_matches_the_oracle(steps, cap) -> None:
    """Each step: which instrument (3 = all) and source (0 = the first two, the pair) trade at
    which price (source 0 at 100), then an evaluation after ``n`` x 250 ms (sources go stale,
    the fresh count moves through 1, 2, 3); a small event buffer defers."""
    sources = [(0, 0), (1, 1), (2, 1)]
    state = _pairs_of(3, sources, cap)
    plan, now = [], T0
    for inst, who, price, wait in steps:
        prices = [[np.nan] * 3 for _ in range(3)]
        for i in range(3) if inst == 3 else [inst]:
            for s in (0, 1) if who == 0 else [who - 1]:
                prices[i][s] = price if s else 100.0
        plan.append(_trades(sources, now, prices))
        now += wait * S // 4
        plan.append((now, np.zeros(0, np.int64)))
    run_both(state, plan, lambda t: np.full(3, 100.0 + (t // S) % 3))


def test_derivatives_values_are_data_only_for_a_provider_that_streams_nothing_else() -> None:
    """Source 3's provider streams derivatives values only (Kaiko's metrics alone): its marks
    keep its subscriptions out of no-data and leave their price alone. Source 0's marks (its
    provider streams trades) are not data: its subscriptions go quiet."""
    state = make_state()
    subs = [(i, s) for i, s in SUBS if s in (0, 3)]
    events = []
    for step in range(1, 11):  # 5 s of marks every 0.5 s, evaluated each time
        now = T0 + step * S // 2
        state.update(np.concatenate([rec(KIND_MARK, i, s, now, price=50.0) for i, s in subs]))
        ei, _ = state.evaluate(now, np.full(3, np.nan), np.zeros(2, np.int64))
        events += ei[:, [an.E_KIND, an.E_PROVIDER]].tolist()
    k0, k3 = int(state.sub_table[0, 0]), int(state.sub_table[0, 3])
    assert state.subs["last_data"][k3] == T0 + 10 * S // 2 and state.subs["last_data"][k0] == 0
    assert np.isnan(state.subs["price"][k3])  # a mark is not a traded price
    quiet = {p for kind, p in events if kind in (an.A_NO_DATA, an.A_NO_FIRST_DATA)}
    assert 0 in quiet and 3 not in quiet, events
