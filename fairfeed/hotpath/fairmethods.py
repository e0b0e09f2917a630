"""Fair-price methodology kernels: per-source state, outlier gate, five methods, status, heartbeat.

State lives per (instrument, source); a source is a (provider, venue) pair with a dense id from
``Registry.source_table()``. With ``mark_inputs`` (``FairConfig.mark_inputs``) a source's mark
price is an input of its own: the state's columns are *slots*, two per source — slot ``2s`` its
trades / quotes, slot ``2s + 1`` its marks (``KIND_MARK``, accepted of perpetuals and dated
futures only) — so a mark never overwrites its provider's trade or quote state, and both count
as inputs of the source's venue. Without it there is one slot per source (slot = source id) and
marks are skipped. Everything below says "source" for a slot. Two kernels do all the work:

``update_fair_nb`` (O(records)) applies a record batch in order. Per source it keeps

- the last price (trade price, quote mid, or whichever came last: ``inputs``; a mark slot: the
  mark price) and its receive time;
- a volume EWMA, time-decayed with half-life ``h``: on a trade of size ``q`` at ``t``,
  ``V ← V·2^(−(t−t_V)/h) + q`` (``t_V`` = time of the last volume update, never moves back);
  quotes and marks add nothing, non-finite or negative sizes count as 0;
- a realized-variance rate estimate of log returns (for inverse variance): when the last price
  moves from ``p0`` (set at ``t0``) to ``p`` at ``t``, with ``r = ln(p/p0)``, ``dt = max(0, t−t0)``,
  ``d = 2^(−dt/h)``: ``N ← d·N + r²``, ``D ← d·D + dt``; the variance per ns is ``N/D`` (unknown
  while ``D = 0``). Dividing by elapsed time keeps a fast and a slow source comparable;
- a ring of ``B`` time buckets of ``W`` ns (windowed VWM): bucket ``k = t // W`` sits in slot
  ``k mod B``; a slot holding an older bucket is reset on first use; per bucket the last price
  and the traded volume. A record whose slot already holds a newer bucket leaves the ring alone.

Which parts are maintained depends on the method (volume: two_level and inverse_variance;
variance: inverse_variance; buckets: windowed_vwm), so cheaper methods pay nothing for them.

``compute_fair_full_nb`` (O(scanned instruments + due instruments × sources)) emits, for every
instrument that is *due* — dirty and not throttled by ``min_interval``, or heartbeat-due
(``heartbeat_interval`` since its last emission) — one output row, when the result changed or a
heartbeat is due:

1. Sources are classified: no data (reason 3), stale (older than ``stale_after``, reason 1), or
   candidate.
2. Outlier gate around the plain median ``M`` of the candidates — of the per-venue medians for
   two_level, so one venue counts once. Applied only with ≥ 3 candidate units (venues for
   two_level, sources otherwise) and ``M > 0``; with ``d = |p − M| / M`` an included source is
   excluded when ``d > outlier_exclude`` and an excluded one readmitted when
   ``d < outlier_readmit`` (hysteresis; the flag persists across passes). Excluded candidates get
   reason 2. Should the gate leave nothing, every candidate is used this pass (no consensus).
3. The configured method over the included sources (see ``METHOD_*``). A mark slot is weighed
   as any source without traded volume (as a quote-only source with ``inputs = "both"``).
4. Output: price, method, number of sources (slots) and venues used, of which marks, dispersion
   ``(max − min) / price`` of the used sources' last prices (0 for one), age of the oldest used
   input, status, one reason code per slot.

With no candidate the last emitted price is carried with status stale, zero sources and venues,
NaN dispersion and ``oldest_age_ns`` = age of the newest input of any source (0 if none); an
instrument that never had a price emits nothing. An unchanged result (same price, status, number
of sources, venues and marks) is not re-emitted except as a heartbeat, so a stale instrument is
re-announced at most once per heartbeat interval.

Every ``*_nb`` kernel has a plain-Python twin ``*_reference`` (same arguments, same in-place
effects) that the tests use as an oracle. Kernels take numpy arrays, scalars and NamedTuples of
them only; compile them before forking (``fairfeed.hotpath.warmup``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from fairfeed.core.config import FairConfig
from fairfeed.core.records import (
    CLASS_FUTURE,
    CLASS_PERPETUAL,
    KIND_ASK,
    KIND_BID,
    KIND_MARK,
    KIND_TRADE,
    RECORD_DTYPE,
    empty_records,
)
from fairfeed.hotpath.dispatch import entry_point

# Methods (``FairConfig.method``). Weighted median, everywhere below: sort by price, cumulative
# weight ``c``; the first price with ``c ≥ W/2``; when ``c = W/2`` (to 1e-12·W) the mean of it and
# the next price with a positive weight. With equal weights it equals the plain median.
METHOD_TWO_LEVEL = 0  # median per venue, then a capped volume×freshness weighted median of venues
METHOD_MEDIAN = 1  # plain median of the sources
METHOD_INVERSE_VARIANCE = 2  # weighted median, w = ½ volume share + ½ inverse-variance share
METHOD_WINDOWED_VWM = 3  # volume-weighted median per time bucket, mean over the buckets
METHOD_TRIMMED_MEAN = 4  # mean after dropping floor(trim·n) prices at each end
METHOD_CODES = {
    "two_level": METHOD_TWO_LEVEL,
    "median": METHOD_MEDIAN,
    "inverse_variance": METHOD_INVERSE_VARIANCE,
    "windowed_vwm": METHOD_WINDOWED_VWM,
    "trimmed_mean": METHOD_TRIMMED_MEAN,
}
METHOD_NAMES = {code: name for name, code in METHOD_CODES.items()}

# Output status, in priority order stale > single source > disputed > degraded > ok.
FAIR_OK = 0
FAIR_SINGLE_SOURCE = 1  # exactly one source used
FAIR_DEGRADED = 2  # fewer venues used than ``min_venues``
FAIR_STALE = 3  # no fresh source: the last price carried
# two sources (or two venues) apart beyond ``dispute``: their midpoint is no consensus
FAIR_DISPUTED = 4
FAIR_STATUS_NAMES = {
    FAIR_OK: "ok",
    FAIR_SINGLE_SOURCE: "single_source",
    FAIR_DEGRADED: "degraded",
    FAIR_STALE: "stale",
    FAIR_DISPUTED: "disputed",
}

# Per source slot of an output: why it was not used.
REASON_INCLUDED = 0
REASON_STALE = 1
REASON_OUTLIER = 2
REASON_NO_DATA = 3
REASON_NAMES = {
    REASON_INCLUDED: "included",
    REASON_STALE: "stale",
    REASON_OUTLIER: "outlier",
    REASON_NO_DATA: "no_data",
}

# Which records feed a source's last price (``FairConfig.inputs``).
INPUTS_TRADES = 0  # last trade price
INPUTS_QUOTES = 1  # mid of the last bid and ask, once both are known
INPUTS_BOTH = 2  # whichever of the two came last
INPUTS_CODES = {"trades": INPUTS_TRADES, "quotes": INPUTS_QUOTES, "both": INPUTS_BOTH}

# ``last_emit_ns`` of an instrument never emitted: the min-interval throttle lets it through.
NEVER_NS = np.iinfo(np.int64).min

NS_PER_S = 1_000_000_000
LN2 = math.log(2.0)
VAR_FLOOR = 1e-30  # variance per ns below this counts as this (no division by zero)
TIE_EPS = 1e-12  # relative tolerance of the weighted median's "exactly half" test
BRANCHLESS_MAX = 8  # sorts of up to this many values run without branches (``_sort_nb``)


# The settings' defaults are the configuration's: declared once, in ``FairConfig``.
_DEFAULTS = FairConfig()


def seconds_to_ns(seconds: float) -> int:
    """Whole nanoseconds in ``seconds`` (rounded)."""
    return round(seconds * NS_PER_S)


# The compute kernel takes the due instruments a chunk at a time through each step; a chunk's
# scratch stays in the first-level cache.
CHUNK = 256
# Per due instrument of a chunk.
ROW_DTYPE = np.dtype([
    ("inst", "i8"),
    ("hb_due", "i8"),  # 1 = heartbeat due: written even when unchanged
    ("k", "i8"),  # candidates: sources with a fresh price
    ("newest", "i8"),  # age of the newest input of any source (0 = none)
    ("units", "i8"),  # what the gate counts: candidates, or their venues for two_level
    ("ref", "f8"),  # the gate's reference price
    ("n_used", "i8"),  # candidates the gate kept
    ("lo", "f8"),  # lowest and highest price of the used candidates
    ("hi", "f8"),
    ("oldest", "i8"),  # age of the oldest used input
    ("n_ven", "i8"),  # venues of the used candidates
    ("n_mark", "i8"),  # mark slots among the used candidates
    ("fair", "f8"),  # the method's price
])  # fmt: skip
# Per candidate source of a due instrument, ascending source id (two_level: by venue group).
CAND_DTYPE = np.dtype([
    ("src", "i8"),
    ("price", "f8"),
    ("age", "i8"),
    ("used", "i8"),  # 1 = passed the gate
    ("group", "i8"),  # its venue group, -1 = none
])  # fmt: skip


class FairParams(NamedTuple):
    """Scalar settings of the kernels (times in ns); build with :func:`make_params`."""

    method: int
    inputs_mode: int
    stale_ns: int
    min_interval_ns: int
    heartbeat_ns: int  # 0 = no heartbeats
    outlier_exclude: float  # 0 = no gate
    outlier_readmit: float
    halflife_ns: float
    freshness_tau_ns: float
    venue_cap: float
    min_venues: int
    bucket_ns: int
    trim: float
    n_sources: int = -1  # slots >= this are not registered yet and ignored; -1 = all
    dispute: float = math.inf  # max / min - 1 of two sources or venues beyond: ``disputed``
    # 1: two slots per source, the second one its mark price (module docstring); 0: marks skipped
    mark_inputs: int = 0


class FairArrays(NamedTuple):
    """Every state, scratch and layout array; shapes [instrument, slot(, bucket)]."""

    last_price: np.ndarray  # f8, NaN = none
    last_ts: np.ndarray  # i8
    last_bid: np.ndarray  # f8
    last_ask: np.ndarray  # f8
    vol: np.ndarray  # f8 volume EWMA at vol_ts
    vol_ts: np.ndarray  # i8
    var_num: np.ndarray  # f8 decayed sum of squared log returns
    var_den: np.ndarray  # f8 decayed sum of elapsed ns
    bucket_id: np.ndarray  # i8 [inst, src, B], -1 = empty
    bucket_price: np.ndarray  # f8 [inst, src, B], last price in the bucket, NaN = none
    bucket_vol: np.ndarray  # f8 [inst, src, B], traded volume in the bucket
    gate_out: np.ndarray  # bool, excluded by the outlier gate
    dirty: np.ndarray  # bool [inst]
    last_emit_ns: np.ndarray  # i8 [inst], NEVER_NS = never
    last_fair: np.ndarray  # f8 [inst], NaN = never had a price
    last_status: np.ndarray  # i8 [inst], -1 = never
    last_nsrc: np.ndarray  # i8 [inst]
    last_nven: np.ndarray  # i8 [inst]
    last_nmark: np.ndarray  # i8 [inst]
    group_src: np.ndarray  # i8 [slot]: slots ordered by venue
    group_start: np.ndarray  # i8 [groups + 1]: group g = group_src[start[g]:start[g+1]]
    work_f: np.ndarray  # f8 [8, sources × buckets] scratch of one instrument
    work_i: np.ndarray  # i8 [8, sources × buckets] scratch of one instrument
    work_rows: np.ndarray  # ROW_DTYPE [CHUNK]: the due instruments of one chunk
    work_cand: np.ndarray  # CAND_DTYPE [CHUNK × sources]: their candidate sources
    work_ranked: np.ndarray  # f8 [CHUNK × sources]: their candidates' prices, sorted


class FairOut(NamedTuple):
    """Output buffers, one row per emitted instrument (``reasons``: [row, slot])."""

    instrument: np.ndarray  # u4
    price: np.ndarray  # f8
    method: np.ndarray  # u1
    sources: np.ndarray  # i4
    venues: np.ndarray  # i4
    dispersion: np.ndarray  # f8
    oldest_age_ns: np.ndarray  # i8
    status: np.ndarray  # u1
    reasons: np.ndarray  # u1 [row, slot]
    marks: np.ndarray  # i4, mark slots among ``sources``


def make_params(
    method: str = _DEFAULTS.method,
    inputs: str = _DEFAULTS.inputs,
    stale_after: float = _DEFAULTS.stale_after,
    min_interval: float = _DEFAULTS.min_interval,
    heartbeat_interval: float = _DEFAULTS.heartbeat_interval,
    outlier_exclude: float = _DEFAULTS.outlier_exclude,
    outlier_readmit: float = _DEFAULTS.outlier_readmit,
    volume_halflife: float = _DEFAULTS.volume_halflife,
    freshness_tau: float = _DEFAULTS.freshness_tau,
    venue_cap: float = _DEFAULTS.venue_cap,
    min_venues: int = _DEFAULTS.min_venues,
    window_bucket: float = _DEFAULTS.window_bucket,
    window_buckets: int = _DEFAULTS.window_buckets,
    trim: float = _DEFAULTS.trim,
    dispute: float = math.inf,
    mark_inputs: bool = _DEFAULTS.mark_inputs,
) -> FairParams:
    """:class:`FairParams` from ``FairConfig`` settings (seconds, names; defaults: its own)."""
    if method not in METHOD_CODES:
        raise ValueError(f"method must be one of {', '.join(METHOD_CODES)}, got {method!r}")
    if inputs not in INPUTS_CODES:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS_CODES)}, got {inputs!r}")
    if outlier_exclude < 0 or not 0 <= outlier_readmit <= outlier_exclude:
        raise ValueError("need 0 <= outlier_readmit <= outlier_exclude")
    if volume_halflife <= 0 or freshness_tau <= 0 or window_bucket <= 0 or window_buckets < 1:
        raise ValueError("volume_halflife, freshness_tau, window_bucket must be > 0, buckets >= 1")
    if not 0 < venue_cap <= 1 or not 0 <= trim < 0.5 or min_venues < 1:
        raise ValueError("need 0 < venue_cap <= 1, 0 <= trim < 0.5, min_venues >= 1")
    return FairParams(
        method=METHOD_CODES[method],
        inputs_mode=INPUTS_CODES[inputs],
        stale_ns=seconds_to_ns(stale_after),
        min_interval_ns=seconds_to_ns(min_interval),
        heartbeat_ns=seconds_to_ns(heartbeat_interval),
        outlier_exclude=float(outlier_exclude),
        outlier_readmit=float(outlier_readmit),
        halflife_ns=float(seconds_to_ns(volume_halflife)),
        freshness_tau_ns=float(seconds_to_ns(freshness_tau)),
        venue_cap=float(venue_cap),
        min_venues=int(min_venues),
        bucket_ns=max(1, seconds_to_ns(window_bucket)),
        trim=float(trim),
        dispute=float(dispute) if dispute > 0 else math.inf,
        mark_inputs=int(bool(mark_inputs)),
    )


def make_arrays(
    n_instruments: int,
    source_venues: np.ndarray | list[int],
    buckets: int = 1,
    n_sources: int | None = None,
) -> FairArrays:
    """Fresh state for ``n_instruments`` and slots whose venue ids are ``source_venues``.

    ``n_sources`` (default: as many as venues given) is the slot capacity of the arrays;
    slots beyond the venues given have no group (see ``FairParams.n_sources``). With
    ``mark_inputs`` give each source's venue twice (``slot_venues``).
    """
    venues = np.asarray(source_venues, np.int64).reshape(-1)
    n_src = max(len(venues), int(n_sources or 0), 1)
    n = max(int(n_instruments), 0)
    shape = (n, n_src)
    bshape = (n, n_src, max(int(buckets), 1))
    order, starts = _venue_groups(venues)
    width = n_src
    # scratch rows: windowed_vwm collects up to (sources × buckets) entries in one row
    swidth = width * max(int(buckets), 1)
    return FairArrays(
        last_price=np.full(shape, np.nan),
        last_ts=np.zeros(shape, np.int64),
        last_bid=np.full(shape, np.nan),
        last_ask=np.full(shape, np.nan),
        vol=np.zeros(shape),
        vol_ts=np.zeros(shape, np.int64),
        var_num=np.zeros(shape),
        var_den=np.zeros(shape),
        bucket_id=np.full(bshape, -1, np.int64),
        bucket_price=np.full(bshape, np.nan),
        bucket_vol=np.zeros(bshape),
        gate_out=np.zeros(shape, np.bool_),
        dirty=np.zeros(n, np.bool_),
        last_emit_ns=np.full(n, NEVER_NS, np.int64),
        last_fair=np.full(n, np.nan),
        last_status=np.full(n, -1, np.int64),
        last_nsrc=np.zeros(n, np.int64),
        last_nven=np.zeros(n, np.int64),
        last_nmark=np.zeros(n, np.int64),
        group_src=order,
        group_start=starts,
        work_f=np.zeros((8, swidth)),
        work_i=np.zeros((8, swidth), np.int64),
        work_rows=np.zeros(CHUNK, ROW_DTYPE),
        work_cand=np.zeros(CHUNK * width, CAND_DTYPE),
        work_ranked=np.zeros(CHUNK * width),
    )


def _venue_groups(venues: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sources ordered by venue and the start of each venue's run (plus the end)."""
    order = np.argsort(venues, kind="stable").astype(np.int64)
    sv = venues[order]
    starts = np.concatenate(([0], np.flatnonzero(sv[1:] != sv[:-1]) + 1, [len(venues)]))
    if len(venues) == 0:
        starts = np.zeros(1)
    return order, starts.astype(np.int64)


