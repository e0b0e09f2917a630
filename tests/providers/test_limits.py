"""Declared provider limits (``Rate`` / ``Limits``): paced by the daemon's GCRA pacer, no window
of a limit's length ever holds more actions than the provider allows, whatever the demand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfeed.ipc.pacer import Pacer
from fairfeed.providers.base import Limits, Rate
from fairfeed.providers.binance.adapter import SPOT_LIMITS, USDM_LIMITS
from fairfeed.providers.coinapi.adapter import CoinApiAdapter
from fairfeed.providers.coinbase.adapter import CoinbaseAdapter
from fairfeed.providers.kraken.adapter import KrakenAdapter
from fairfeed.providers.kraken_futures.adapter import KrakenFuturesAdapter

DECLARED = {
    "coinbase": CoinbaseAdapter.limits,
    "binance spot": SPOT_LIMITS,
    "binance usdm": USDM_LIMITS,
    "kraken": KrakenAdapter.limits,
    "kraken_futures": KrakenFuturesAdapter.limits,
    "coinapi": CoinApiAdapter.limits,
}
RATES = [(f"{name} {field}", r) for name, lim in DECLARED.items()
         for field in ("connect", "message", "connection_messages")
         if (r := getattr(lim, field)) is not None]  # fmt: skip


def window_max(times: np.ndarray, width: float) -> int:
    """The most of ``times`` (sorted) in any closed window ``width`` long."""
    return int(max(np.searchsorted(times, times + width, side="right") - np.arange(len(times))))


def test_what_each_provider_declares() -> None:
    """The figures of the providers' documentation (their pages list them)."""
    assert CoinbaseAdapter.limits == Limits(connect=Rate(8, 1.0), message=Rate(8, 1.0))
    assert SPOT_LIMITS.connect == USDM_LIMITS.connect == Rate(300, 300.0, burst=20)
    assert SPOT_LIMITS.connection_messages == Rate(4, 1.0)  # 5 a second, one for a pong
    assert USDM_LIMITS.connection_messages == Rate(9, 1.0)  # 10 a second, one for a pong
    assert KrakenAdapter.limits == Limits(connect=Rate(140, 600.0, burst=10))
    assert KrakenFuturesAdapter.limits == CoinApiAdapter.limits == Limits()  # none documented


@pytest.mark.parametrize("bad", [(1, 1.0, 1), (8, 0.0, 1), (8, 1.0, 0), (8, 1.0, 8)])
def test_a_rate_that_cannot_be_kept_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="count >= 2"):
        Rate(*bad)


@pytest.mark.parametrize(("name", "rate"), RATES, ids=[n for n, _ in RATES])
@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=400), scale=st.floats(0.0, 2.0))
def test_no_window_exceeds_the_declared_limit(name: str, rate: Rate, gaps, scale) -> None:
    """Demand at any times (bursts, lulls, steady streams): the granted times never put more
    than ``count`` actions in a window of ``per`` seconds."""
    pacer = Pacer.local(["p"])
    now, granted = 0.0, []
    for g in gaps:
        now += g * scale * rate.interval
        granted.append(pacer.reserve("p", "connect", rate.interval, now, rate.burst))
    times = np.array(granted)
    assert (np.diff(times) >= 0).all()
    assert window_max(times, rate.per) <= rate.count


@pytest.mark.parametrize(("name", "rate"), RATES, ids=[n for n, _ in RATES])
def test_the_limit_is_reached_not_undershot(name: str, rate: Rate) -> None:
    """Everyone asking at once: the burst at once, then the sustained rate, and a window of
    ``per`` seconds holds exactly ``count`` (the limit is used, not wasted)."""
    pacer = Pacer.local(["p"])
    times = np.array([pacer.reserve("p", "connect", rate.interval, 0.0, rate.burst)
                      for _ in range(3 * rate.count)])  # fmt: skip
    assert (times[: rate.burst] < 1e-9).all() and times[rate.burst] > 1e-9  # (float sums)
    assert window_max(times, rate.per * (1 - 1e-9)) <= rate.count
    assert window_max(times, rate.per * (1 + 1e-9)) == rate.count
