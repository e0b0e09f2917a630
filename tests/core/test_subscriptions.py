"""The subscription set every holder keeps, and the changes they all apply the same way."""

from __future__ import annotations

import pytest

from fairfeed.core.partition import worker_for
from fairfeed.core.records import CLASS_PERPETUAL, CLASS_SPOT
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import (
    Stream,
    Subscribe,
    Subscription,
    SubscriptionSet,
    Unsubscribe,
)

BTC = Stream("kaiko", "CBSE", "BTC-USD", "spot")
ETH = Stream("kaiko", "CBSE", "ETH-USD", "spot")
PERP = Stream("binance", "BINANCE", "BTC-PERP", "perpetual")


def test_add_and_remove_report_what_changed_in_order() -> None:
    s = SubscriptionSet([BTC])
    assert s.add([ETH, BTC, PERP]) == (ETH, PERP)  # BTC was there
    assert list(s) == [BTC, ETH, PERP] and len(s) == 3
    assert BTC in s and BTC.key in s and Stream("x", "y", "z", "spot") not in s
    # a key removes whatever data class the stream has
    assert s.remove([PERP.key, ("binance", "BINANCE", "NOPE")]) == (PERP,)
    assert s.get(BTC.key) == BTC and s.get(PERP.key) is None
    assert s.providers() == ("kaiko",) and s.of_provider("kaiko") == (BTC, ETH)


def test_apply_is_the_same_rule_for_every_holder() -> None:
    supervisor_copy, worker_copy = SubscriptionSet([BTC]), SubscriptionSet([BTC])
    for change in (Subscribe((ETH, PERP)), Unsubscribe((BTC,)), Subscribe((BTC, ETH))):
        assert supervisor_copy.apply(change) == worker_copy.apply(change)
        assert supervisor_copy == worker_copy
    assert list(worker_copy) == [ETH, PERP, BTC]
    assert worker_copy.apply(Unsubscribe((Stream("kaiko", "CBSE", "ETH-USD", "future"),))) == (
        ETH,
    )  # the removed stream comes back with the class it had
    with pytest.raises(TypeError, match="not a subscription change"):
        worker_copy.apply("subscribe")  # type: ignore[arg-type]


def test_partition_follows_rendezvous_hashing() -> None:
    streams = [Stream("p", "V", f"I{i}-USD", "spot") for i in range(200)]
    parts = SubscriptionSet(streams).partition(3)
    assert sum(len(p) for p in parts) == 200
    for w, part in enumerate(parts):
        assert part  # every worker gets some
        for s in part:
            assert s.owner(3) == w == worker_for("p", f"V:{s.instrument}", 3)


def test_resolve_gives_the_registry_ids() -> None:
    reg = Registry.build(
        [("BTC-USD", CLASS_SPOT), ("BTC-PERP", CLASS_PERPETUAL), ("ETH-USD", CLASS_SPOT)],
        [("kaiko", "CBSE"), ("binance", "BINANCE")],
    )
    subs = SubscriptionSet([BTC, PERP, ETH]).resolve(reg, "kaiko")
    assert [s.instrument for s in subs] == ["BTC-USD", "ETH-USD"]
    assert subs[1] == Subscription("kaiko", "CBSE", "ETH-USD", "spot", 0, 0, 2, CLASS_SPOT)
    perp = Subscription.of(reg, PERP)
    assert (perp.provider_id, perp.venue_id, perp.instrument_id) == (1, 1, 1)
    assert perp.class_code == CLASS_PERPETUAL