def slot_venues(source_venues: np.ndarray | list[int], mark_inputs: bool) -> np.ndarray:
    """The venue of each slot: a source's own, twice with ``mark_inputs`` (its mark slot is
    in its venue's group: the venue's view, never a venue of its own)."""
    venues = np.asarray(source_venues, np.int64).reshape(-1)
    return np.repeat(venues, 2) if mark_inputs else venues


def make_out(n_instruments: int, n_sources: int) -> FairOut:
    """Output buffers for ``n_instruments`` rows of ``n_sources`` slots."""
    n = max(int(n_instruments), 0)
    return FairOut(
        instrument=np.zeros(n, np.uint32),
        price=np.zeros(n),
        method=np.zeros(n, np.uint8),
        sources=np.zeros(n, np.int32),
        venues=np.zeros(n, np.int32),
        dispersion=np.zeros(n),
        oldest_age_ns=np.zeros(n, np.int64),
        status=np.zeros(n, np.uint8),
        reasons=np.zeros((n, max(int(n_sources), 1)), np.uint8),
        marks=np.zeros(n, np.int32),
    )


# ---------------------------------------------------------------------------------------------
# Update kernel


@njit(cache=True)
def update_fair_nb(records, n, source_table, p, a):  # pragma: no cover - jitted
    """Apply ``records[:n]`` in order to the state ``a`` (FairArrays); return the skipped count.

    Reference: ``update_fair_reference``. Skipped (and counted): instrument out of range,
    (provider, venue) without a source, unknown kind, non-finite price, a mark without
    ``mark_inputs`` or of another class than perpetual or future. A trade sets the last price
    when ``inputs`` is trades or both, and adds its size to the volume EWMA and its bucket;
    a bid or ask updates the source's side and, when ``inputs`` is quotes or both and both sides
    are known, sets the last price to the mid; a mark sets its source's mark slot's last price.
    Writing a last price sets ``last_ts`` to the record's ``ts_receive`` and marks the
    instrument dirty.
    """
    # arrays unpacked once: no reference counting per record
    last_price = a.last_price
    last_ts = a.last_ts
    last_bid = a.last_bid
    last_ask = a.last_ask
    vol = a.vol
    vol_ts = a.vol_ts
    var_num = a.var_num
    var_den = a.var_den
    bucket_id = a.bucket_id
    bucket_price = a.bucket_price
    bucket_vol = a.bucket_vol
    dirty = a.dirty
    bucket_ns = p.bucket_ns
    n_inst = last_price.shape[0]
    n_src = last_price.shape[1]
    n_prov = source_table.shape[0]
    n_venue = source_table.shape[1]
    n_bucket = bucket_id.shape[2]
    use_trades = p.inputs_mode != INPUTS_QUOTES
    use_quotes = p.inputs_mode != INPUTS_TRADES
    track_vol = p.method == METHOD_TWO_LEVEL or p.method == METHOD_INVERSE_VARIANCE
    track_var = p.method == METHOD_INVERSE_VARIANCE
    track_buckets = p.method == METHOD_WINDOWED_VWM
    mark_inputs = p.mark_inputs != 0
    stride = 2 if mark_inputs else 1
    k_decay = -LN2 / p.halflife_ns
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
        if src < 0:
            skipped += 1
            continue
        src *= stride  # the source's first slot
        if kind == KIND_MARK:
            cls = r.data_class
            if not mark_inputs or (cls != CLASS_PERPETUAL and cls != CLASS_FUTURE):
                skipped += 1  # the data-class rule: a spot instrument never gets marks
                continue
            src += 1
        if src >= n_src:
            skipped += 1
            continue
        ts = r.ts_receive
        new_price = np.nan
        size = 0.0
        if kind == KIND_TRADE:
            if use_trades:
                new_price = price
            size = r.size
            if not (size > 0.0 and np.isfinite(size)):
                size = 0.0
            if track_vol and size > 0.0:
                dt = ts - vol_ts[inst, src]
                if dt > 0:
                    vol[inst, src] *= math.exp(k_decay * dt)
                    vol_ts[inst, src] = ts
                vol[inst, src] += size
        elif kind in (KIND_BID, KIND_ASK):
            if kind == KIND_BID:
                last_bid[inst, src] = price
            else:
                last_ask[inst, src] = price
            if use_quotes:
                bid = last_bid[inst, src]
                ask = last_ask[inst, src]
                if not (np.isnan(bid) or np.isnan(ask)):
                    new_price = (bid + ask) * 0.5
        elif kind == KIND_MARK:
            new_price = price
        else:
            skipped += 1
            continue
        has_price = not np.isnan(new_price)
        if track_buckets and (has_price or size > 0.0):
            b = ts // bucket_ns
            slot = b % n_bucket
            held = bucket_id[inst, src, slot]
            if held < b:
                bucket_id[inst, src, slot] = b
                bucket_price[inst, src, slot] = np.nan
                bucket_vol[inst, src, slot] = 0.0
                held = b
            if held == b:
                bucket_vol[inst, src, slot] += size
                if has_price:
                    bucket_price[inst, src, slot] = new_price
        if not has_price:
            continue
        if track_var:
            prev = last_price[inst, src]
            if prev > 0.0 and new_price > 0.0:
                ret = math.log(new_price / prev)
                dt = ts - last_ts[inst, src]
                if dt < 0:
                    dt = 0
                d = math.exp(k_decay * dt)
                var_num[inst, src] = d * var_num[inst, src] + ret * ret
                var_den[inst, src] = d * var_den[inst, src] + dt
        last_price[inst, src] = new_price
        last_ts[inst, src] = ts
        dirty[inst] = True
    return skipped


