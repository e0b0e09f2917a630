"""The overlap filter of a planned switch: first arrival of each keyed record wins."""

from __future__ import annotations

import numpy as np

from fairfeed.core.records import KIND_BID, KIND_TRADE, empty_records
from fairfeed.providers.overlap import OverlapFilter, overlap_keys


def batch(*rows: tuple[int, int, int], kind: int = KIND_TRADE) -> np.ndarray:
    """Records of (instrument, venue, key); ``price`` numbers them in order."""
    r = empty_records(len(rows))
    for i, (inst, venue, key) in enumerate(rows):
        r[i]["instrument"], r[i]["venue"], r[i]["reserved"] = inst, venue, key
        r[i]["price"], r[i]["kind"] = i, kind
    return r


def test_repeats_within_the_overlap_are_dropped_and_order_kept() -> None:
    f = OverlapFilter("reserved")
    old = f.filter(batch((1, 1, 10), (1, 1, 11), (2, 1, 10), (1, 2, 10)))
    assert len(old) == 4  # the same key on another instrument or venue is another trade
    new = f.filter(batch((1, 1, 11), (1, 1, 12), (2, 1, 10), (1, 1, 13), (1, 2, 14)))
    assert new["reserved"].tolist() == [12, 13, 14]
    assert new["price"].tolist() == [1.0, 3.0, 4.0]  # in arrival order
    again = f.filter(batch((1, 1, 12), (1, 1, 13), (1, 1, 15)))
    assert again["reserved"].tolist() == [15]


def test_a_key_twice_in_one_batch_keeps_the_first() -> None:
    f = OverlapFilter("reserved")
    out = f.filter(batch((1, 1, 7), (1, 1, 8), (1, 1, 7), (1, 1, 9)))
    assert out["price"].tolist() == [0.0, 1.0, 3.0]


def test_records_without_a_key_always_pass() -> None:
    f = OverlapFilter("reserved")
    quotes = batch((1, 1, 0), (1, 1, 0), kind=KIND_BID)
    assert len(f.filter(quotes)) == 2 and len(f.filter(quotes)) == 2
    assert f.n == 0


def test_keys_are_forgotten_when_the_switch_ends() -> None:
    """It ends once one session is left; a switch started while the previous one's old session
    still closes shares the filter (three sessions)."""
    f = OverlapFilter("reserved")
    for _ in range(3):
        f.join()
    f.filter(batch((1, 1, 10)))
    f.leave()  # the first old session closed: two still overlap
    assert not f.ended and len(f.filter(batch((1, 1, 10)))) == 0
    f.leave()
    assert f.ended and f.n == 0 and len(f.sorted) == 0
    assert len(f.filter(batch((1, 1, 10)))) == 1


def test_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    f = OverlapFilter("reserved", cap=4)
    f.filter(batch(*[(1, 1, k) for k in range(1, 4)]))
    f.filter(batch((1, 1, 4), (1, 1, 5)))  # 1 is forgotten
    assert f.n == 4
    assert f.filter(batch((1, 1, 1), (1, 1, 2), (1, 1, 5)))["reserved"].tolist() == [1]
    f.filter(batch(*[(1, 1, k) for k in range(100, 110)]))  # one batch over the cap
    assert f.n == 4 and (f.keys & 0xFFFFFFFF).tolist() == [106, 107, 108, 109]


def test_keys_combine_instrument_venue_and_the_32_bit_key() -> None:
    r = batch((3, 2, 0xFFFFFFFF), (3, 2, 1))
    assert overlap_keys(r, "reserved").tolist() == [
        (3 << 48) | (2 << 32) | 0xFFFFFFFF,
        (3 << 48) | (2 << 32) | 1,
    ]


def test_matches_a_reference_on_random_batches() -> None:
    """First arrival wins, as a set of seen keys says; the sorted index stays the FIFO's."""
    rng = np.random.default_rng(3)
    f, small = OverlapFilter("reserved"), OverlapFilter("reserved", cap=64)
    seen: set[tuple[int, int, int]] = set()
    for _ in range(200):
        rows = [(int(i), int(v), int(k)) for i, v, k in rng.integers(0, [3, 3, 40], (12, 3))]
        want = []
        for row in rows:
            if row[2] == 0:  # no key: always passes
                want.append(row)
            elif row not in seen:
                want.append(row)
                seen.add(row)
        out = f.filter(batch(*rows))
        got = list(zip(out["instrument"].tolist(), out["venue"].tolist(),
                       out["reserved"].tolist(), strict=True))  # fmt: skip
        assert got == want
        small.filter(batch(*rows))
        assert small.n <= 64
        assert small.sorted.tolist() == sorted(small.keys[: small.n].tolist())
