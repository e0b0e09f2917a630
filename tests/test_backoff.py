import random

from fairfeed.core.backoff import Backoff


def test_delays_grow_are_jittered_and_capped() -> None:
    b = Backoff(base=0.1, cap=2.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(12)]
    for n, d in enumerate(delays):
        ceiling = min(2.0, 0.1 * 2**n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 2.0 and len(set(delays)) == len(delays)
    b.reset()
    assert b.next_delay() <= 0.1