# ---------------------------------------------------------------------------------------------
# Compute kernel: a driver over one step function per stage of the module docstring
#
# ``compute_fair_full_nb`` takes the due instruments a chunk (``CHUNK``) at a time through
# classify -> gate reference -> gate -> method -> emit; each step is one call over the whole chunk,
# its figures in the structured scratch (``work_rows``: one row per due instrument,
# ``work_cand``: its candidate sources). Performance notes:
#
# - A call per instrument costs more than much of the work (the arguments, several words per
#   array, and the error check); a split into per-instrument helpers was 1.1-1.4x slower. So
#   the steps loop over a chunk, and the small per-row helpers (sorts, medians, the gate's parts)
#   are force-inlined (``inline="always"``).
# - The NamedTuples are unpacked in the driver; the steps only index the arrays they are given,
#   never allocate or keep them, so they are compiled without the reference-counting runtime
#   (``_nrt=False``): no atomic increments per call either.
# - Per instrument the work is bounded by the registered sources (``FairParams.n_sources``) for
#   the classification and the reason codes, and by the candidates after that.
# - Sorts of a few values run without branches (``_sort_nb``): see there.


@njit(cache=True, _nrt=False, inline="always")
def _sort2_nb(x, w, k):  # pragma: no cover - jitted
    """Insertion-sort ``x[:k]`` ascending, carrying ``w[:k]`` along (stable; no NaN in ``x``).

    Up to ``BRANCHLESS_MAX`` values without branches, as ``_sort_nb``: each new value travels
    down the whole sorted prefix, the larger of each pair staying behind (a select, not a
    jump); a value not larger than the one it meets stops it and travels on in its place.
    """
    if k <= BRANCHLESS_MAX:
        for j in range(1, k):
            v = x[j]
            vw = w[j]
            for q in range(j, 0, -1):
                px = x[q - 1]
                pw = w[q - 1]
                up = px > v
                x[q] = px if up else v
                w[q] = pw if up else vw
                v = v if up else px
                vw = vw if up else pw
            x[0] = v
            w[0] = vw
        return
    for j in range(1, k):
        xv = x[j]
        wv = w[j]
        pos = j
        while pos > 0 and x[pos - 1] > xv:
            x[pos] = x[pos - 1]
            w[pos] = w[pos - 1]
            pos -= 1
        x[pos] = xv
        w[pos] = wv


