"""The rate-drop test and the adaptive no-data threshold, kernel against oracle: random steps
(hypothesis) and seeded traffic scenarios on a simulated clock (docs/anomalies.md)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.core.config import AnomalyConfig, ConfigError, loads
from fairfeed.core.records import KIND_HEARTBEAT, KIND_TRADE, NO_INSTRUMENT, RECORD_DTYPE
from fairfeed.hotpath import anomaly as an
from tests.hotpath.test_anomaly import run_both

S = 1_000_000_000
T0 = 1_700_000_000 * S
STEP = S // 4  # evaluate_interval
# two instruments on one source (provider 0, venue 0)
CLASSES = [1, 1]
SOURCES = [(0, 0)]
SUBS = [(0, 0), (1, 0)]
# the thresholds a user of a liquid market sets (issue 11)
LIQUID = {"no_data_after": 5.0, "latency_for": 3.0, "rate_drop_for": 5.0, "divergence_for": 5.0}


def state_of(cfg: AnomalyConfig) -> an.AnomalyState:
    thr = an.threshold_rows(len(SUBS), an.threshold_row(cfg))
    return an.AnomalyState(CLASSES, SOURCES, 1, 1, SUBS, thr, an.global_row(cfg), 0, T0, 256)


def records(times: list[tuple[int, int]]) -> np.ndarray:
    """Trades ``(instrument, ts)``; instrument -1 is a heartbeat of the provider."""
    r = np.zeros(len(times), RECORD_DTYPE)
    for j, (inst, ts) in enumerate(times):
        hb = inst < 0
        r[j]["kind"] = KIND_HEARTBEAT if hb else KIND_TRADE
        r[j]["instrument"] = NO_INSTRUMENT if hb else inst
        r[j]["ts_receive"] = ts
    r["price"], r["size"] = 100.0, 1.0
    return r


# -- random steps ---------------------------------------------------------------------------


_counts = st.tuples(st.integers(0, 12), st.integers(0, 12))  # records per instrument
_steps = st.lists(
    st.one_of(
        _counts.map(lambda c: ("recs", c)),
        st.integers(50, 1500).map(lambda ms: ("eval", ms)),
        st.integers(0, 1).map(lambda k: ("toggle", k)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(_steps, st.booleans(), st.sampled_from([1e-1, 1e-3]))
def test_rate_and_adaptive_no_data_match_the_oracle(steps, adaptive, alpha) -> None:
    cfg = AnomalyConfig(
        no_data_after=2.0, first_data_timeout=2.0, no_data_adaptive=adaptive, no_data_factor=3.0,
        no_data_floor=0.5, no_data_cap=4.0, rate_floor=2.0, rate_drop_for=1.0,
        rate_drop_alpha=alpha, rate_baseline=5.0,
    )  # fmt: skip
    state = state_of(cfg)
    rows = state.thr.copy()
    now, plan = T0, []
    for what, arg in steps:
        if what == "recs":
            times = [(i, now + (j + 1) * 9_000_000) for i, c in enumerate(arg) for j in range(c)]
            plan.append(records([*times, (-1, now + 1)]))
        elif what == "toggle":

            def toggle(state, k=arg, now=now):
                if state.monitored[k]:
                    state.disable(k)
                else:
                    state.enable(k, rows[k], now)

            plan.append(toggle)
        else:
            now += arg * 1_000_000
            plan.append((now, np.zeros(0, np.int64)))
    run_both(state, plan, lambda t: np.full(2, 100.0))


# -- seeded traffic -------------------------------------------------------------------------

Rate = Callable[[float], float]  # msgs/s at t seconds from T0


def poisson(rate: Rate) -> Callable[[np.random.Generator, float], list[float]]:
    """Arrival times (s) of one evaluation interval starting at t: a Poisson process."""

    def draw(rng: np.random.Generator, t: float) -> list[float]:
        n = rng.poisson(rate(t) * STEP / S)
        return sorted(t + rng.random(n) * STEP / S)

    return draw


def bursty(rate: Rate, mean_burst: float = 5.0) -> Callable[[np.random.Generator, float], list]:
    """Bursts (geometric sizes, ``mean_burst`` on average) at ``rate / mean_burst`` per second:
    the same mean rate, far more clustered than Poisson, as real trades are."""

    def draw(rng: np.random.Generator, t: float) -> list[float]:
        n = rng.poisson(rate(t) / mean_burst * STEP / S)
        out: list[float] = []
        for at in t + rng.random(n) * STEP / S:
            out += [float(at)] * int(rng.geometric(1.0 / mean_burst))
        return sorted(out)

    return draw


def simulate(cfg: AnomalyConfig, streams, seconds: float, seed: int = 7) -> list[tuple]:
    """Run ``streams`` (one arrival generator per instrument) for ``seconds`` on a simulated
    clock, heartbeats every second, through kernel and oracle; the events as
    ``(detected s, kind name, phase, level, instrument, start s)``."""
    rng = np.random.default_rng(seed)
    state = state_of(cfg)
    plan: list = []
    for i in range(round(seconds * S / STEP)):
        t = i * STEP / S
        times = [(inst, T0 + round(x * S)) for inst, draw in enumerate(streams)
                 for x in draw(rng, t)]  # fmt: skip
        if i % 4 == 0:
            times.append((-1, T0 + i * STEP + 1))
        if times:
            plan.append(records(sorted(times, key=lambda x: x[1])))
        plan.append((T0 + (i + 1) * STEP, np.zeros(0, np.int64)))
    got = run_both(state, plan, lambda t: np.full(2, 100.0))
    evals = [p for p in plan if isinstance(p, tuple)]
    return [
        ((now - T0) / S, an.KIND_NAMES[row[an.E_KIND]], row[an.E_PHASE], row[an.E_LEVEL],
         row[an.E_INSTRUMENT], (row[an.E_START] - T0) / S)
        for (now, _), (ei, _ef) in zip(evals, got, strict=True)
        for row in ei.tolist()
    ]  # fmt: skip


def steady(r: float) -> Rate:
    return lambda t: r


def dropped(r: float, at: float, length: float, to: float = 0.05) -> Rate:
    return lambda t: r * to if at <= t < at + length else r


CFG = AnomalyConfig(**LIQUID)
ADAPTIVE = AnomalyConfig(**LIQUID, no_data_adaptive=True)
TEN_MINUTES = 600.0


def test_a_clean_poisson_stream_raises_nothing_in_ten_minutes() -> None:
    assert simulate(CFG, [poisson(steady(20.0)), poisson(steady(5.0))], TEN_MINUTES) == []


def test_bursty_traffic_raises_nothing_in_ten_minutes() -> None:
    wave = lambda t: 20.0 * (1.0 + 0.5 * math.sin(t / 30.0))  # noqa: E731 - 10..30 msgs/s
    assert simulate(CFG, [bursty(wave), bursty(steady(5.0), 3.0)], TEN_MINUTES) == []


def test_a_20s_drop_to_5_percent_is_reported_within_rate_drop_for_plus_1s() -> None:
    at = 300.0
    ev = simulate(CFG, [poisson(dropped(20.0, at, 20.0)), poisson(steady(5.0))], at + 40.0)
    assert [e[1:5] for e in ev] == [
        ("rate_drop", an.PHASE_START, an.LV_SUB, 0),
        ("rate_drop", an.PHASE_END, an.LV_SUB, 0),
    ]
    start, end = ev
    assert at + LIQUID["rate_drop_for"] <= start[0] <= at + LIQUID["rate_drop_for"] + 1.0
    assert at - 0.5 <= start[5] <= at + 1.0  # the episode starts at the drop
    assert at + 20.0 < end[0] <= at + 25.0  # cleared a few seconds after the rate came back


def test_a_60s_drop_is_one_start_and_one_end() -> None:
    at = 200.0
    ev = simulate(CFG, [poisson(dropped(20.0, at, 60.0)), poisson(steady(5.0))], at + 80.0)
    assert [(e[1], e[2]) for e in ev] == [("rate_drop", 0), ("rate_drop", 1)]
    assert ev[0][0] <= at + 6.0 and at + 60.0 < ev[1][0] <= at + 65.0


def test_a_drop_shorter_than_rate_drop_for_is_not_reported() -> None:
    at = 200.0
    ev = simulate(CFG, [poisson(dropped(20.0, at, 3.0)), poisson(steady(5.0))], at + 20.0)
    assert ev == []


def test_an_illiquid_stream_raises_nothing_under_the_adaptive_threshold() -> None:
    streams = [poisson(steady(20.0)), poisson(steady(0.2))]
    assert simulate(ADAPTIVE, streams, TEN_MINUTES) == []
    # the fixed five seconds would call its ordinary gaps outages
    fixed = simulate(CFG, streams, TEN_MINUTES)
    assert {(e[1], e[4]) for e in fixed} == {("no_data", 1)}


def test_a_liquid_stream_that_stops_alarms_beside_a_quiet_one_that_does_not() -> None:
    stop = 300.0
    stops = lambda t: 20.0 if t < stop else 0.0  # noqa: E731
    ev = simulate(ADAPTIVE, [poisson(stops), poisson(steady(0.2))], stop + 30.0)
    assert [e[1:5] for e in ev] == [("no_data", an.PHASE_START, an.LV_SUB, 0)]
    assert ev[0][0] <= stop + ADAPTIVE.no_data_floor + 1.0


def test_the_new_keys_load_check_and_reach_the_threshold_rows() -> None:
    cfg = loads(
        "[anomalies]\nno_data_adaptive = true\nno_data_floor = 2\nrate_drop_alpha = 1e-3\n"
        "[anomalies.classes.spot]\nno_data_adaptive = false\n"
    ).anomalies
    row = an.threshold_row(cfg, "perpetual", "X")
    assert (row["nd_factor"], row["nd_floor"], row["nd_cap"]) == (4.0, 2 * S, 600 * S)
    assert an.threshold_row(cfg, "spot", "X")["nd_factor"] == 0.0  # fixed for this class
    assert an.threshold_row(AnomalyConfig())["nd_factor"] == 0.0  # off by default
    assert an.global_row(cfg).rate_sig == pytest.approx(math.log(1e3))
    for bad in ("no_data_adaptive = true\nno_data_floor = 700", "rate_drop_alpha = 0"):
        with pytest.raises(ConfigError):
            loads(f"[anomalies]\n{bad}\n")
