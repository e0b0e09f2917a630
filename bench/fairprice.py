"""The first fair-price kernels, kept as the benchmarks' baseline: per-source state update and a
plain median across fresh sources (production: ``fairfeed.hotpath.fairmethods``).

State is kept per (instrument, source), where a source is a (provider, venue) pair mapped to a
dense id by ``Registry.source_table()``. Each source holds its latest observation: the last price
(NaN = none yet), the receive time of the record that set it, and the last bid and ask (for quote
mids). ``compute_fair_nb`` takes, for every instrument whose state changed, the median of the last
prices of its fresh sources.

Every ``*_nb`` kernel has a slow pure-Python/numpy twin (``*_reference``) with the same signature
and the same in-place effects; tests assert both agree exactly on random inputs.

Kernels take numpy arrays and scalars only; the daemon never runs them, so ``warm_up`` does
not compile them (the benchmarks call them once before timing).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from fairfeed.core.records import KIND_ASK, KIND_BID, KIND_TRADE, RECORD_DTYPE
from fairfeed.hotpath.fairmethods import (
    INPUTS_BOTH,
    INPUTS_CODES,
    INPUTS_QUOTES,
    INPUTS_TRADES,
    NEVER_NS,
    seconds_to_ns,
)


@njit(cache=True)
def update_state_nb(records, n, source_table, inputs_mode, last_price, last_ts, last_bid,
                    last_ask, dirty):  # fmt: skip
    """Apply ``records[:n]`` in order to the per-(instrument, source) state; return skipped count.

    Reference: ``update_state_reference``.

    A record is skipped (and counted) when its instrument is out of range, its (provider, venue)
    has no source (outside ``source_table`` or -1 there), its kind is unknown or its price is not
    finite. A trade sets the source's last price when ``inputs_mode`` is trades or both. A bid or
    ask always updates the source's last bid or ask; when ``inputs_mode`` is quotes or both and
    both sides are known, the last price becomes their mid. Whenever a last price is written,
    ``last_ts`` takes the record's ``ts_receive`` and ``dirty[instrument]`` is set.
    """
    n_inst = last_price.shape[0]
    n_src = last_price.shape[1]
    n_prov = source_table.shape[0]
    n_venue = source_table.shape[1]
    use_trades = inputs_mode != INPUTS_QUOTES
    use_quotes = inputs_mode != INPUTS_TRADES
    skipped = 0
    for j in range(n):
        r = records[j]
        inst = np.int64(r.instrument)
        prov = np.int64(r.provider)
        venue = np.int64(r.venue)
        price = r.price
        kind = r.kind
        if inst >= n_inst or prov >= n_prov or venue >= n_venue or not np.isfinite(price):
            skipped += 1
            continue
        src = np.int64(source_table[prov, venue])
        if src < 0 or src >= n_src:
            skipped += 1
            continue
        if kind == KIND_TRADE:
            if use_trades:
                last_price[inst, src] = price
                last_ts[inst, src] = r.ts_receive
                dirty[inst] = True
        elif kind in (KIND_BID, KIND_ASK):
            if kind == KIND_BID:
                last_bid[inst, src] = price
            else:
                last_ask[inst, src] = price
            if use_quotes:
                bid = last_bid[inst, src]
                ask = last_ask[inst, src]
                if not (np.isnan(bid) or np.isnan(ask)):
                    last_price[inst, src] = (bid + ask) * 0.5
                    last_ts[inst, src] = r.ts_receive
                    dirty[inst] = True
        else:
            skipped += 1
    return skipped


@njit(cache=True)
def compute_fair_nb(now_ns, stale_ns, min_interval_ns, last_price, last_ts, dirty, last_emit_ns,
                    out_instrument, out_price, out_sources, out_oldest_age_ns):  # fmt: skip
    """Median fair price of every dirty, unthrottled instrument; return the number written.

    Reference: ``compute_fair_reference``.

    An instrument is considered when ``dirty`` and ``now_ns - last_emit_ns >= min_interval_ns``
    (or never emitted); a throttled instrument stays dirty. Its fresh sources are those with a
    last price (not NaN) and ``now_ns - last_ts <= stale_ns``. With at least one fresh source it
    is written to ``out_*[m]`` (instrument id, median price, number of fresh sources, age of the
    oldest fresh input) and ``last_emit_ns`` becomes ``now_ns``; with none it is not emitted.
    Either way its dirty flag is cleared. The median of an even count is the mean of the two
    middle prices. Outputs must hold ``last_price.shape[0]`` entries.
    """
    n_inst = last_price.shape[0]
    n_src = last_price.shape[1]
    buf = np.empty(n_src, np.float64)  # insertion-sorted fresh prices of one instrument
    m = 0
    for i in range(n_inst):
        if not dirty[i]:
            continue
        emitted = last_emit_ns[i]
        if emitted != NEVER_NS and now_ns - emitted < min_interval_ns:
            continue
        dirty[i] = False
        k = 0
        oldest = np.int64(0)
        for s in range(n_src):
            p = last_price[i, s]
            if np.isnan(p):
                continue
            age = now_ns - last_ts[i, s]
            if age > stale_ns:
                continue
            if k == 0 or age > oldest:
                oldest = age
            pos = k
            while pos > 0 and buf[pos - 1] > p:
                buf[pos] = buf[pos - 1]
                pos -= 1
            buf[pos] = p
            k += 1
        if k == 0:
            continue
        half = k // 2
        fair = buf[half] if k % 2 == 1 else (buf[half - 1] + buf[half]) / 2.0
        out_instrument[m] = i
        out_price[m] = fair
        out_sources[m] = k
        out_oldest_age_ns[m] = oldest
        last_emit_ns[i] = now_ns
        m += 1
    return m


# ---------------------------------------------------------------------------------------------
# Slow references (the test oracles): same signatures and in-place effects as the kernels.


def update_state_reference(
    records: np.ndarray,
    n: int,
    source_table: np.ndarray,
    inputs_mode: int,
    last_price: np.ndarray,
    last_ts: np.ndarray,
    last_bid: np.ndarray,
    last_ask: np.ndarray,
    dirty: np.ndarray,
) -> int:
    """Plain-Python twin of ``update_state_nb``."""
    n_inst, n_src = last_price.shape
    skipped = 0
    for rec in records[:n]:
        inst = int(rec["instrument"])
        prov = int(rec["provider"])
        venue = int(rec["venue"])
        price = float(rec["price"])
        kind = int(rec["kind"])
        ts = int(rec["ts_receive"])
        if (
            inst >= n_inst
            or prov >= source_table.shape[0]
            or venue >= source_table.shape[1]
            or not np.isfinite(price)
        ):
            skipped += 1
            continue
        src = int(source_table[prov, venue])
        if not 0 <= src < n_src:
            skipped += 1
            continue
        if kind == KIND_TRADE:
            if inputs_mode in (INPUTS_TRADES, INPUTS_BOTH):
                last_price[inst, src] = price
                last_ts[inst, src] = ts
                dirty[inst] = True
        elif kind in (KIND_BID, KIND_ASK):
            side = last_bid if kind == KIND_BID else last_ask
            side[inst, src] = price
            bid, ask = last_bid[inst, src], last_ask[inst, src]
            if inputs_mode in (INPUTS_QUOTES, INPUTS_BOTH) and not (np.isnan(bid) or np.isnan(ask)):
                last_price[inst, src] = (bid + ask) * 0.5
                last_ts[inst, src] = ts
                dirty[inst] = True
        else:
            skipped += 1
    return skipped


def compute_fair_reference(
    now_ns: int,
    stale_ns: int,
    min_interval_ns: int,
    last_price: np.ndarray,
    last_ts: np.ndarray,
    dirty: np.ndarray,
    last_emit_ns: np.ndarray,
    out_instrument: np.ndarray,
    out_price: np.ndarray,
    out_sources: np.ndarray,
    out_oldest_age_ns: np.ndarray,
) -> int:
    """Plain-numpy twin of ``compute_fair_nb`` (``np.median`` over the fresh prices)."""
    m = 0
    for i in range(last_price.shape[0]):
        if not dirty[i]:
            continue
        emitted = int(last_emit_ns[i])
        if emitted != NEVER_NS and now_ns - emitted < min_interval_ns:
            continue
        dirty[i] = False
        ages = now_ns - last_ts[i].astype(np.int64)
        fresh = ~np.isnan(last_price[i]) & (ages <= stale_ns)
        if not fresh.any():
            continue
        out_instrument[m] = i
        out_price[m] = np.median(last_price[i][fresh])
        out_sources[m] = int(fresh.sum())
        out_oldest_age_ns[m] = int(ages[fresh].max())
        last_emit_ns[i] = now_ns
        m += 1
    return m


# ---------------------------------------------------------------------------------------------
# Convenience holder used by the compute stage.


class FairOutput(NamedTuple):
    """Fair prices of one ``compute`` pass, one entry per emitted instrument."""

    instrument: np.ndarray  # uint32 instrument ids, ascending
    price: np.ndarray  # float64 median of the fresh sources
    sources: np.ndarray  # int32 number of fresh sources used
    oldest_age_ns: np.ndarray  # int64 age of the oldest fresh input at ``now_ns``


class FairState:
    """The fair-price state arrays of ``n_instruments`` × ``n_sources`` and their output buffers.

    ``source_table`` is ``Registry.source_table()``; ``inputs`` is ``FairConfig.inputs``.
    """

    def __init__(
        self,
        n_instruments: int,
        n_sources: int,
        source_table: np.ndarray,
        inputs: str = "trades",
    ) -> None:
        if inputs not in INPUTS_CODES:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS_CODES)}, got {inputs!r}")
        shape = (max(n_instruments, 0), max(n_sources, 1))
        self.n_instruments = shape[0]
        self.n_sources = n_sources
        self.inputs_mode = INPUTS_CODES[inputs]
        self.source_table = np.ascontiguousarray(source_table, dtype=np.int32)
        if self.source_table.ndim != 2:
            raise ValueError("source_table must be 2-D [provider, venue]")
        self.last_price = np.full(shape, np.nan)
        self.last_ts = np.zeros(shape, np.int64)
        self.last_bid = np.full(shape, np.nan)
        self.last_ask = np.full(shape, np.nan)
        self.dirty = np.zeros(shape[0], np.bool_)
        self.last_emit_ns = np.full(shape[0], NEVER_NS, np.int64)
        self.out_instrument = np.zeros(shape[0], np.uint32)
        self.out_price = np.zeros(shape[0], np.float64)
        self.out_sources = np.zeros(shape[0], np.int32)
        self.out_oldest_age_ns = np.zeros(shape[0], np.int64)
        self.skipped = 0  # records skipped by update() since creation

    @classmethod
    def from_registry(cls, registry, inputs: str = "trades") -> FairState:
        """State sized for ``registry`` (a ``fairfeed.core.registry.Registry``)."""
        return cls(
            len(registry.instruments), len(registry.sources), registry.source_table(), inputs
        )

    def update(self, records: np.ndarray, n: int | None = None) -> int:
        """Apply ``records[:n]`` (all when ``n`` is None); return how many were skipped."""
        if records.dtype != RECORD_DTYPE:
            raise TypeError(f"records must have RECORD_DTYPE, got {records.dtype}")
        count = len(records) if n is None else min(int(n), len(records))
        skipped = int(
            update_state_nb(
                records,
                count,
                self.source_table,
                self.inputs_mode,
                self.last_price,
                self.last_ts,
                self.last_bid,
                self.last_ask,
                self.dirty,
            )
        )
        self.skipped += skipped
        return skipped

    def compute(self, now_ns: int, stale_s: float, min_interval_s: float) -> FairOutput:
        """Fair prices due at ``now_ns``.

        The arrays are views of preallocated buffers, valid until the next ``compute`` call;
        copy them to keep them longer.
        """
        m = int(
            compute_fair_nb(
                int(now_ns),
                seconds_to_ns(stale_s),
                seconds_to_ns(min_interval_s),
                self.last_price,
                self.last_ts,
                self.dirty,
                self.last_emit_ns,
                self.out_instrument,
                self.out_price,
                self.out_sources,
                self.out_oldest_age_ns,
            )
        )
        return FairOutput(
            self.out_instrument[:m],
            self.out_price[:m],
            self.out_sources[:m],
            self.out_oldest_age_ns[:m],
        )