@njit(cache=True, _nrt=False, inline="always")
def _sort_nb(x, k):  # pragma: no cover - jitted
    """Insertion-sort ``x[:k]`` ascending (no NaN).

    Up to ``BRANCHLESS_MAX`` values without branches: each new value travels down the whole
    sorted prefix through min / max pairs. On a handful of unordered prices the usual inner
    loop's exit mispredicts, and that was the largest single cost of a compute pass; the few
    extra compares are cheaper. Longer lists the usual way.
    """
    if k <= BRANCHLESS_MAX:
        for j in range(1, k):
            v = x[j]
            for q in range(j, 0, -1):
                prev = x[q - 1]
                x[q] = max(prev, v)
                v = min(prev, v)
            x[0] = v
        return
    for j in range(1, k):
        xv = x[j]
        pos = j
        while pos > 0 and x[pos - 1] > xv:
            x[pos] = x[pos - 1]
            pos -= 1
        x[pos] = xv


@njit(cache=True, _nrt=False, inline="always")
def _median_nb(x, k):  # pragma: no cover - jitted
    """Plain median of ``x[:k]`` (sorts ``x[:k]`` in place)."""
    _sort_nb(x, k)
    half = k // 2
    if k % 2 == 1:
        return x[half]
    return (x[half - 1] + x[half]) / 2.0


@njit(cache=True, _nrt=False, inline="always")
def _weighted_median_nb(x, w, k):  # pragma: no cover - jitted
    """Weighted median of ``x[:k]`` with weights ``w[:k]`` (≥ 0); equal weights if all are 0."""
    _sort2_nb(x, w, k)
    total = 0.0
    for j in range(k):
        total += w[j]
    if not total > 0.0:
        for j in range(k):
            w[j] = 1.0
        total = float(k)
    half = 0.5 * total
    eps = TIE_EPS * total
    c = 0.0
    for j in range(k):
        c += w[j]
        if c >= half - eps:
            if c <= half + eps:
                nxt = j + 1
                while nxt < k and not w[nxt] > 0.0:
                    nxt += 1
                if nxt < k:
                    return (x[j] + x[nxt]) / 2.0
            return x[j]
    return x[k - 1]


@njit(cache=True, _nrt=False, inline="always")
def _cap_shares_nb(w, k, cap, capped):  # pragma: no cover - jitted
    """Turn weights ``w[:k]`` into shares summing to 1, none above ``cap`` (water-filling).

    Zero total: equal shares. ``k · cap <= 1``: equal shares. Otherwise repeatedly fix every
    share above ``cap`` at ``cap`` and spread the rest over the others in proportion to their
    weights (equally when those are all 0) until no share exceeds ``cap``.
    """
    total = 0.0
    for j in range(k):
        total += w[j]
    if not total > 0.0 or k * cap <= 1.0:
        for j in range(k):
            w[j] = 1.0 / k
        return
    for j in range(k):
        w[j] = w[j] / total
        capped[j] = 0
    if cap >= 1.0:
        return
    n_capped = 0
    for _ in range(k):
        free = 1.0 - cap * n_capped
        rest = 0.0
        for j in range(k):
            if capped[j] == 0:
                rest += w[j]
        changed = False
        for j in range(k):
            if capped[j] == 0:
                share = w[j] / rest * free if rest > 0.0 else free / (k - n_capped)
                if share > cap:
                    capped[j] = 1
                    changed = True
        n_capped = 0
        for j in range(k):
            n_capped += capped[j]
        if not changed:
            break
    free = 1.0 - cap * n_capped
    rest = 0.0
    for j in range(k):
        if capped[j] == 0:
            rest += w[j]
    for j in range(k):
        if capped[j] == 1:
            w[j] = cap
        elif rest > 0.0:
            w[j] = w[j] / rest * free
        else:
            w[j] = free / (k - n_capped)


@njit(cache=True)
def compute_fair_full_nb(now, p, a, o):  # pragma: no cover - jitted
    """Fair prices due at ``now`` into ``o`` (FairOut); return the number of rows written.

    Reference: ``compute_fair_full_reference``. An instrument is due when dirty and not
    throttled (never emitted, or ``now − last_emit ≥ min_interval``; a throttled one stays
    dirty), or when a heartbeat is due (emitted before, heartbeats on, ``now − last_emit ≥
    heartbeat``). A due instrument's dirty flag is cleared; it is written (ascending instrument
    order) when its result changed or the heartbeat is due (module docstring).

    The due instruments go through the steps a chunk at a time (``a.work_rows``): classify,
    the gate's reference price, gate, the method, emit.
    """
    n_src = a.last_price.shape[1]
    if 0 <= p.n_sources < n_src:
        n_src = p.n_sources
    venue_of = a.work_i[5]
    gmark = a.work_i[6]
    _venue_of_sources(a.group_src, a.group_start, venue_of, gmark)
    rows = a.work_rows
    # [row, candidate] views as wide as the registered sources, not the capacity: 128 columns
    # of which 5 are used spread a chunk over 1.5 MB (and one cache set), 1.3x slower
    width = max(n_src, 1)
    cand = a.work_cand[: CHUNK * width].reshape((CHUNK, width))
    ranked = a.work_ranked[: CHUNK * width].reshape((CHUNK, width))
    method = p.method
    n_inst = a.last_price.shape[0]
    m = 0
    i = 0
    while i < n_inst:
        n, i = _due(now, p.min_interval_ns, p.heartbeat_ns, a.dirty, a.last_emit_ns, rows, i)
        _classify(now, p.stale_ns, n_src, a.last_price, a.last_ts, venue_of, rows, cand, o.reasons,
                  m, n)  # fmt: skip
        if method == METHOD_TWO_LEVEL:
            _venue_reference(rows, cand, n, a.work_f)
        else:
            _plain_reference(rows, cand, ranked, n)
        _gate(p.outlier_exclude, p.outlier_readmit, a.gate_out, rows, cand, o.reasons, m, n,
              gmark, p.mark_inputs)  # fmt: skip
        if method == METHOD_MEDIAN:
            _median(rows, cand, ranked, n)
        elif method == METHOD_TRIMMED_MEAN:
            _trimmed_mean(p.trim, rows, cand, ranked, n)
        elif method == METHOD_TWO_LEVEL:
            _two_level(now, p, a.vol, a.vol_ts, rows, cand, n, a.work_f, a.work_i)
        elif method == METHOD_INVERSE_VARIANCE:
            _inverse_variance(now, p.halflife_ns, a.vol, a.vol_ts, a.var_num, a.var_den, rows,
                              cand, n, a.work_f)  # fmt: skip
        else:
            _windowed_vwm(now, p.bucket_ns, a.bucket_id, a.bucket_price, a.bucket_vol, rows, cand,
                          n, a.work_f, a.work_i)  # fmt: skip
        m = _emit(method, p.min_venues, p.dispute, rows, n, a.last_fair, a.last_status,
                  a.last_nsrc, a.last_nven, a.last_nmark, a.last_emit_ns, now, n_src, o,
                  m)  # fmt: skip
    return m


@njit(cache=True, _nrt=False)
def _venue_of_sources(group_src, group_start, venue_of, gmark):  # pragma: no cover - jitted
    """``venue_of[s]``: the venue group of source ``s`` (-1 = none); ``gmark`` reset."""
    for s in range(venue_of.shape[0]):
        venue_of[s] = -1
    for g in range(group_start.shape[0] - 1):
        gmark[g] = -1
        for q in range(group_start[g], group_start[g + 1]):
            venue_of[group_src[q]] = g


@njit(cache=True, _nrt=False)
def _due(now, min_interval_ns, heartbeat_ns, dirty, last_emit_ns, rows, i):  # pragma: no cover
    """Due instruments from ``i`` on into ``rows`` (their dirty flags cleared), until the chunk
    is full; returns (rows filled, the instrument to continue from)."""
    n = 0
    cap = rows.shape[0]
    n_inst = dirty.shape[0]
    while i < n_inst and n < cap:
        emitted = last_emit_ns[i]
        never = emitted == NEVER_NS
        hb_due = (not never) and heartbeat_ns > 0 and now - emitted >= heartbeat_ns
        if hb_due or (dirty[i] and (never or now - emitted >= min_interval_ns)):
            dirty[i] = False
            rows[n].inst = i
            rows[n].hb_due = hb_due
            n += 1
        i += 1
    return n, i


