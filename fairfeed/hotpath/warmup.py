"""Compile (or load from the on-disk cache) every hot-path kernel before forking.

The supervisor calls ``warm_up()`` once in the parent so children inherit compiled kernels and never
compile or write the Numba cache concurrently (numba #10128, #4807). The tiny inputs use exactly
the argument types the compute stage passes through ``FairBook`` and ``AnomalyState``, so no new
specialization is compiled later.

``python -m fairfeed.hotpath.warmup`` prints how long warming took in this process.
"""

from __future__ import annotations

import time

import numpy as np

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE, empty_records
from fairfeed.hotpath import fairmethods
from fairfeed.hotpath.plausible import check_plausible
from fairfeed.hotpath.sequence import SequenceTracker
from fairfeed.hotpath.streams import count_streams_nb

_warm_seconds: float | None = None


def warm_up() -> float:
    """Run every kernel once on tiny inputs; return the seconds the first call took.

    Idempotent: later calls return the first call's duration without doing anything.
    """
    global _warm_seconds
    if _warm_seconds is not None:
        return _warm_seconds
    start = time.perf_counter()
    table = np.array([[0, 1]], np.int32)
    recs = empty_records(3)
    recs["kind"] = (KIND_TRADE, KIND_BID, KIND_ASK)
    recs["venue"] = (0, 1, 1)
    recs["price"] = (100.0, 99.0, 101.0)
    recs["ts_receive"] = 1
    _warm_fair_methods(table, recs)
    recs["sequence"] = (1, 3, 3)
    tracker = SequenceTracker(np.array([0, 0], np.int32), (KIND_TRADE, KIND_BID, KIND_ASK), 4)
    last_ids = np.full((1, 1), -1, np.int64)
    assert len(tracker.check(recs.copy(), last_ids)[1]) == 1
    assert check_plausible(recs.copy())[1:] == (0, 0)
    count = np.zeros((2, 2), np.uint64)
    last = np.zeros((2, 2), np.int64)
    count_streams_nb(recs, len(recs), table, count, last)
    assert count.sum() == 3
    _warm_anomaly()
    _warm_binance_scan()
    _warm_coinbase_scan()
    _warm_seconds = time.perf_counter() - start
    return _warm_seconds


def _warm_anomaly() -> None:
    """The anomaly kernels, with the argument types ``AnomalyState`` passes."""
    from fairfeed.hotpath import anomaly

    subs = [(0, 0), (0, 1)]
    thr = anomaly.threshold_rows(2)
    st = anomaly.AnomalyState([1], [(0, 0), (1, 1)], 2, 2, subs, thr, anomaly.default_globals(), 1)
    recs = empty_records(2)
    recs["kind"] = KIND_TRADE
    recs["provider"] = recs["venue"] = (0, 1)
    recs["price"] = 100.0
    recs["ts_receive"] = 1
    assert st.update(recs) == 0
    st.evaluate(2, np.full(1, 100.0), np.zeros(1, np.int64))


def _warm_binance_scan() -> None:
    """The ingest workers' Binance scanner, with the argument types ``parse_batch`` passes."""
    from fairfeed.hotpath.binancescan import StreamTable, scan_binance_nb

    t = StreamTable({"btcusdt@trade": (3, False)})
    msg = b'{"stream":"btcusdt@trade","data":{"E":2,"t":7,"p":"1.5","q":"2","T":1,"m":true}}'
    data = np.frombuffer(msg, np.uint8)  # read-only, as from bytes
    ends = np.fromiter((len(msg),), np.int64, 1).cumsum()
    out = empty_records(2)
    n = scan_binance_nb(data, ends, t.names, t.lengths, t.instrument, t.is_book, t.slots, out, 0,
                        1, 1, 2, 1, False)  # fmt: skip
    assert n == 1 and out[0]["price"] == 1.5 and out[0]["sequence"] == 7, n


def _warm_coinbase_scan() -> None:
    """The ingest workers' Coinbase Advanced Trade scanner, with the argument types
    ``AdvancedTradeParser.parse`` passes."""
    from fairfeed.hotpath.coinbasescan import PREFIX, scan_market_trades_nb
    from fairfeed.hotpath.jsonscan import StreamTable

    t = StreamTable({"BTC-USD": (3, False)})
    msg = PREFIX + (b'"timestamp":"2026-08-09T21:05:48.2Z","sequence_num":2,"events":[{"type":'
                    b'"update","trades":[{"product_id":"BTC-USD","trade_id":"7","price":"1.5",'
                    b'"size":"2","time":"2026-08-09T21:05:48.1Z","side":"BUY"}]}]}')  # fmt: skip
    data = np.frombuffer(memoryview(msg), np.uint8)  # read-only, as from a frame's memoryview
    out = empty_records(2)
    n, seq, missed = scan_market_trades_nb(data, t.names, t.lengths, t.instrument, t.slots, out,
                                           out.view(np.uint8), 0, 1, 1, 2, 1, False, True, 0,
                                           -1, 0)  # fmt: skip
    assert (n, seq, missed) == (2, 2, 1) and out[1]["price"] == 1.5 and out[1]["sequence"] == 7


def _warm_fair_methods(table: np.ndarray, recs: np.ndarray) -> None:
    """The methodology kernels (``FairBook``), every method: one specialization serves all."""
    for method in fairmethods.METHOD_CODES:
        book = fairmethods.FairBook(2, table, [0, 1], 4, method=method, inputs="both")
        book.update(recs)
        out = book.compute(2)
        assert len(out.price) == 1 and out.price[0] == 100.0, (method, out)
        book.compute(3, final=True)


def _main() -> None:  # pragma: no cover - measurement helper
    first = warm_up()
    t0 = time.perf_counter()
    warm_up()
    second = time.perf_counter() - t0
    print(f"warm_up {first:.4f} s, second call {second * 1e6:.1f} µs")


if __name__ == "__main__":  # pragma: no cover
    _main()