@njit(cache=True, _nrt=False)
def _classify(now, stale_ns, n_src, last_price, last_ts, venue_of, rows, cand, reasons, m0,
              n):  # fmt: skip  # pragma: no cover - jitted
    """Step 1: a reason code per registered source; the fresh ones become the row's candidates
    (ascending source id, all used until the gate says otherwise). Row ``r``'s reason codes go
    to output row ``m0 + r``: at most one output per due instrument, so emitting only ever
    moves a row down."""
    for r in range(n):
        i = rows[r].inst
        mr = m0 + r
        k = 0
        newest = np.int64(0)
        any_data = False
        for s in range(n_src):
            price = last_price[i, s]
            if np.isnan(price):
                reasons[mr, s] = REASON_NO_DATA
                continue
            age = now - last_ts[i, s]
            if not any_data or age < newest:
                newest = age
            any_data = True
            if age > stale_ns:
                reasons[mr, s] = REASON_STALE
                continue
            reasons[mr, s] = REASON_INCLUDED
            cand[r, k].src = s
            cand[r, k].price = price
            cand[r, k].age = age
            cand[r, k].used = 1
            cand[r, k].group = venue_of[s]
            k += 1
        rows[r].k = k
        rows[r].n_used = k
        rows[r].newest = max(newest, np.int64(0))


@njit(cache=True, _nrt=False)
def _plain_reference(rows, cand, ranked, n):  # pragma: no cover - jitted
    """The gate's reference: the median of the candidates' prices, which stay sorted in
    ``ranked`` (the median methods reuse them when the gate excludes nothing)."""
    for r in range(n):
        k = rows[r].k
        if k == 0:
            continue
        xs = ranked[r]
        for j in range(k):
            xs[j] = cand[r, j].price
        rows[r].units = k
        rows[r].ref = _median_nb(xs, k)


@njit(cache=True, _nrt=False)
def _venue_reference(rows, cand, n, work_f):  # pragma: no cover - jitted
    """two_level's reference: the median of the per-venue medians of the candidates, so one
    venue counts once. Leaves the candidates ordered by (venue group, source)."""
    xs = work_f[1]
    vmed = work_f[3]
    for r in range(n):
        k = rows[r].k
        if k == 0:
            continue
        # stable insertion sort by venue group (the source ids ascend already)
        for j in range(1, k):
            pos = j
            while pos > 0 and cand[r, pos - 1].group > cand[r, pos].group:
                _swap_cand(cand, r, pos - 1, pos)
                pos -= 1
        units = 0
        j = 0
        while j < k:
            g = cand[r, j].group
            c = 0
            while j < k and cand[r, j].group == g:
                xs[c] = cand[r, j].price
                c += 1
                j += 1
            if g >= 0:
                vmed[units] = xs[0] if c == 1 else _median_nb(xs, c)
                units += 1
        rows[r].units = units
        rows[r].ref = _median_nb(vmed, units) if units > 0 else np.nan


@njit(cache=True, _nrt=False, inline="always")
def _swap_cand(cand, r, p, q):  # pragma: no cover - jitted
    """Swap candidates ``p`` and ``q`` of row ``r`` (before the gate: every one is used)."""
    src = cand[r, p].src
    price = cand[r, p].price
    age = cand[r, p].age
    group = cand[r, p].group
    cand[r, p].src = cand[r, q].src
    cand[r, p].price = cand[r, q].price
    cand[r, p].age = cand[r, q].age
    cand[r, p].group = cand[r, q].group
    cand[r, q].src = src
    cand[r, q].price = price
    cand[r, q].age = age
    cand[r, q].group = group


@njit(cache=True, _nrt=False)
def _gate(outlier_exclude, outlier_readmit, gate_out, rows, cand, reasons, m0, n, gmark,
          mark_bit):  # fmt: skip  # pragma: no cover - jitted
    """Step 2: the outlier gate around the reference price, then a summary of the sources it
    let through (the dispersion, age and venue figures of the output)."""
    for r in range(n):
        if rows[r].k == 0:
            continue
        ref = rows[r].ref
        if outlier_exclude > 0.0 and rows[r].units >= 3 and ref > 0.0:
            _exclude_outliers(outlier_exclude, outlier_readmit, gate_out, rows, cand, reasons,
                              m0 + r, r)  # fmt: skip
        _summarize_used(rows, cand, r, gmark, mark_bit)


# The per-row parts of the gate are force-inlined: a call per instrument costs more than a small
# helper's work (arguments and the error check), measurably so at a few ns per instrument.
@njit(cache=True, _nrt=False, inline="always")
def _exclude_outliers(outlier_exclude, outlier_readmit, gate_out, rows, cand, reasons, mr,
                      r):  # fmt: skip  # pragma: no cover - jitted
    """The gate with hysteresis (module docstring) on row ``r``: ``cand.used``, the
    ``gate_out`` flags, reason codes (output row ``mr``) and ``rows.n_used``."""
    i = rows[r].inst
    k = rows[r].k
    ref = rows[r].ref
    n_used = 0
    for j in range(k):
        s = cand[r, j].src
        d = abs(cand[r, j].price - ref) / ref
        out = gate_out[i, s]
        if out:
            if d < outlier_readmit:
                out = False
                gate_out[i, s] = False
        elif d > outlier_exclude:
            out = True
            gate_out[i, s] = True
        if out:
            reasons[mr, s] = REASON_OUTLIER
            cand[r, j].used = 0
        else:
            n_used += 1
    if n_used == 0:  # no consensus: use them all
        for j in range(k):
            reasons[mr, cand[r, j].src] = REASON_INCLUDED
            cand[r, j].used = 1
        n_used = k
    rows[r].n_used = n_used


@njit(cache=True, _nrt=False, inline="always")
def _summarize_used(rows, cand, r, gmark, mark_bit):  # pragma: no cover - jitted
    """Lowest and highest price, oldest age, venues and marks of row ``r``'s used candidates;
    ``gmark[g] == inst`` marks a venue group already counted for the instrument. ``mark_bit``
    (``mark_inputs``, 0 or 1): a slot ``& mark_bit`` is 1 for a mark slot (odd), always 0
    without marks."""
    i = rows[r].inst
    lo = np.inf
    hi = -np.inf
    oldest = np.int64(0)
    n_ven = 0
    n_mark = 0
    for j in range(rows[r].k):
        if cand[r, j].used == 1:
            n_mark += cand[r, j].src & mark_bit
            x = cand[r, j].price
            lo = min(lo, x)
            hi = max(hi, x)
            age = cand[r, j].age
            if age > oldest:
                oldest = age
            g = cand[r, j].group
            if g >= 0 and gmark[g] != i:
                gmark[g] = i
                n_ven += 1
    rows[r].lo = lo
    rows[r].hi = hi
    rows[r].oldest = oldest
    rows[r].n_ven = n_ven
    rows[r].n_mark = n_mark


@njit(cache=True, _nrt=False)
def _median(rows, cand, ranked, n):  # pragma: no cover - jitted
    """METHOD_MEDIAN: the plain median of the used prices."""
    for r in range(n):
        if rows[r].k == 0:
            continue
        c = _rank_used(rows, cand, ranked, r)
        half = c // 2
        if c % 2 == 1:
            rows[r].fair = ranked[r, half]
        else:
            rows[r].fair = (ranked[r, half - 1] + ranked[r, half]) / 2.0


@njit(cache=True, _nrt=False)
def _trimmed_mean(trim, rows, cand, ranked, n):  # pragma: no cover - jitted
    """METHOD_TRIMMED_MEAN: the mean of the used prices after dropping floor(trim·n) at each
    end."""
    for r in range(n):
        if rows[r].k == 0:
            continue
        c = _rank_used(rows, cand, ranked, r)
        t = math.floor(trim * c)
        acc = 0.0
        for j in range(t, c - t):
            acc += ranked[r, j]
        rows[r].fair = acc / (c - 2 * t)


@njit(cache=True, _nrt=False, inline="always")
def _rank_used(rows, cand, ranked, r):  # pragma: no cover - jitted
    """``ranked[r, :c]``: the used candidates' prices, sorted; returns ``c``. Already so when
    the gate kept every candidate (``_plain_reference`` sorted them all)."""
    k = rows[r].k
    if rows[r].n_used == k:
        return k
    xs = ranked[r]
    c = 0
    for j in range(k):
        if cand[r, j].used == 1:
            xs[c] = cand[r, j].price
            c += 1
    _sort_nb(xs, c)
    return c


@njit(cache=True, _nrt=False)
def _two_level(now, p, vol, vol_ts, rows, cand, n, work_f, work_i):  # pragma: no cover - jitted
    """METHOD_TWO_LEVEL: the median per venue of its used sources, then the capped volume ×
    freshness weighted median of the venues (candidates ordered by venue group)."""
    k_decay = -LN2 / p.halflife_ns
    freshness_tau_ns = p.freshness_tau_ns
    venue_cap = p.venue_cap
    xs = work_f[1]
    vmed = work_f[3]
    vmax_of = work_f[4]
    fresh = work_f[5]
    share = work_f[6]
    capped = work_i[4]
    for r in range(n):
        k = rows[r].k
        if k == 0:
            continue
        i = rows[r].inst
        nv = 0
        tot_vol = 0.0
        j = 0
        while j < k:
            g = cand[r, j].group
            c = 0
            vmax = 0.0
            amin = np.int64(0)
            while j < k and cand[r, j].group == g:
                q = j
                j += 1
                if g < 0 or cand[r, q].used == 0:
                    continue
                s = cand[r, q].src
                xs[c] = cand[r, q].price
                v = vol[i, s]
                dt = now - vol_ts[i, s]
                if dt > 0:
                    v *= math.exp(k_decay * dt)
                if v > vmax:
                    vmax = v
                age = cand[r, q].age
                if c == 0 or age < amin:
                    amin = age
                c += 1
            if c > 0:
                vmed[nv] = xs[0] if c == 1 else _median_nb(xs, c)
                vmax_of[nv] = vmax
                fresh[nv] = math.exp(-max(amin, 0) / freshness_tau_ns)
                tot_vol += vmax
                nv += 1
        for j in range(nv):
            vol_part = vmax_of[j] if tot_vol > 0.0 else 1.0
            share[j] = vol_part * fresh[j]
        _cap_shares_nb(share, nv, venue_cap, capped)
        rows[r].fair = _weighted_median_nb(vmed, share, nv)


@njit(cache=True, _nrt=False)
def _inverse_variance(now, halflife_ns, vol, vol_ts, var_num, var_den, rows, cand, n,
                      work_f):  # fmt: skip  # pragma: no cover - jitted
    """METHOD_INVERSE_VARIANCE: weighted median, w = ½ volume share + ½ inverse-variance share
    (a source without a variance estimate counts with the largest known; none known: equal)."""
    k_decay = -LN2 / halflife_ns
    xs = work_f[1]
    ws = work_f[2]
    vols = work_f[4]
    inv = work_f[5]
    for r in range(n):
        k = rows[r].k
        if k == 0:
            continue
        i = rows[r].inst
        c = 0
        tot_vol = 0.0
        var_max = -1.0
        for j in range(k):
            if cand[r, j].used == 0:
                continue
            s = cand[r, j].src
            xs[c] = cand[r, j].price
            v = vol[i, s]
            dt = now - vol_ts[i, s]
            if dt > 0:
                v *= math.exp(k_decay * dt)
            vols[c] = v
            tot_vol += v
            den = var_den[i, s]
            var = var_num[i, s] / den if den > 0.0 else -1.0
            inv[c] = var
            if var > var_max:
                var_max = var
            c += 1
        tot_inv = 0.0
        for j in range(c):
            var = inv[j]
            if var_max < 0.0:
                x = 1.0
            else:
                if var < 0.0:
                    var = var_max
                x = 1.0 / max(var, VAR_FLOOR)
            inv[j] = x
            tot_inv += x
        for j in range(c):
            vs = vols[j] / tot_vol if tot_vol > 0.0 else 1.0 / c
            ws[j] = 0.5 * vs + 0.5 * inv[j] / tot_inv
        rows[r].fair = _weighted_median_nb(xs, ws, c)


@njit(cache=True, _nrt=False)
def _windowed_vwm(now, bucket_ns, bucket_id, bucket_price, bucket_vol, rows, cand, n, work_f,
                  work_i):  # fmt: skip  # pragma: no cover - jitted
    """METHOD_WINDOWED_VWM: the volume-weighted median per bucket of the window, mean over the
    buckets; nothing in the window: the plain median of the last prices."""
    n_bucket = bucket_id.shape[2]
    xs = work_f[1]
    ws = work_f[2]
    bpx = work_f[4]
    bvol = work_f[5]
    bcnt = work_i[7]
    # Buckets now_b - B + 1 .. now_b. Each used source's ring is read once (contiguous); its
    # in-window buckets are collected per bucket, in source order (bucket bi's entries at
    # bpx / bvol[bi · k ...]), then one weighted median each.
    now_b = now // bucket_ns
    lo_b = now_b - n_bucket + 1
    for r in range(n):
        k = rows[r].k
        if k == 0:
            continue
        i = rows[r].inst
        for bi in range(n_bucket):
            bcnt[bi] = 0
        for j in range(k):
            if cand[r, j].used == 0:
                continue
            s = cand[r, j].src
            for slot in range(n_bucket):
                bid = bucket_id[i, s, slot]
                if bid < lo_b or bid > now_b:
                    continue
                bp = bucket_price[i, s, slot]
                if np.isnan(bp):
                    continue
                bi = bid - lo_b
                q = bi * k + bcnt[bi]
                bpx[q] = bp
                bvol[q] = bucket_vol[i, s, slot]
                bcnt[bi] += 1
        acc = 0.0
        nb = 0
        for bi in range(n_bucket):
            c = bcnt[bi]
            if c == 0:
                continue
            for q in range(c):
                xs[q] = bpx[bi * k + q]
                ws[q] = bvol[bi * k + q]
            acc += _weighted_median_nb(xs, ws, c)
            nb += 1
        if nb > 0:
            rows[r].fair = acc / nb
        else:
            c = 0
            for j in range(k):
                if cand[r, j].used == 1:
                    xs[c] = cand[r, j].price
                    c += 1
            rows[r].fair = _median_nb(xs, c)


@njit(cache=True, _nrt=False)
def _emit(method, min_venues, dispute, rows, n, last_fair, last_status, last_nsrc, last_nven,
          last_nmark, last_emit_ns, now, n_src, o, m):  # fmt: skip  # pragma: no cover - jitted
    """Step 4: per row the dispersion and status; written to ``o`` row ``m`` on change or
    heartbeat. Returns the rows written."""
    m0 = m
    reasons = o.reasons
    for r in range(n):
        i = rows[r].inst
        k = rows[r].k
        if k == 0:  # nothing fresh: the last price carried, stale
            fair = last_fair[i]
            if np.isnan(fair):
                continue
            status = FAIR_STALE
            n_used = 0
            n_ven = 0
            n_mark = 0
            dispersion = np.nan
            oldest = rows[r].newest
        else:
            fair = rows[r].fair
            n_used = rows[r].n_used
            n_ven = rows[r].n_ven
            n_mark = rows[r].n_mark
            oldest = rows[r].oldest
            spread = rows[r].hi - rows[r].lo
            dispersion = spread / fair if n_used > 1 and fair != 0.0 else 0.0
            if n_used == 1:
                status = FAIR_SINGLE_SOURCE
            elif (n_used == 2 or n_ven == 2) and rows[r].hi > rows[r].lo * (1.0 + dispute):
                status = FAIR_DISPUTED
            elif n_ven < min_venues:
                status = FAIR_DEGRADED
            else:
                status = FAIR_OK
        changed = (
            fair != last_fair[i]
            or status != last_status[i]
            or n_used != last_nsrc[i]
            or n_ven != last_nven[i]
            or n_mark != last_nmark[i]
        )
        if not (changed or rows[r].hb_due):
            continue
        if m != m0 + r:
            for s in range(n_src):
                reasons[m, s] = reasons[m0 + r, s]
        o.instrument[m] = i
        o.price[m] = fair
        o.method[m] = method
        o.sources[m] = n_used
        o.venues[m] = n_ven
        o.dispersion[m] = dispersion
        o.oldest_age_ns[m] = oldest
        o.status[m] = status
        o.marks[m] = n_mark
        last_fair[i] = fair
        last_status[i] = status
        last_nsrc[i] = n_used
        last_nven[i] = n_ven
        last_nmark[i] = n_mark
        last_emit_ns[i] = now
        m += 1
    return m


# ---------------------------------------------------------------------------------------------
# Slow references (the test oracles): same arguments and in-place effects, plain Python.


def update_fair_reference(records, n, source_table, p: FairParams, a: FairArrays) -> int:
    """Plain-Python twin of ``update_fair_nb``."""
    n_inst, n_src = a.last_price.shape
    n_bucket = a.bucket_id.shape[2]
    track_vol = p.method in (METHOD_TWO_LEVEL, METHOD_INVERSE_VARIANCE)
    stride = 2 if p.mark_inputs else 1
    k_decay = -LN2 / p.halflife_ns
    skipped = 0
    for rec in records[:n]:
        inst, prov, venue = int(rec["instrument"]), int(rec["provider"]), int(rec["venue"])
        price, kind, ts = float(rec["price"]), int(rec["kind"]), int(rec["ts_receive"])
        if (
            inst >= n_inst
            or prov >= source_table.shape[0]
            or venue >= source_table.shape[1]
            or not math.isfinite(price)
        ):
            skipped += 1
            continue
        source = int(source_table[prov, venue])
        is_mark = kind == KIND_MARK
        if is_mark and not (
            p.mark_inputs and int(rec["data_class"]) in (CLASS_PERPETUAL, CLASS_FUTURE)
        ):
            skipped += 1
            continue
        src = source * stride + int(is_mark)
        if source < 0 or src >= n_src:
            skipped += 1
            continue
        new_price = None
        size = 0.0
        if kind == KIND_TRADE:
            if p.inputs_mode in (INPUTS_CODES["trades"], INPUTS_CODES["both"]):
                new_price = price
            size = float(rec["size"])
            size = size if math.isfinite(size) and size > 0 else 0.0
            if track_vol and size > 0:
                if ts > a.vol_ts[inst, src]:
                    a.vol[inst, src] *= math.exp(k_decay * (ts - int(a.vol_ts[inst, src])))
                    a.vol_ts[inst, src] = ts
                a.vol[inst, src] += size
        elif kind in (KIND_BID, KIND_ASK):
            (a.last_bid if kind == KIND_BID else a.last_ask)[inst, src] = price
            bid, ask = a.last_bid[inst, src], a.last_ask[inst, src]
            if p.inputs_mode != INPUTS_TRADES and not (math.isnan(bid) or math.isnan(ask)):
                new_price = (bid + ask) * 0.5
        elif is_mark:
            new_price = price
        else:
            skipped += 1
            continue
        if p.method == METHOD_WINDOWED_VWM and (new_price is not None or size > 0):
            b = ts // p.bucket_ns
            slot = b % n_bucket
            if a.bucket_id[inst, src, slot] < b:
                a.bucket_id[inst, src, slot] = b
                a.bucket_price[inst, src, slot] = np.nan
                a.bucket_vol[inst, src, slot] = 0.0
            if a.bucket_id[inst, src, slot] == b:
                a.bucket_vol[inst, src, slot] += size
                if new_price is not None:
                    a.bucket_price[inst, src, slot] = new_price
        if new_price is None:
            continue
        if p.method == METHOD_INVERSE_VARIANCE:
            prev = float(a.last_price[inst, src])
            if prev > 0 and new_price > 0:
                ret = math.log(new_price / prev)
                dt = max(0, ts - int(a.last_ts[inst, src]))
                d = math.exp(k_decay * dt)
                a.var_num[inst, src] = d * a.var_num[inst, src] + ret * ret
                a.var_den[inst, src] = d * a.var_den[inst, src] + dt
        a.last_price[inst, src] = new_price
        a.last_ts[inst, src] = ts
        a.dirty[inst] = True
    return skipped


def median_reference(xs: list[float]) -> float:
    """Plain median (mean of the two middle values of an even count)."""
    s = sorted(xs)
    h = len(s) // 2
    return s[h] if len(s) % 2 else (s[h - 1] + s[h]) / 2


def weighted_median_reference(xs: list[float], ws: list[float]) -> float:
    """Weighted median as defined above ``METHOD_TWO_LEVEL``."""
    pairs = sorted(zip(xs, ws, strict=True), key=lambda t: t[0])
    total = sum(w for _, w in pairs)
    if not total > 0:
        pairs = [(x, 1.0) for x, _ in pairs]
        total = float(len(pairs))
    half, eps = total / 2, TIE_EPS * total
    c = 0.0
    for j, (x, w) in enumerate(pairs):
        c += w
        if c >= half - eps:
            if c <= half + eps:
                later = [y for y, v in pairs[j + 1 :] if v > 0]
                if later:
                    return (x + later[0]) / 2
            return x
    return pairs[-1][0]


def cap_shares_reference(ws: list[float], cap: float) -> list[float]:
    """Shares summing to 1, none above ``cap`` (same rules as ``_cap_shares_nb``)."""
    k = len(ws)
    total = sum(ws)
    if not total > 0 or k * cap <= 1:
        return [1.0 / k] * k
    shares = [w / total for w in ws]
    if cap >= 1:
        return shares
    capped: set[int] = set()
    while True:
        free = 1 - cap * len(capped)
        rest = sum(shares[j] for j in range(k) if j not in capped)
        n_free = k - len(capped)
        over = {
            j
            for j in range(k)
            if j not in capped and (shares[j] / rest * free if rest > 0 else free / n_free) > cap
        }
        if not over:
            break
        capped |= over
    free = 1 - cap * len(capped)
    rest = sum(shares[j] for j in range(k) if j not in capped)
    return [
        cap if j in capped else (shares[j] / rest * free if rest > 0 else free / (k - len(capped)))
        for j in range(k)
    ]


def compute_fair_full_reference(now: int, p: FairParams, a: FairArrays, o: FairOut) -> int:
    """Plain-Python twin of ``compute_fair_full_nb``."""
    n_inst, _n_src = a.last_price.shape
    venue_of = {}
    for g in range(len(a.group_start) - 1):
        for q in range(a.group_start[g], a.group_start[g + 1]):
            venue_of[int(a.group_src[q])] = g
    m = 0
    for i in range(n_inst):
        emitted = int(a.last_emit_ns[i])
        hb_due = emitted != NEVER_NS and p.heartbeat_ns > 0 and now - emitted >= p.heartbeat_ns
        if not hb_due and (
            not a.dirty[i] or (emitted != NEVER_NS and now - emitted < p.min_interval_ns)
        ):
            continue
        a.dirty[i] = False
        if _fair_one_reference(i, now, hb_due, p, a, o, m, venue_of):
            m += 1
    return m


def _fair_one_reference(i, now, hb_due, p, a, o, m, venue_of) -> bool:
    n_src = a.last_price.shape[1]
    if 0 <= p.n_sources < n_src:
        n_src = p.n_sources
    price = {s: float(a.last_price[i, s]) for s in range(n_src)}
    age = {s: now - int(a.last_ts[i, s]) for s in range(n_src)}
    reason = {}
    for s in range(n_src):
        if math.isnan(price[s]):
            reason[s] = REASON_NO_DATA
        elif age[s] > p.stale_ns:
            reason[s] = REASON_STALE
        else:
            reason[s] = REASON_INCLUDED
    cands = [s for s in range(n_src) if reason[s] == REASON_INCLUDED]
    dispersion = math.nan
    if not cands:
        if math.isnan(a.last_fair[i]):
            for s in range(n_src):
                o.reasons[m, s] = reason[s]
            return False
        fair, status, n_used, n_ven, n_mark = float(a.last_fair[i]), FAIR_STALE, 0, 0, 0
        ages = [age[s] for s in range(n_src) if not math.isnan(price[s])]
        oldest = max(min(ages), 0) if ages else 0
    else:
        by_venue: dict[int, list[int]] = {}
        for s in cands:
            by_venue.setdefault(venue_of[s], []).append(s)
        if p.method == METHOD_TWO_LEVEL:
            units = [median_reference([price[s] for s in ss]) for ss in by_venue.values()]
        else:
            units = [price[s] for s in cands]
        ref = median_reference(units)
        used = list(cands)
        if len(units) >= 3 and p.outlier_exclude > 0 and ref > 0:
            for s in cands:
                d = abs(price[s] - ref) / ref
                if a.gate_out[i, s] and d < p.outlier_readmit:
                    a.gate_out[i, s] = False
                elif not a.gate_out[i, s] and d > p.outlier_exclude:
                    a.gate_out[i, s] = True
            used = [s for s in cands if not a.gate_out[i, s]]
            if used:
                for s in cands:
                    if a.gate_out[i, s]:
                        reason[s] = REASON_OUTLIER
            else:
                used = list(cands)
        n_used = len(used)
        n_mark = sum(1 for s in used if p.mark_inputs and s % 2 == 1)
        venues = sorted({venue_of[s] for s in used})
        n_ven = len(venues)
        oldest = max(0, *(age[s] for s in used))
        prices = [price[s] for s in used]

        def vol(s: int) -> float:
            dt = now - int(a.vol_ts[i, s])
            v = float(a.vol[i, s])
            return v * math.exp(-LN2 / p.halflife_ns * dt) if dt > 0 else v

        if p.method == METHOD_MEDIAN:
            fair = median_reference(prices)
        elif p.method == METHOD_TRIMMED_MEAN:
            s_ = sorted(prices)
            t = math.floor(p.trim * len(s_))
            kept = s_[t : len(s_) - t]
            fair = sum(kept) / len(kept)
        elif p.method == METHOD_TWO_LEVEL:
            meds, vols, fresh = [], [], []
            for g in venues:
                ss = [s for s in used if venue_of[s] == g]
                meds.append(median_reference([price[s] for s in ss]))
                vols.append(max([0.0] + [vol(s) for s in ss]))
                fresh.append(math.exp(-max(min(age[s] for s in ss), 0) / p.freshness_tau_ns))
            if sum(vols) <= 0:
                vols = [1.0] * len(vols)
            shares = cap_shares_reference(
                [v * f for v, f in zip(vols, fresh, strict=True)], p.venue_cap
            )
            fair = weighted_median_reference(meds, shares)
        elif p.method == METHOD_INVERSE_VARIANCE:
            vols = [vol(s) for s in used]
            variances = [
                a.var_num[i, s] / a.var_den[i, s] if a.var_den[i, s] > 0 else None for s in used
            ]
            known = [v for v in variances if v is not None]
            if known:
                inv = [1 / max(v if v is not None else max(known), VAR_FLOOR) for v in variances]
            else:
                inv = [1.0] * len(used)
            tv = sum(vols)
            vshare = [v / tv if tv > 0 else 1 / len(used) for v in vols]
            weights = [0.5 * vs + 0.5 * x / sum(inv) for vs, x in zip(vshare, inv, strict=True)]
            fair = weighted_median_reference(prices, weights)
        else:  # windowed VWM
            nb = a.bucket_id.shape[2]
            now_b = now // p.bucket_ns
            medians = []
            for b in range(now_b - nb + 1, now_b + 1):
                pts = [
                    (float(a.bucket_price[i, s, b % nb]), float(a.bucket_vol[i, s, b % nb]))
                    for s in used
                    if a.bucket_id[i, s, b % nb] == b
                    and not math.isnan(a.bucket_price[i, s, b % nb])
                ]
                if pts:
                    medians.append(weighted_median_reference(*map(list, zip(*pts, strict=True))))
            fair = sum(medians) / len(medians) if medians else median_reference(prices)
        dispersion = (max(prices) - min(prices)) / fair if n_used > 1 and fair != 0 else 0.0
        if n_used == 1:
            status = FAIR_SINGLE_SOURCE
        elif (n_used == 2 or n_ven == 2) and max(prices) > min(prices) * (1.0 + p.dispute):
            status = FAIR_DISPUTED
        elif n_ven < p.min_venues:
            status = FAIR_DEGRADED
        else:
            status = FAIR_OK
    for s in range(n_src):
        o.reasons[m, s] = reason[s]
    changed = (
        fair != a.last_fair[i]
        or status != a.last_status[i]
        or n_used != a.last_nsrc[i]
        or n_ven != a.last_nven[i]
        or n_mark != a.last_nmark[i]
    )
    if not (changed or hb_due):
        return False
    o.instrument[m] = i
    o.price[m] = fair
    o.method[m] = p.method
    o.sources[m] = n_used
    o.venues[m] = n_ven
    o.dispersion[m] = dispersion
    o.oldest_age_ns[m] = oldest
    o.status[m] = status
    o.marks[m] = n_mark
    a.last_fair[i] = fair
    a.last_status[i] = status
    a.last_nsrc[i] = n_used
    a.last_nven[i] = n_ven
    a.last_nmark[i] = n_mark
    a.last_emit_ns[i] = now
    return True


# ---------------------------------------------------------------------------------------------
# The holder the compute stage uses.


class FairResult(NamedTuple):
    """One ``compute`` pass: views of the output buffers, valid until the next pass."""

    instrument: np.ndarray
    price: np.ndarray
    method: np.ndarray
    sources: np.ndarray
    venues: np.ndarray
    dispersion: np.ndarray
    oldest_age_ns: np.ndarray
    status: np.ndarray
    reasons: np.ndarray  # [row, source] reason codes of the sources' trades / quotes
    marks: np.ndarray  # mark inputs among ``sources`` (0 without ``mark_inputs``)
    mark_reasons: np.ndarray  # [row, source] reason codes of their marks ([row, 0] without)


class FairBook:
    """Fair-price state of every (instrument, source) with its settings and output buffers.

    ``source_venues[s]`` is the venue id of source ``s``; ``source_table`` is
    ``Registry.source_table()``. Settings as in ``FairConfig`` (see :func:`make_params`).
    Sizes and ``set_source_venues`` count sources; with ``mark_inputs`` the state has two
    slots per source (module docstring), which ``compute`` splits back into ``reasons`` and
    ``mark_reasons``.
    """

    def __init__(
        self,
        n_instruments: int,
        source_table: np.ndarray,
        source_venues: np.ndarray | list[int],
        n_sources: int | None = None,
        **settings,
    ) -> None:
        buckets = int(settings.get("window_buckets", _DEFAULTS.window_buckets))
        self.params = make_params(**settings)
        self.method = METHOD_NAMES[self.params.method]
        # Kept by reference when already int32 and contiguous: a table filled in place later
        # (sources added live) is seen by the kernels.
        self.source_table = np.ascontiguousarray(source_table, dtype=np.int32)
        if self.source_table.ndim != 2:
            raise ValueError("source_table must be 2-D [provider, venue]")
        self.n_sources = max(len(source_venues), int(n_sources or 0))
        self.mark_inputs = bool(self.params.mark_inputs)
        self.stride = 2 if self.mark_inputs else 1  # slots per source
        tracked = buckets if self.params.method == METHOD_WINDOWED_VWM else 1
        slots = slot_venues(source_venues, self.mark_inputs)
        capacity = self.n_sources * self.stride
        self.arrays = make_arrays(n_instruments, slots, tracked, capacity)
        self.params = self.params._replace(n_sources=len(slots))
        self.out = make_out(n_instruments, capacity)
        self.n_instruments = self.arrays.last_price.shape[0]
        self.skipped = 0
        # (params, arrays, update entry, compute entry, source_table, out)
        self._bound: tuple[Any, ...] = ()

    def set_source_venues(self, source_venues: np.ndarray | list[int]) -> None:
        """New source → venue map (sources registered live); sizes do not change."""
        if len(source_venues) > self.n_sources:
            raise ValueError(f"{len(source_venues)} sources, capacity {self.n_sources}")
        slots = slot_venues(source_venues, self.mark_inputs)
        order, starts = _venue_groups(slots)
        self.arrays = self.arrays._replace(group_src=order, group_start=starts)
        self.params = self.params._replace(n_sources=len(slots))

    def _entries(self) -> tuple[Any, ...]:
        """The kernels' entry points for the current state (rebound when ``params`` or
        ``arrays`` is replaced): the dispatcher would type their NamedTuples on every call."""
        b = self._bound
        p, a, table, out = self.params, self.arrays, self.source_table, self.out
        if not b or b[0] is not p or b[1] is not a or b[4] is not table or b[5] is not out:
            recs = empty_records(1)  # any C-contiguous, writable batch has this type
            b = self._bound = (
                p,
                a,
                entry_point(update_fair_nb, recs, 1, table, p, a),
                entry_point(compute_fair_full_nb, 0, p, a, out),
                table,
                out,
            )
        return b

    SETTINGS = tuple(f.name for f in dataclasses.fields(FairConfig))

    @classmethod
    def from_config(
        cls,
        registry,
        fair_config,
        n_instruments: int | None = None,
        n_sources: int | None = None,
        source_table: np.ndarray | None = None,
        dispute: float = math.inf,
    ) -> FairBook:
        """Book for ``registry`` with the settings of ``fair_config`` (a ``FairConfig``).

        Sized for the registry unless capacities are given; ``source_table`` defaults to
        ``registry.source_table()``; ``dispute``: the ``[anomalies] divergence`` ratio.
        """
        settings = {k: getattr(fair_config, k) for k in cls.SETTINGS if hasattr(fair_config, k)}
        settings["dispute"] = dispute
        table = registry.source_table() if source_table is None else source_table
        n = len(registry.instruments) if n_instruments is None else n_instruments
        venues = [v for _p, v in registry.sources]
        return cls(n, table, venues, n_sources, **settings)

    def update(self, records: np.ndarray, n: int | None = None) -> int:
        """Apply ``records[:n]`` (all when ``n`` is None); return how many were skipped."""
        if records.dtype != RECORD_DTYPE:
            raise TypeError(f"records must have RECORD_DTYPE, got {records.dtype}")
        count = len(records) if n is None else min(int(n), len(records))
        kernel = update_fair_nb
        if records.flags.c_contiguous and records.flags.writeable:
            kernel = self._entries()[2]  # the types it was bound for (see _entries)
        skipped = int(kernel(records, count, self.source_table, self.params, self.arrays))
        self.skipped += skipped
        return skipped

    def compute(self, now_ns: int, final: bool = False) -> FairResult:
        """Outputs due at ``now_ns`` (``final``: ignore ``min_interval``)."""
        p = self.params._replace(min_interval_ns=0) if final else self.params
        kernel = compute_fair_full_nb if final else self._entries()[3]
        m = int(kernel(int(now_ns), p, self.arrays, self.out))
        o = self.out
        reasons = o.reasons[:m]
        k = self.stride
        return FairResult(
            *(x[:m] for x in o[:-2]),
            reasons=reasons[:, ::k],
            marks=o.marks[:m],
            mark_reasons=reasons[:, 1::k] if self.mark_inputs else reasons[:, :0],
        )
