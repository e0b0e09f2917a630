"""Anomaly-detection kernels: per-subscription state from record batches, and a periodic
evaluation that opens and closes anomaly episodes and writes event rows.

Vocabulary. A *subscription* is one (instrument, source) pair the configuration asked for, with
a dense id ``k`` (``sub_table[instrument, source]``); a source is a (provider, venue) pair.
Every subscription belongs to four *groups* (its provider, its venue, its data class, its
instrument), numbered densely in ``sub_groups[k, level]``.

``update_nb`` applies a record batch (market data and the health records the adapters write:
KIND_HEARTBEAT, KIND_STATUS, KIND_GAP) to the state. ``evaluate_nb`` runs every
``evaluate_interval`` and writes one event row per episode start or end. The rules (also in
``docs/anomalies.md``):

* **Detectors per subscription** (``D_*``), each a small state machine: while the measure is
  beyond the *open* threshold an onset time is kept; after ``need`` nanoseconds beyond it the
  subscription is *active*; it stays active until the measure is back inside the *clear*
  threshold (hysteresis). *Pre-active* = active, or beyond the open threshold for at least
  ``need / 2``.
* **Roll-up** (every per-subscription detector). Levels in order: provider, venue, data class,
  instrument. A group of at least two subscriptions *opens* an episode when every member is
  pre-active and at least one member is active and not yet covered (by a disconnected provider,
  its own subscription episode, or an open group of an earlier level); its members are then
  covered. It *closes* as soon as one member is no longer pre-active; its members then start
  from scratch (they must qualify again for the full duration), so a group ending does not turn
  into N subscription events at once. A subscription that is active and not covered opens its
  own episode, which closes when it is no longer active. The half-duration pre-active rule is
  what makes a simultaneous outage one group event rather than a race between members.
* **Disconnect** (per provider): the last KIND_STATUS was DISCONNECTED or SUBSCRIBE_ERROR, or the
  provider has sent heartbeats before and neither a heartbeat nor data came for
  ``heartbeat_timeout``. A disconnect shorter than one evaluation still yields a start and an end
  event. While a provider is down, its subscriptions' detectors are reset (covered by the
  disconnect event) and their no-data clocks restart when it comes back.
* **Bursts** (sequence gaps, ring overflow per ring): open at the first increment, close after
  ``gap_quiet`` without another. A gap of a known subscription is one episode per (instrument,
  source); gaps of one source's sequence (no instrument) and the gaps of two or more of its
  subscriptions that start in one evaluation are rolled up into one episode of the source,
  which then takes every further gap of its subscriptions until it closes (an instrument whose
  own episode is already open keeps it).
* **Divergence** (per instrument over its *fresh* sources: provider up, a price, data within
  ``no_data_after``; n of them). n >= 3: each source is measured against the median of the
  fresh prices (the outlier is the source beyond the threshold; the event names it and its
  peer, the fresh source farthest from it), through the per-subscription detector and its
  roll-up. n == 2: the pair's ratio max / min - 1 is one episode per instrument naming both
  sources (no outlier can be told), or one per source pair when several instruments of the
  same two sources diverge together (``_pair_episodes``); it supersedes the per-subscription
  detector, which then measures nothing. n <= 1: the per-subscription detector measures
  price / fair - 1. Pairs on one venue are pairs like any other (``venue_divergence`` is no
  longer emitted).

Each ``*_nb`` kernel has a plain-Python oracle in :mod:`fairfeed.hotpath.anomaly_reference`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from fairfeed.core.config import AnomalyConfig, anomaly_thresholds
from fairfeed.core.records import (
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_STATUS,
    KIND_TRADE,
    MAX_MARKET_KIND,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)

# -- event kinds (published names in KIND_NAMES) -------------------------------------------------
A_NO_DATA = 1
A_NO_FIRST_DATA = 2
A_DIVERGENCE = 3
A_VENUE_DIVERGENCE = 4
A_LATENCY_EXCHANGE = 5  # exchange -> provider
A_LATENCY_LOCAL = 6  # provider (or exchange, when the provider adds no time) -> us
A_CLOCK_SKEW = 7  # a negative latency beyond the skew threshold
A_RATE_DROP = 8
A_GAP = 9
A_DISCONNECT = 10
A_RING_OVERFLOW = 11
KIND_NAMES = {
    A_NO_DATA: "no_data",
    A_NO_FIRST_DATA: "no_first_data",
    A_DIVERGENCE: "divergence",
    A_VENUE_DIVERGENCE: "venue_divergence",
    A_LATENCY_EXCHANGE: "latency_exchange",
    A_LATENCY_LOCAL: "latency_local",
    A_CLOCK_SKEW: "clock_skew",
    A_RATE_DROP: "rate_drop",
    A_GAP: "gap",
    A_DISCONNECT: "disconnect",
    A_RING_OVERFLOW: "ring_overflow",
}

# Per-subscription detectors (rolled up) and the event kind of each.
D_NO_DATA = 0
D_NO_FIRST = 1
D_DIVERGENCE = 2
D_LAT_EX = 3
D_LAT_LOCAL = 4
D_SKEW = 5
D_RATE = 6
N_DET = 7
DET_KINDS = np.array(
    [A_NO_DATA, A_NO_FIRST_DATA, A_DIVERGENCE, A_LATENCY_EXCHANGE, A_LATENCY_LOCAL,
     A_CLOCK_SKEW, A_RATE_DROP], np.int64,
)  # fmt: skip

# Subject levels of an event row.
LV_SUB = 0  # provider, venue, data class, instrument
LV_PROVIDER = 1
LV_VENUE = 2
LV_CLASS = 3
LV_INSTRUMENT = 4
LV_SOURCE = 5  # provider, venue
LV_VENUE_INSTRUMENT = 6
LV_RING = 7  # no subject fields; the ring index is in the values
LV_PAIR = 8  # provider, venue, data class, instrument of one source; the peer in E_PEER_*
N_GROUP_LEVELS = 4  # provider, venue, class, instrument (sub_groups columns, roll-up order)

PHASE_START = 0
PHASE_END = 1

# Disconnect reasons (value 0 of a disconnect event).
REASON_DISCONNECTED = 1
REASON_SUBSCRIBE_ERROR = 2
REASON_HEARTBEAT = 3
REASON_NAMES = {
    REASON_DISCONNECTED: "disconnected",
    REASON_SUBSCRIBE_ERROR: "subscribe_error",
    REASON_HEARTBEAT: "heartbeat_timeout",
}

# The state, one structured array per kind of subject (a row per subscription, provider, burst,
# venue segment); field names instead of column numbers, and a subscription's figures stay
# together in memory as the per-subscription pass wants them.
SUB_STATE_DTYPE = np.dtype([
    ("last_data", "i8"),  # ts_receive of the last market record (0 = never)
    ("quiet_from", "i8"),  # the no-data clock does not run before this (start, reconnect, roll-up)
    ("gap_max", "i8"),  # longest inter-arrival time that ended since the last evaluation
    ("count", "i8"),  # market records since the last evaluation
    ("ep_max", "i8"),  # exchange -> provider latency, max / min since the last evaluation
    ("ep_min", "i8"),
    ("loc_max", "i8"),  # provider -> us latency, max / min since the last evaluation
    ("loc_min", "i8"),
    ("n_ep", "i8"),  # latency samples since the last evaluation
    ("n_loc", "i8"),
    ("price", "f8"),  # last trade price or quote mid, whichever came last (NaN = none)
    ("bid", "f8"),
    ("ask", "f8"),
    ("ref", "f8"),  # this evaluation's divergence reference (fair, median; NaN = not measured)
    ("peer", "i8"),  # the fresh subscription farthest from it (n >= 3; -1 = none)
    ("gap_hi", "f8"),  # decaying maximum of gap_max (the adaptive no-data threshold) over
    ("gap_n", "i8"),  # this many evaluations (evaluation-only: kept off update_nb's lines)
    ("rd_from", "i8"),  # rate test window (drop, or recovery while active): start (0 = none),
    ("rd_n", "i8"),  # records in it, and records expected at the baseline rate
    ("rd_mu", "f8"),
    ("base", "f8"),  # bias-corrected EWMAs of the update rate (msgs/s), of count^2 / dt (s)
    ("base_sq", "f8"),  # (the dispersion of the counts), and their weight
    ("base_w", "f8"),
])  # fmt: skip
PROVIDER_STATE_DTYPE = np.dtype([
    ("last_hb", "i8"),
    ("hb_seen", "i8"),
    ("last_alive", "i8"),  # last heartbeat, data or connect
    ("status", "i8"),  # last STATUS code (0 = none yet)
    ("down_since", "i8"),  # the first DISCONNECTED / SUBSCRIBE_ERROR not followed by CONNECTED
    ("down_reason", "i8"),
    ("blip_start", "i8"),  # a disconnect that began and ended between two evaluations
    ("blip_end", "i8"),
    ("blip_reason", "i8"),
    ("open", "i8"),  # start of the open disconnect episode (0 = none)
    ("open_reason", "i8"),
    # its periodic derivatives values (mark, index, funding, open interest) are its
    # subscriptions' data: a provider that streams nothing else (Kaiko's metrics alone)
    ("derivs_data", "i8"),
])  # fmt: skip
# bursts: gaps per source, then overflow per ring; and gaps per subscription
BURST_DTYPE = np.dtype([
    ("count", "i8"),  # running totals
    ("missed", "i8"),
    ("base_count", "i8"),  # totals when the open episode started
    ("base_missed", "i8"),
    ("first", "i8"),  # first increment of the pending / open episode
    ("last", "i8"),  # last increment
    ("open", "i8"),  # start of the open episode (0 = none)
    # a source's burst: the subscriptions rolled into its episode; a subscription's: 1 while
    # it is one of them
    ("covered", "i8"),
])  # fmt: skip
# pairwise divergence, per instrument (an episode while exactly two sources are fresh)
PAIR_DTYPE = np.dtype([
    ("onset", "i8"),  # detector state (as ``onset`` / ``active`` of a subscription)
    ("active", "i8"),
    ("open", "i8"),  # start of the open episode (0 = none)
    ("spread", "f8"),  # last measure: max / min - 1, and the two prices
    ("lo", "f8"),
    ("hi", "f8"),
    ("k_hi", "i8"),  # the subscriptions of the two prices
    ("k_lo", "i8"),
    ("s_hi", "i8"),  # the open episode's subject and peer: its start's k_hi and k_lo (the end
    ("s_lo", "i8"),  # names the same sources, whichever is higher by then)
    ("group", "i8"),  # 1 + the instrument whose row holds the source-pair episode it is in
    # a source-pair episode held in this row: open since (0 = none), members now and in all,
    # its sources (subscriptions naming subject and peer), and its last measure
    ("g_open", "i8"),
    ("g_n", "i8"),
    ("g_count", "i8"),
    ("g_hi", "i8"),
    ("g_lo", "i8"),
    ("g_spread", "f8"),
    ("g_phi", "f8"),
    ("g_plo", "f8"),
])  # fmt: skip
CLOCK_DTYPE = np.dtype([
    ("last_eval", "i8"),
    ("deferred", "i8"),  # transitions postponed because the event buffer was full
])  # fmt: skip
# thresholds per subscription (durations in ns)
THRESHOLD_DTYPE = np.dtype([
    ("no_data", "f8"),
    ("nd_factor", "f8"),  # adaptive no-data threshold: factor x longest recent gap (0 = fixed),
    ("nd_floor", "f8"),  # clamped to [floor, cap]
    ("nd_cap", "f8"),
    ("first_data", "f8"),
    ("div", "f8"),
    ("div_for", "f8"),
    ("div_clear", "f8"),
    ("lat_ex", "f8"),
    ("lat_local", "f8"),
    ("skew", "f8"),
    ("lat_for", "f8"),
    ("rate_ratio", "f8"),
    ("rate_clear", "f8"),
    ("rate_floor", "f8"),
    ("rate_for", "f8"),
])  # fmt: skip
# the layout of the monitored set
SUB_META_DTYPE = np.dtype([
    ("provider", "i8"), ("venue", "i8"), ("data_class", "i8"), ("instrument", "i8"),
    ("source", "i8"),
])  # fmt: skip
SOURCE_META_DTYPE = np.dtype([("provider", "i8"), ("venue", "i8")])
GROUP_META_DTYPE = np.dtype([("level", "i8"), ("id", "i8")])  # level: LV_PROVIDER ..., 0 = none


class AnomalyGlobals(NamedTuple):
    """Settings that are not per subscription (durations in ns)."""

    hb_timeout: float
    gap_quiet: float
    rate_sig: float  # ln(1 / rate_drop_alpha): the rate tests' significance
    rate_base: float  # EWMA time constant of the baseline rate
    lat_clear: float  # latency / skew episodes end below threshold x this


# event rows
E_KIND = 0
E_PHASE = 1
E_LEVEL = 2
E_PROVIDER = 3  # -1 = not applicable
E_VENUE = 4
E_CLASS = 5
E_INSTRUMENT = 6
E_START = 7
E_END = 8  # 0 while open
E_DETECTED = 9  # evaluation time that produced the row
E_COUNT = 10  # subscriptions covered (a source's gap: rolled into it; ring: ring index)
E_PEER_PROVIDER = 11  # divergence: the other source of the pair (-1 = none)
E_PEER_VENUE = 12
N_EI = 13
N_EF = 4  # v0, v1, v2, threshold


@njit(cache=True)
def update_nb(records, n, sub_table, source_table, subs, provs, bursts,
              sub_bursts):  # fmt: skip  # pragma: no cover
    """Apply ``records[:n]`` to the anomaly state; return the records ignored.

    Reference: ``anomaly_reference.update_reference``.

    Market records (trade, bid, ask) of a subscription (``sub_table[instrument, source]`` >= 0)
    set its last data time (``ts_receive``), count one update, track latencies (exchange ->
    provider = ts_provider - ts_exchange when both are known; provider -> us = ts_receive -
    ts_provider, or ts_receive - ts_exchange when the provider adds no time) and the last price
    (trade price, or quote mid once bid and ask are known); they also make their provider alive.
    Mark, index, funding and open-interest records do the same but for the price when their
    provider's ``derivs_data`` is set (it streams nothing else).
    KIND_HEARTBEAT marks the provider alive. KIND_STATUS CONNECTED ends a pending disconnect
    (kept as a blip for the evaluation); DISCONNECTED / SUBSCRIBE_ERROR start one. KIND_GAP adds
    one gap and ``size`` missed messages to its subscription's burst, or to its source's when
    the record names no subscribed instrument (a connection's sequence).
    """
    n_inst = sub_table.shape[0]
    n_src = sub_table.shape[1]
    n_prov = provs.shape[0]
    ignored = 0
    for j in range(n):
        r = records[j]
        kind = r.kind
        prov = np.int64(r.provider)
        ts = r.ts_receive
        market = KIND_TRADE <= kind <= MAX_MARKET_KIND  # trade, bid, ask
        if market or (KIND_MARK <= kind <= KIND_OPEN_INTEREST and prov < n_prov
                      and provs[prov].derivs_data != 0):  # fmt: skip
            inst = np.int64(r.instrument)
            venue = np.int64(r.venue)
            if (inst >= n_inst or prov >= source_table.shape[0]
                    or venue >= source_table.shape[1]):  # fmt: skip
                ignored += 1
                continue
            src = np.int64(source_table[prov, venue])
            if src < 0 or src >= n_src:
                ignored += 1
                continue
            k = np.int64(sub_table[inst, src])
            if k < 0:
                ignored += 1
                continue
            # the inter-arrival time, on the no-data clock (from a restart, not across it)
            prev = subs[k].last_data
            gap = ts - max(prev, subs[k].quiet_from)
            if prev > 0 and gap > subs[k].gap_max:
                subs[k].gap_max = gap
            subs[k].last_data = ts
            subs[k].count += 1
            if prov < n_prov and ts > provs[prov].last_alive:
                provs[prov].last_alive = ts
            tex = r.ts_exchange
            tpr = r.ts_provider
            if tex > 0 and tpr > 0:
                lat = tpr - tex
                if subs[k].n_ep == 0 or lat > subs[k].ep_max:
                    subs[k].ep_max = lat
                if subs[k].n_ep == 0 or lat < subs[k].ep_min:
                    subs[k].ep_min = lat
                subs[k].n_ep += 1
            base = tpr if tpr > 0 else tex
            if base > 0 and ts > 0:
                lat = ts - base
                if subs[k].n_loc == 0 or lat > subs[k].loc_max:
                    subs[k].loc_max = lat
                if subs[k].n_loc == 0 or lat < subs[k].loc_min:
                    subs[k].loc_min = lat
                subs[k].n_loc += 1
            price = r.price
            if market and np.isfinite(price):
                if kind == KIND_TRADE:
                    subs[k].price = price
                else:
                    if kind == KIND_BID:
                        subs[k].bid = price
                    else:
                        subs[k].ask = price
                    bid = subs[k].bid
                    ask = subs[k].ask
                    if not (np.isnan(bid) or np.isnan(ask)):
                        subs[k].price = (bid + ask) * 0.5
        elif kind == KIND_HEARTBEAT:
            if prov >= n_prov:
                ignored += 1
                continue
            provs[prov].last_hb = ts
            provs[prov].hb_seen = 1
            if ts > provs[prov].last_alive:
                provs[prov].last_alive = ts
        elif kind == KIND_STATUS:
            if prov >= n_prov:
                ignored += 1
                continue
            code = np.int64(r.flags)
            if code == STATUS_CONNECTED:
                if provs[prov].down_since > 0 and provs[prov].blip_start == 0:
                    provs[prov].blip_start = provs[prov].down_since
                    provs[prov].blip_end = ts
                    provs[prov].blip_reason = provs[prov].down_reason
                provs[prov].down_since = 0
                provs[prov].down_reason = 0
                if ts > provs[prov].last_alive:
                    provs[prov].last_alive = ts
            elif code == STATUS_DISCONNECTED or code == STATUS_SUBSCRIBE_ERROR:  # noqa: SIM109
                if provs[prov].down_since == 0:
                    provs[prov].down_since = max(ts, 1)
                    provs[prov].down_reason = (
                        REASON_DISCONNECTED if code == STATUS_DISCONNECTED
                        else REASON_SUBSCRIBE_ERROR
                    )  # fmt: skip
                elif code == STATUS_SUBSCRIBE_ERROR:
                    provs[prov].down_reason = REASON_SUBSCRIBE_ERROR
            else:
                ignored += 1
                continue
            provs[prov].status = code
        elif kind == KIND_GAP:
            venue = np.int64(r.venue)
            if prov >= source_table.shape[0] or venue >= source_table.shape[1]:
                ignored += 1
                continue
            src = np.int64(source_table[prov, venue])
            if src < 0 or src >= n_src:
                ignored += 1
                continue
            inst = np.int64(r.instrument)
            k = np.int64(sub_table[inst, src]) if inst < n_inst else -1
            missed = np.int64(max(r.size, 0.0))
            if k >= 0:
                _burst_add(sub_bursts, k, ts, missed)
            else:
                _burst_add(bursts, src, ts, missed)
        else:
            ignored += 1
    return ignored


@njit(cache=True, _nrt=False)
def _burst_add(bursts, b, ts, missed):  # pragma: no cover
    bursts[b].count += 1
    bursts[b].missed += missed
    if bursts[b].first == 0:
        bursts[b].first = max(ts, 1)
    bursts[b].last = max(ts, 1)


# Explicit signatures: one compiled copy each (call sites with literal arguments would each
# compile their own specialization otherwise, which made the cold compile much longer). The
# helpers only index the arrays they are given: compiled without the reference-counting runtime
# (``_nrt=False``), a call per subscription costs no atomic increments and decrements.
_I2 = "i8[:, ::1]"
_F2 = "f8[:, ::1]"


@njit(f"i8({_I2}, {_F2}, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, f8, f8, f8, f8)",
      cache=True, _nrt=False)  # fmt: skip
def _emit(ev_i, ev_f, m, kind, phase, level, prov, venue, cls, inst, start, end, now, count,
          v0, v1, v2, thr):  # fmt: skip  # pragma: no cover
    ev_i[m, E_KIND] = kind
    ev_i[m, E_PHASE] = phase
    ev_i[m, E_LEVEL] = level
    ev_i[m, E_PROVIDER] = prov
    ev_i[m, E_VENUE] = venue
    ev_i[m, E_CLASS] = cls
    ev_i[m, E_INSTRUMENT] = inst
    ev_i[m, E_START] = start
    ev_i[m, E_END] = end
    ev_i[m, E_DETECTED] = now
    ev_i[m, E_COUNT] = count
    ev_i[m, E_PEER_PROVIDER] = -1
    ev_i[m, E_PEER_VENUE] = -1
    ev_f[m, 0] = v0
    ev_f[m, 1] = v1
    ev_f[m, 2] = v2
    ev_f[m, 3] = thr
    return m + 1


@njit(f"void({_I2}, {_I2}, i8, i8, i8, b1, b1, f8)", cache=True, _nrt=False)
def _step(onset, active, d, k, now, beyond_open, beyond_clear, need):  # pragma: no cover
    """Advance one detector state machine (see the module docstring)."""
    if active[k, d]:
        if not beyond_clear:
            active[k, d] = 0
            onset[k, d] = 0
    elif beyond_open:
        if onset[k, d] == 0:
            onset[k, d] = now
        if now - onset[k, d] >= need:
            active[k, d] = 1
    else:
        onset[k, d] = 0


# The adaptive no-data threshold remembers about ND_MEMORY evaluation intervals with data; the
# cap applies until it has learned ND_WARMUP of them.
ND_MEMORY = 256.0
ND_DECAY = 1.0 - 1.0 / ND_MEMORY
ND_WARMUP = 16


@njit("f8(f8, i8, f8, f8, f8)", cache=True, _nrt=False)
def _adaptive_limit(hi, n, factor, floor, cap):  # pragma: no cover
    """``factor`` x the longest recent gap ``hi``, within [floor, cap]; the cap while learning."""
    if n < ND_WARMUP:
        return cap
    return min(max(factor * hi, floor), cap)


@njit(cache=True, _nrt=False)
def _no_data_limit(thr, subs, k):  # pragma: no cover
    """The no-data threshold of subscription ``k`` (ns): fixed, or adaptive (``nd_factor`` >
    0). The adaptive one first learns this interval's longest gap, clipped to the threshold: a
    silence that alarmed teaches it at most the threshold, not the length of an outage."""
    t = thr[k]
    if t.nd_factor <= 0:
        return t.no_data
    hi = subs[k].gap_hi
    n = subs[k].gap_n
    lim = _adaptive_limit(hi, n, t.nd_factor, t.nd_floor, t.nd_cap)
    g = subs[k].gap_max
    if g > 0:
        hi = max(min(float(g), lim), hi * ND_DECAY)
        n += 1
        subs[k].gap_hi = hi
        subs[k].gap_n = n
        lim = _adaptive_limit(hi, n, t.nd_factor, t.nd_floor, t.nd_cap)
    return lim


@njit("f8(f8, f8)", cache=True, _nrt=False)
def _poisson_g(n, mu):  # pragma: no cover
    """The Chernoff exponent of a Poisson count: P(N <= n) (n < mu) and P(N >= n) (n > mu) are
    at most exp(-G) for N ~ Poisson(mu)."""
    if mu <= 0:
        return 0.0
    if n <= 0:
        return mu
    return mu - n + n * np.log(n / mu)


@njit(cache=True, _nrt=False)
def _rate_window(subs, k, now):  # pragma: no cover
    subs[k].rd_from = now
    subs[k].rd_n = 0
    subs[k].rd_mu = 0.0


@njit(cache=True, _nrt=False)
def _rate_test(now, dt, thr, sig, subs, onset, active, meas, k, base, quiet,
               gone):  # fmt: skip  # pragma: no cover
    """The rate-drop state of subscription ``k`` (docs/anomalies.md, ``rate_drop``): the window
    counts records ``n`` and expects ``mu`` at the baseline rate. Not active: a new window as soon
    as ``n >= ratio x mu`` (not below the drop rate); beyond the open threshold while ``n`` is
    also significantly below ``mu``, from the window's start; active after ``rate_for``. Active:
    the window is the recovery's; a new one while ``n <= clear x mu``; it ends once ``n`` is
    significantly above ``clear x mu``. ``sig`` = dispersion x ln(1 / alpha). Silences are
    ``no_data``'s: the test pauses while ``quiet`` and starts a new window once ``gone`` (an
    open drop stays open)."""
    t = thr[k]
    start = subs[k].rd_from
    if gone:
        onset[k, D_RATE] = 0 if active[k, D_RATE] == 0 else onset[k, D_RATE]
        _rate_window(subs, k, now)
        return
    if quiet:
        return
    if base < t.rate_floor:  # illiquid: no test, no window (most streams: no stores)
        if start != 0 or onset[k, D_RATE] != 0 or active[k, D_RATE] != 0:
            onset[k, D_RATE] = 0
            active[k, D_RATE] = 0
            _rate_window(subs, k, 0)
        return
    if start == 0 or start < subs[k].quiet_from:  # measured afresh: a new window
        onset[k, D_RATE] = 0
        active[k, D_RATE] = 0
        _rate_window(subs, k, now)
        return
    if dt <= 0 or now <= start:
        return
    n = subs[k].rd_n + subs[k].count
    mu = subs[k].rd_mu + base * dt / 1e9
    subs[k].rd_n = n
    subs[k].rd_mu = mu
    meas[k, D_RATE, 0] = n * 1e9 / (now - start)
    if active[k, D_RATE]:
        lo = t.rate_clear * mu
        if n <= lo:
            _rate_window(subs, k, now)
        elif _poisson_g(float(n), lo) >= sig:
            active[k, D_RATE] = 0
            onset[k, D_RATE] = 0
            _rate_window(subs, k, now)
    elif n >= t.rate_ratio * mu:
        onset[k, D_RATE] = 0
        _rate_window(subs, k, now)
    elif _poisson_g(float(n), mu) >= sig:
        onset[k, D_RATE] = start
        if now - start >= t.rate_for:
            active[k, D_RATE] = 1
            _rate_window(subs, k, now)  # from now on the window tests the recovery
    else:
        onset[k, D_RATE] = 0


@njit(cache=True)
def evaluate_nb(now, thr, glob, layout, st, ring_dropped, fair, ev_i, ev_f):  # pragma: no cover
    """One evaluation at ``now`` (ns); returns the number of event rows written.

    Reference: ``anomaly_reference.evaluate_reference``. Rules: module docstring. ``thr``: one
    ``THRESHOLD_DTYPE`` row per subscription; ``glob``: :class:`AnomalyGlobals`; ``layout``:
    :class:`AnomalyLayout`; ``st``: :class:`AnomalyArrays`; ``fair[i]`` is the latest fair price
    of instrument i (NaN = none); ``ring_dropped[r]`` the running drop count of ring r. A
    transition that finds the event buffer full is postponed to the next evaluation (counted in
    ``st.clock[0].deferred``). The phases run in order, each over its own subjects.
    """
    clock = st.clock
    last = clock[0].last_eval
    dt = now - last if last > 0 else 0
    clock[0].last_eval = now
    down = np.zeros(st.provs.shape[0], np.bool_)
    m = _disconnects(now, glob.hb_timeout, st.provs, down, clock, ev_i, ev_f, 0)
    m = _pairs(now, thr, layout.sub_meta, layout.src_meta.shape[0], layout.in_offsets,
               layout.in_subs, st.subs, fair, down, st.spreads, clock, ev_i, ev_f, m)  # fmt: skip
    busy = np.zeros(N_DET, np.bool_)
    mask = np.empty(layout.sub_meta.shape[0], np.uint8)
    _detectors(now, dt, thr, glob, layout.sub_meta, st.subs, st.provs, fair, down, st.onset,
               st.active, st.sub_open, st.meas, busy, mask)  # fmt: skip
    m0 = m
    m = _roll_up(now, thr, layout.sub_meta, layout.sub_groups, layout.group_meta,
                 layout.group_size, st.subs, st.onset, st.active, st.sub_open, st.meas,
                 st.group_open, down, busy, mask, clock, ev_i, ev_f, m)  # fmt: skip
    _name_peers(ev_i, m0, m, layout.sub_meta, layout.in_offsets, layout.in_subs, st.subs)
    m = _gaps(now, last, glob.gap_quiet, st.bursts, st.sub_bursts, layout.sub_meta,
              layout.src_meta, clock, ev_i, ev_f, m)  # fmt: skip
    return _overflows(now, glob.gap_quiet, st.bursts, layout.src_meta.shape[0], ring_dropped,
                      clock, ev_i, ev_f, m)  # fmt: skip


@njit(cache=True)
def _disconnects(now, hb_timeout, provs, down, clock, ev_i, ev_f, m):  # pragma: no cover
    """Phase 1, per provider: disconnect episodes (and blips between two evaluations); marks
    ``down[p]`` for every provider down now. Returns the event count."""
    cap = ev_i.shape[0]
    for p in range(provs.shape[0]):
        reason = provs[p].down_reason if provs[p].down_since > 0 else 0
        since = provs[p].down_since
        if reason == 0 and provs[p].hb_seen and now - provs[p].last_alive > hb_timeout:
            reason = REASON_HEARTBEAT
            since = provs[p].last_alive
        silent_s = (now - provs[p].last_alive) / 1e9
        if provs[p].open > 0:
            if reason == 0:
                if m >= cap:
                    clock[0].deferred += 1
                    down[p] = True
                    continue
                end = provs[p].blip_end if provs[p].blip_start > 0 else now
                end = max(end, provs[p].open)
                m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_END, LV_PROVIDER, p, -1, -1, -1,
                          provs[p].open, end, now, 0, provs[p].open_reason,
                          silent_s, 0.0, hb_timeout / 1e9)  # fmt: skip
                provs[p].open = 0
                provs[p].open_reason = 0
                provs[p].blip_start = 0
                provs[p].blip_end = 0
            else:
                down[p] = True
                provs[p].blip_start = 0
        elif reason != 0:
            if m >= cap:
                clock[0].deferred += 1
            else:
                since = max(since, 1)
                m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_START, LV_PROVIDER, p, -1, -1, -1,
                          since, 0, now, 0, reason, silent_s, 0.0, hb_timeout / 1e9)  # fmt: skip
                provs[p].open = since
                provs[p].open_reason = reason
            down[p] = True
            provs[p].blip_start = 0
        elif provs[p].blip_start > 0:
            if m + 2 > cap:
                clock[0].deferred += 1
                continue
            bs = provs[p].blip_start
            be = max(provs[p].blip_end, bs)
            br = provs[p].blip_reason
            m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_START, LV_PROVIDER, p, -1, -1, -1, bs,
                      0, now, 0, br, 0.0, 0.0, hb_timeout / 1e9)  # fmt: skip
            m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_END, LV_PROVIDER, p, -1, -1, -1, bs,
                      be, now, 0, br, 0.0, 0.0, hb_timeout / 1e9)  # fmt: skip
            provs[p].blip_start = 0
            provs[p].blip_end = 0

    return m


@njit(cache=True)
def _detectors(now, dt, thr, glob, sub_meta, subs, provs, fair, down, onset, active, sub_open,
               meas, busy, mask):  # fmt: skip  # pragma: no cover
    """Phase 2, per subscription: the detector states and measures (no data, divergence from
    the fair price, latencies and skew, update rate); resets the interval counters. Lists the
    detectors in progress for the roll-up: ``mask[k]`` bit d, and ``busy[d]``."""
    # Each subscription's figures are read once into locals (the compiler cannot keep them
    # across the stores: arrays may alias).
    n_sub = sub_meta.shape[0]
    n_prov = provs.shape[0]
    a_base = 1.0 - np.exp(-dt / glob.rate_base) if dt > 0 else 0.0
    lat_clear = glob.lat_clear
    for k in range(n_sub):
        p = sub_meta[k].provider
        if p < n_prov and down[p]:
            subs[k].quiet_from = now
            for d in range(N_DET):
                onset[k, d] = 0
                active[k, d] = 0
        else:
            last_data = subs[k].last_data
            n_ep = subs[k].n_ep
            n_loc = subs[k].n_loc
            lim_nodata = thr[k].no_data
            t0 = max(last_data, subs[k].quiet_from)
            silent = now - t0
            # no data (after some) / never any data
            if last_data > 0:
                lim = _no_data_limit(thr, subs, k)
                # alive but silent: a heartbeat well into the silence, not just one that
                # happened to follow the last record before the connection died
                hb_ok = (p >= n_prov or provs[p].hb_seen == 0
                         or provs[p].last_hb - t0 > lim * 0.5)  # fmt: skip
                on_nd = t0 if silent >= lim * 0.5 else 0
                onset[k, D_NO_DATA] = on_nd
                active[k, D_NO_DATA] = 1 if (silent >= lim and hb_ok) else 0
                meas[k, D_NO_DATA, 0] = silent / 1e9
                meas[k, D_NO_DATA, 1] = lim / 1e9
                onset[k, D_NO_FIRST] = 0
                active[k, D_NO_FIRST] = 0
            else:
                lim = thr[k].first_data
                on_nd = t0 if silent >= lim * 0.5 else 0
                onset[k, D_NO_FIRST] = on_nd
                active[k, D_NO_FIRST] = 1 if silent >= lim else 0
                meas[k, D_NO_FIRST, 0] = silent / 1e9
                onset[k, D_NO_DATA] = 0
                active[k, D_NO_DATA] = 0
            nodata = on_nd > 0
            # a silence is no_data's, not a rate drop: the rate test pauses after half of the
            # shorter of the two thresholds and starts afresh after the whole of it
            lim_q = min(lim, thr[k].rate_for) if last_data > 0 else 0.0
            quiet = nodata or silent >= lim_q * 0.5
            gone = silent >= lim_q
            # divergence from this evaluation's reference (phase 2a: fair or median)
            price = subs[k].price
            f = subs[k].ref
            fresh = last_data > 0 and now - last_data < lim_nodata
            if fresh and not np.isnan(price) and not np.isnan(f) and f > 0:
                dev = price / f - 1.0
                meas[k, D_DIVERGENCE, 0] = dev
                meas[k, D_DIVERGENCE, 1] = price
                meas[k, D_DIVERGENCE, 2] = f
                a = abs(dev)
                _step(onset, active, D_DIVERGENCE, k, now, a > thr[k].div,
                      a > thr[k].div_clear, thr[k].div_for)  # fmt: skip
            else:
                _step(onset, active, D_DIVERGENCE, k, now, False, False, thr[k].div_for)
            # latencies (only intervals with samples move the state)
            if n_ep > 0 or n_loc > 0:
                lat_for = thr[k].lat_for
                if n_ep > 0:
                    lat = subs[k].ep_max
                    lim = thr[k].lat_ex
                    meas[k, D_LAT_EX, 0] = lat / 1e6
                    _step(onset, active, D_LAT_EX, k, now, lat > lim, lat > lim * lat_clear,
                          lat_for)  # fmt: skip
                if n_loc > 0:
                    lat = subs[k].loc_max
                    lim = thr[k].lat_local
                    meas[k, D_LAT_LOCAL, 0] = lat / 1e6
                    _step(onset, active, D_LAT_LOCAL, k, now, lat > lim, lat > lim * lat_clear,
                          lat_for)  # fmt: skip
                lo = np.int64(0)
                if n_ep > 0:
                    lo = subs[k].ep_min
                if n_loc > 0 and (n_ep == 0 or subs[k].loc_min < lo):
                    lo = subs[k].loc_min
                lim = thr[k].skew
                meas[k, D_SKEW, 0] = lo / 1e6
                _step(onset, active, D_SKEW, k, now, lo < -lim, lo < -lim * lat_clear,
                      lat_for)  # fmt: skip
            # update rate: Poisson tests of the count in a window against the baseline
            # (docs/anomalies.md); the baseline is frozen while silent or in a drop
            r_base = subs[k].base
            r_sq = subs[k].base_sq
            r_base_w = subs[k].base_w
            dt_s = dt / 1e9
            if (dt > 0 and last_data > 0 and not quiet and onset[k, D_RATE] == 0
                    and active[k, D_RATE] == 0):  # fmt: skip
                c = float(subs[k].count)
                r_base += a_base * (c / dt_s - r_base)
                r_sq += a_base * (c * c / dt_s - r_sq)
                r_base_w += a_base * (1.0 - r_base_w)
                subs[k].base = r_base
                subs[k].base_sq = r_sq
                subs[k].base_w = r_base_w
            base = r_base / r_base_w if r_base_w > 0 else 0.0
            # dispersion: variance / mean of the counts (1 for Poisson arrivals, more for
            # bursts); the tests ask for that much more evidence
            disp = 1.0
            if base > 0 and base >= thr[k].rate_floor:  # (only a tested stream needs it)
                disp = max(1.0, (r_sq / r_base_w - base * base * dt_s) / base)
            meas[k, D_RATE, 1] = base
            _rate_test(now, dt, thr, glob.rate_sig * disp, subs, onset, active, meas, k, base,
                       quiet, gone)  # fmt: skip
        subs[k].count = 0
        subs[k].gap_max = 0
        subs[k].n_ep = 0
        subs[k].n_loc = 0
        # Detectors in progress (row k is final now): listed for the roll-up. Only an active
        # subscription or an open episode can make the roll-up emit or change anything (a
        # group opens only with a fresh active member; closes only when open), so those mark
        # the detector busy; a pre-active one only counts towards its groups.
        bits = np.uint8(0)
        for d in range(N_DET):
            if active[k, d] > 0 or sub_open[k, d] > 0:
                busy[d] = True
                bits |= np.uint8(1 << d)
            elif onset[k, d] > 0:
                bits |= np.uint8(1 << d)
        mask[k] = bits


@njit(cache=True)
def _roll_up(now, thr, sub_meta, sub_groups, group_meta, group_size, subs, onset, active,
             sub_open, meas, group_open, down, busy, mask, clock, ev_i, ev_f,
             m):  # fmt: skip  # pragma: no cover
    """Phase 3: roll-up and episodes of every per-subscription detector (group episodes level
    by level, then the subscriptions' own). Returns the event count."""
    # Only subscriptions with
    # something in progress for the detector (``mask`` bit from step 2: onset, active or an open
    # episode) can be pre-active, active or open, so the per-level work runs over that list; a
    # group with a member off the list cannot be all pre-active (``cnt`` < its size). The member
    # with the largest measure (the event's figures) is looked up only when a group emits.
    n_sub = sub_meta.shape[0]
    n_prov = down.shape[0]
    cap = ev_i.shape[0]
    n_groups = group_size.shape[0]
    lst = np.empty(n_sub, np.int64)  # listed subscriptions, ascending
    pre_l = np.empty(n_sub, np.bool_)  # per listed: pre-active, active and not covered, covered
    act_l = np.empty(n_sub, np.bool_)
    cov_l = np.empty(n_sub, np.bool_)
    grp_l = np.empty(n_sub, np.int64)  # per listed: its group at the current level
    stamp = np.full(n_groups, -1, np.int64)  # cnt / fresh_act valid when stamp == pass id
    cnt = np.zeros(n_groups, np.int64)  # pre-active members
    n_open_lv = np.zeros(N_GROUP_LEVELS, np.int64)  # open groups per level
    fresh_act = np.zeros(n_groups, np.bool_)  # an active member not covered
    # Skip detectors with no active subscription and no open episode: the roll-up would change
    # nothing (most passes). ``busy`` (subscriptions) was filled in step 2; here open groups.
    for d in range(N_DET):
        if not busy[d]:
            for g in range(n_groups):
                if group_open[d, g] > 0:
                    busy[d] = True
                    break
    pass_id = 0
    for d in range(N_DET):
        if not busy[d]:
            continue
        kind = DET_KINDS[d]
        bit = np.uint8(1 << d)
        n_l = 0
        for k in range(n_sub):
            if mask[k] & bit:
                lst[n_l] = k
                n_l += 1
        n_fresh = 0  # listed subscriptions active and not covered
        for x in range(n_l):
            k = lst[x]
            p = sub_meta[k].provider
            cov_l[x] = (p < n_prov and down[p]) or sub_open[k, d] > 0
            act_l[x] = active[k, d] == 1
            if act_l[x] and not cov_l[x]:
                n_fresh += 1
        for lv in range(N_GROUP_LEVELS):
            n_open_lv[lv] = 0
        for g in range(n_groups):
            if group_open[d, g] > 0 and 1 <= group_meta[g].level <= N_GROUP_LEVELS:
                n_open_lv[group_meta[g].level - 1] += 1
        stale = True  # pre_l / act_l must be (re)read: a group closed since
        for lv in range(N_GROUP_LEVELS):
            # Only an open group can close and only a group with a fresh active member can
            # open: a level with neither changes nothing (the usual case).
            if n_open_lv[lv] == 0 and n_fresh == 0:
                continue
            if stale:
                n_fresh = 0
                for x in range(n_l):
                    k = lst[x]
                    act_l[x] = active[k, d] == 1
                    pre_l[x] = act_l[x] or (
                        onset[k, d] > 0
                        and (d <= D_NO_FIRST or now - onset[k, d] >= _need(thr, d, k) * 0.5)
                    )
                    if act_l[x] and not cov_l[x]:
                        n_fresh += 1
                stale = False
            for x in range(n_l):
                g = sub_groups[lst[x], lv]
                grp_l[x] = g
                if stamp[g] != pass_id:
                    stamp[g] = pass_id
                    cnt[g] = 0
                    fresh_act[g] = False
                if pre_l[x]:
                    cnt[g] += 1
                if act_l[x] and not cov_l[x]:
                    fresh_act[g] = True
            for g in range(n_groups):
                # (an open group may have shrunk below two by an unsubscribe: it still closes)
                if group_meta[g].level != lv + 1 or (group_size[g] < 2 and group_open[d, g] == 0):
                    continue
                all_pre = stamp[g] == pass_id and cnt[g] == group_size[g]
                if group_open[d, g] > 0:
                    if not all_pre:
                        if m >= cap:
                            clock[0].deferred += 1
                            continue
                        b = _best_member(sub_groups, meas, lv, g, d)
                        if b >= 0:
                            v0, v1, v2, tv = (meas[b, d, 0], meas[b, d, 1], meas[b, d, 2],
                                              _shown_threshold(thr, meas, d, b))  # fmt: skip
                        else:  # every member unsubscribed
                            v0, v1, v2, tv = 0.0, 0.0, 0.0, np.nan
                        m = _emit_group(ev_i, ev_f, m, kind, PHASE_END, group_meta[g].level,
                                        group_meta[g].id, group_open[d, g], now, now,
                                        group_size[g], v0, v1, v2, tv)  # fmt: skip
                        group_open[d, g] = 0
                        for k in range(n_sub):  # members start from scratch
                            if sub_groups[k, lv] == g:
                                if d <= D_NO_FIRST:
                                    subs[k].quiet_from = now
                                onset[k, d] = 0
                                active[k, d] = 0
                        stale = True
                elif all_pre and fresh_act[g]:
                    if m >= cap:
                        clock[0].deferred += 1
                        continue
                    start = now
                    for x in range(n_l):
                        k = lst[x]
                        if grp_l[x] == g and onset[k, d] > 0 and onset[k, d] < start:
                            start = onset[k, d]
                    b = _best_member(sub_groups, meas, lv, g, d)
                    m = _emit_group(ev_i, ev_f, m, kind, PHASE_START, group_meta[g].level,
                                    group_meta[g].id, start, 0, now, group_size[g],
                                    meas[b, d, 0], meas[b, d, 1], meas[b, d, 2],
                                    _shown_threshold(thr, meas, d, b))  # fmt: skip
                    group_open[d, g] = start
            n_fresh = 0
            for x in range(n_l):
                if group_open[d, grp_l[x]] > 0:
                    cov_l[x] = True
                if act_l[x] and not cov_l[x]:
                    n_fresh += 1
            pass_id += 1
        # Subscription episodes: an open one or an active subscription is on the list.
        for x in range(n_l):
            k = lst[x]
            if sub_open[k, d] > 0:
                if active[k, d] == 0:
                    if m >= cap:
                        clock[0].deferred += 1
                        continue
                    sm = sub_meta[k]
                    m = _emit(ev_i, ev_f, m, kind, PHASE_END, LV_SUB, sm.provider, sm.venue,
                              sm.data_class, sm.instrument, sub_open[k, d], now, now, 1,
                              meas[k, d, 0], meas[k, d, 1], meas[k, d, 2],
                              _shown_threshold(thr, meas, d, k))  # fmt: skip
                    sub_open[k, d] = 0
            elif active[k, d] == 1 and not cov_l[x]:
                if m >= cap:
                    clock[0].deferred += 1
                    continue
                start = onset[k, d] if onset[k, d] > 0 else now
                sm = sub_meta[k]
                m = _emit(ev_i, ev_f, m, kind, PHASE_START, LV_SUB, sm.provider, sm.venue,
                          sm.data_class, sm.instrument, start, 0, now, 1,
                          meas[k, d, 0], meas[k, d, 1], meas[k, d, 2],
                          _shown_threshold(thr, meas, d, k))  # fmt: skip
                sub_open[k, d] = start
    return m


@njit(cache=True, _nrt=False)
def _fresh(now, thr, sub_meta, subs, down, k):  # pragma: no cover
    """Whether subscription ``k`` has a price that counts now: monitored (an unsubscribed one
    has infinite thresholds), provider up, data within ``no_data_after``, a positive price."""
    p = sub_meta[k].provider
    ld = subs[k].last_data
    lim = thr[k].no_data
    if (p < down.shape[0] and down[p]) or np.isinf(lim):
        return False
    return ld > 0 and now - ld < lim and subs[k].price > 0


@njit(cache=True)
def _pairs(now, thr, sub_meta, n_src, in_offsets, in_subs, subs, fair, down, spreads, clock,
           ev_i, ev_f, m):  # fmt: skip  # pragma: no cover
    """Phase 2a, per instrument over its fresh sources (n): each subscription's divergence
    reference (``ref``; n >= 3: the median of the fresh prices, and ``peer``, the fresh source
    farthest from it; n == 2: none, the pair episode here measures; n <= 1: the fair price),
    and the pair episodes (n == 2: max / min - 1 with the instrument's divergence thresholds).
    Returns the event count."""
    n_fair = fair.shape[0]
    px = np.empty(max(in_subs.shape[0], 1))
    for i in range(in_offsets.shape[0] - 1):
        a0 = in_offsets[i]
        a1 = in_offsets[i + 1]
        if a1 == a0:
            continue
        n = 0
        k_hi = -1
        k_lo = -1
        for j in range(a0, a1):
            k = in_subs[j]
            subs[k].peer = -1
            if _fresh(now, thr, sub_meta, subs, down, k):
                price = subs[k].price
                px[n] = price
                n += 1
                if k_hi < 0 or price >= subs[k_hi].price:
                    k_hi = k
                if k_lo < 0 or price < subs[k_lo].price:
                    k_lo = k
        if n >= 3:
            med = np.median(px[:n])
            for j in range(a0, a1):
                k = in_subs[j]
                subs[k].ref = med
                if _fresh(now, thr, sub_meta, subs, down, k):
                    q = k_lo if subs[k].price >= med else k_hi
                    subs[k].peer = k_hi if q == k else q
        else:
            r = np.nan
            if n <= 1 and i < n_fair:
                r = fair[i]
            for j in range(a0, a1):
                subs[in_subs[j]].ref = r
        # the pair episode (the per-subscription detector measures nothing with two sources)
        sp = spreads[i]
        k0 = k_hi if n == 2 else sp.k_hi  # thresholds: the instrument's (any monitored member)
        beyond_o = False
        beyond_c = False
        if n == 2:
            hi = subs[k_hi].price
            lo = subs[k_lo].price
            spread = hi / lo - 1.0
            beyond_o = spread > thr[k0].div
            beyond_c = spread > thr[k0].div_clear
            sp.spread = spread
            sp.lo = lo
            sp.hi = hi
            sp.k_hi = k_hi
            sp.k_lo = k_lo
        if sp.active > 0:
            if not beyond_c:
                sp.active = 0
                sp.onset = 0
        elif beyond_o:
            if sp.onset == 0:
                sp.onset = now
            if now - sp.onset >= thr[k0].div_for:
                sp.active = 1
        else:
            sp.onset = 0
    return _pair_episodes(now, thr, sub_meta, n_src, spreads, clock, ev_i, ev_f, m)


@njit(cache=True, _nrt=False)
def _pair_pre(now, thr, sp):  # pragma: no cover
    """Pre-active (see the module docstring), for a pair."""
    return sp.active == 1 or (sp.onset > 0 and now - sp.onset >= thr[sp.k_hi].div_for / 2)


@njit(cache=True, _nrt=False)
def _pair_prices(sub_meta, sp, k_subject):  # pragma: no cover
    """``sp``'s two prices, the one of ``k_subject``'s source first."""
    if sub_meta[sp.k_hi].source == sub_meta[k_subject].source:
        return sp.hi, sp.lo
    return sp.lo, sp.hi


@njit(cache=True)
def _pair_episodes(now, thr, sub_meta, n_src, spreads, clock, ev_i, ev_f,
                   m):  # fmt: skip  # pragma: no cover
    """Phase 2b: pair episodes. Instruments whose pairs are the same two sources (in the same
    roles) roll up into one episode of the source pair (instrument -1), as subscriptions roll
    up into groups: it opens when at least two are pre-active and one of them is active,
    takes every instrument of that source pair that becomes pre-active while it is open, and
    ends when none is left. An instrument alone has its own episode. Returns the event count."""
    cap = ev_i.shape[0]
    n_inst = spreads.shape[0]
    # members that cleared leave; a source-pair episode without members ends
    for i in range(n_inst):
        g = spreads[i].group - 1
        if g >= 0 and not _pair_pre(now, thr, spreads[i]):
            spreads[g].g_n -= 1
            spreads[g].g_spread = spreads[i].spread
            phi, plo = _pair_prices(sub_meta, spreads[i], spreads[g].g_hi)
            spreads[g].g_phi = phi
            spreads[g].g_plo = plo
            spreads[i].group = 0
            spreads[i].open = 0
    for g in range(n_inst):
        if spreads[g].g_open > 0 and spreads[g].g_n == 0:
            if m >= cap:
                clock[0].deferred += 1
                continue
            m = _emit_pair(ev_i, ev_f, m, PHASE_END, sub_meta, spreads[g].g_hi, spreads[g].g_lo,
                           -1, spreads[g].g_open, now, now, 2 * spreads[g].g_count,
                           spreads[g].g_spread, spreads[g].g_phi, spreads[g].g_plo,
                           thr[spreads[g].g_hi].div)  # fmt: skip
            spreads[g].g_open = 0
    # pre-active instruments in no episode join their source pair's open episode, or count
    table = np.zeros((n_src, n_src), np.int64)  # 1 + the row holding the pair's open episode
    for g in range(n_inst):
        if spreads[g].g_open > 0:
            table[sub_meta[spreads[g].g_hi].source, sub_meta[spreads[g].g_lo].source] = g + 1
    pre = np.zeros((n_src, n_src), np.int64)
    act = np.zeros((n_src, n_src), np.int64)
    for i in range(n_inst):
        if spreads[i].group != 0 or spreads[i].open != 0 or not _pair_pre(now, thr, spreads[i]):
            continue
        a = sub_meta[spreads[i].k_hi].source
        b = sub_meta[spreads[i].k_lo].source
        g = table[a, b] - 1
        if g >= 0:
            spreads[i].group = g + 1
            spreads[i].open = spreads[g].g_open
            spreads[g].g_n += 1
            spreads[g].g_count += 1
        else:
            pre[a, b] += 1
            act[a, b] += spreads[i].active
    # a new source-pair episode: held by its first instrument, the widest one's measure
    for i in range(n_inst):
        sp = spreads[i]
        if sp.group != 0 or sp.open != 0 or sp.g_open != 0 or not _pair_pre(now, thr, sp):
            continue
        a = sub_meta[sp.k_hi].source
        b = sub_meta[sp.k_lo].source
        if pre[a, b] < 2 or act[a, b] == 0:
            continue
        if m >= cap:
            clock[0].deferred += 1
            pre[a, b] = 0  # once per source pair
            continue
        start = sp.onset
        w = i
        n = 0
        for j in range(i, n_inst):
            q = spreads[j]
            if (q.group == 0 and q.open == 0 and _pair_pre(now, thr, q)
                    and sub_meta[q.k_hi].source == a and sub_meta[q.k_lo].source == b):  # fmt: skip
                n += 1
                start = min(start, q.onset)
                if q.spread > spreads[w].spread:
                    w = j
        for j in range(i, n_inst):
            q = spreads[j]
            if (q.group == 0 and q.open == 0 and _pair_pre(now, thr, q)
                    and sub_meta[q.k_hi].source == a and sub_meta[q.k_lo].source == b):  # fmt: skip
                spreads[j].group = i + 1
                spreads[j].open = start
        spreads[i].g_open = start
        spreads[i].g_n = n
        spreads[i].g_count = n
        spreads[i].g_hi = spreads[i].k_hi
        spreads[i].g_lo = spreads[i].k_lo
        phi, plo = _pair_prices(sub_meta, spreads[w], spreads[i].k_hi)
        m = _emit_pair(ev_i, ev_f, m, PHASE_START, sub_meta, spreads[i].k_hi, spreads[i].k_lo,
                       -1, start, 0, now, 2 * n, spreads[w].spread, phi, plo,
                       thr[spreads[i].k_hi].div)  # fmt: skip
        pre[a, b] = 0  # every instrument of the pair is in it now
    # the instruments alone: their own episodes
    for i in range(n_inst):
        sp = spreads[i]
        if sp.group != 0:
            continue
        if sp.open > 0 and sp.active == 0:
            phase = PHASE_END
        elif sp.open == 0 and sp.active == 1:
            phase = PHASE_START
        else:
            continue
        if m >= cap:
            clock[0].deferred += 1
            continue
        if phase == PHASE_START:
            sp.s_hi = sp.k_hi
            sp.s_lo = sp.k_lo
        phi, plo = _pair_prices(sub_meta, sp, sp.s_hi)
        m = _emit_pair(ev_i, ev_f, m, phase, sub_meta, sp.s_hi, sp.s_lo, i,
                       sp.open if phase == PHASE_END else sp.onset,
                       now if phase == PHASE_END else 0, now, 2, sp.spread, phi, plo,
                       thr[sp.s_hi].div)  # fmt: skip
        sp.open = 0 if phase == PHASE_END else sp.onset
    return m


@njit(cache=True)
def _emit_pair(ev_i, ev_f, m, phase, sub_meta, k_subject, k_peer, inst, start, end, now, count,
               spread, p_subject, p_peer, thr):  # fmt: skip  # pragma: no cover
    """A ``pair`` divergence row: subject ``k_subject``'s source, the peer ``k_peer``'s; the
    data class and instrument of ``inst`` (-1: a source-pair episode, over instruments)."""
    a = sub_meta[k_subject]
    b = sub_meta[k_peer]
    cls = a.data_class if inst >= 0 else -1
    m = _emit(ev_i, ev_f, m, A_DIVERGENCE, phase, LV_PAIR, a.provider, a.venue, cls, inst,
              start, end, now, count, spread, p_subject, p_peer, thr)  # fmt: skip
    ev_i[m - 1, E_PEER_PROVIDER] = b.provider
    ev_i[m - 1, E_PEER_VENUE] = b.venue
    return m


@njit(cache=True)
def _name_peers(ev_i, m0, m, sub_meta, in_offsets, in_subs, subs):  # pragma: no cover
    """Phase 3b: a subscription's divergence rows ``m0:m`` name its peer (n >= 3); group rows
    span instruments and name none."""
    for e in range(m0, m):
        if ev_i[e, E_KIND] != A_DIVERGENCE or ev_i[e, E_LEVEL] != LV_SUB:
            continue
        i = ev_i[e, E_INSTRUMENT]
        for j in range(in_offsets[i], in_offsets[i + 1]):
            k = in_subs[j]
            if (
                sub_meta[k].provider == ev_i[e, E_PROVIDER]
                and sub_meta[k].venue == ev_i[e, E_VENUE]
            ):
                q = subs[k].peer
                if q >= 0:
                    ev_i[e, E_PEER_PROVIDER] = sub_meta[q].provider
                    ev_i[e, E_PEER_VENUE] = sub_meta[q].venue
                break


@njit(cache=True)
def _gaps(now, last, quiet, bursts, sub_bursts, sub_meta, src_meta, clock, ev_i, ev_f,
          m):  # fmt: skip  # pragma: no cover
    """Phase 5: sequence-gap episodes, per source (its own sequence, and the roll-up of its
    subscriptions' gaps), then per subscription. Returns the event count.

    A subscription's new gap starts its own episode only at the evaluation after the one that
    first saw it (``first`` after ``last``, the previous evaluation): gaps of two instruments of
    a source that straddle an evaluation are still one source episode."""
    n_src = src_meta.shape[0]
    cap = ev_i.shape[0]
    pending = np.zeros(n_src, np.int64)
    for k in range(sub_bursts.shape[0]):
        if sub_bursts[k].open == 0 and sub_bursts[k].count > sub_bursts[k].base_count:
            pending[sub_meta[k].source] += 1
    absorb = np.zeros(n_src, np.bool_)
    for s in range(n_src):
        absorb[s] = (bursts[s].open > 0 or pending[s] >= 2
                     or bursts[s].count > bursts[s].base_count)  # fmt: skip
    for k in range(sub_bursts.shape[0]):
        s = sub_meta[k].source
        if absorb[s] and sub_bursts[k].open == 0 and sub_bursts[k].count > sub_bursts[k].base_count:
            _fold(bursts, s, sub_bursts, k)
    for s in range(n_src):
        prov = src_meta[s].provider
        venue = src_meta[s].venue
        if bursts[s].open > 0:
            if now - bursts[s].last < quiet:
                continue
            if m >= cap:
                clock[0].deferred += 1
                continue
            m = _emit(ev_i, ev_f, m, A_GAP, PHASE_END, LV_SOURCE, prov, venue, -1, -1,
                      bursts[s].open, bursts[s].last, now, bursts[s].covered,
                      bursts[s].count - bursts[s].base_count,
                      bursts[s].missed - bursts[s].base_missed, 0.0, quiet / 1e9)  # fmt: skip
            _close(bursts, s)
            bursts[s].covered = 0
            for k in range(sub_bursts.shape[0]):
                if sub_meta[k].source == s:
                    sub_bursts[k].covered = 0
        elif bursts[s].count > bursts[s].base_count:
            if m >= cap:
                clock[0].deferred += 1
                continue
            m = _emit(ev_i, ev_f, m, A_GAP, PHASE_START, LV_SOURCE, prov, venue, -1, -1,
                      bursts[s].first, 0, now, bursts[s].covered,
                      bursts[s].count - bursts[s].base_count,
                      bursts[s].missed - bursts[s].base_missed, 0.0, quiet / 1e9)  # fmt: skip
            bursts[s].open = bursts[s].first
    for k in range(sub_bursts.shape[0]):
        b = sub_bursts[k]
        if b.open > 0 and now - b.last < quiet:
            continue
        if b.open == 0 and (b.count == b.base_count or b.first > last):
            continue  # no new gap, or one held for the next evaluation
        if m >= cap:
            clock[0].deferred += 1
            continue
        sm = sub_meta[k]
        phase = PHASE_END if b.open > 0 else PHASE_START
        m = _emit(ev_i, ev_f, m, A_GAP, phase, LV_SUB, sm.provider, sm.venue, sm.data_class,
                  sm.instrument, b.open if b.open > 0 else b.first,
                  b.last if b.open > 0 else 0, now, 1, b.count - b.base_count,
                  b.missed - b.base_missed, 0.0, quiet / 1e9)  # fmt: skip
        if phase == PHASE_END:
            _close(sub_bursts, k)
        else:
            sub_bursts[k].open = b.first
    return m


@njit(cache=True, _nrt=False)
def _fold(bursts, s, sub_bursts, k):  # pragma: no cover
    """Move subscription ``k``'s pending gaps into source ``s``'s episode."""
    bursts[s].count += sub_bursts[k].count - sub_bursts[k].base_count
    bursts[s].missed += sub_bursts[k].missed - sub_bursts[k].base_missed
    first = sub_bursts[k].first
    if bursts[s].first == 0 or first < bursts[s].first:
        bursts[s].first = first
    bursts[s].last = max(bursts[s].last, sub_bursts[k].last)
    sub_bursts[k].base_count = sub_bursts[k].count
    sub_bursts[k].base_missed = sub_bursts[k].missed
    sub_bursts[k].first = 0
    if sub_bursts[k].covered == 0:
        sub_bursts[k].covered = 1
        bursts[s].covered += 1


@njit(cache=True, _nrt=False)
def _close(bursts, b):  # pragma: no cover
    bursts[b].open = 0
    bursts[b].first = 0
    bursts[b].base_count = bursts[b].count
    bursts[b].base_missed = bursts[b].missed


@njit(cache=True)
def _overflows(now, quiet, bursts, n_src, ring_dropped, clock, ev_i, ev_f,
               m):  # fmt: skip  # pragma: no cover
    """Phase 6: overflow episodes per ring (``ring_dropped[r]``: the running drop count of ring
    r, kept in ``bursts[n_src + r]``). Returns the event count."""
    cap = ev_i.shape[0]
    for r in range(ring_dropped.shape[0]):
        b = n_src + r
        if ring_dropped[r] > bursts[b].count:
            bursts[b].missed += ring_dropped[r] - bursts[b].count
            bursts[b].count = ring_dropped[r]
            if bursts[b].first == 0:
                bursts[b].first = now
            bursts[b].last = now
        if bursts[b].open > 0:
            if now - bursts[b].last >= quiet:
                if m >= cap:
                    clock[0].deferred += 1
                    continue
                m = _emit(ev_i, ev_f, m, A_RING_OVERFLOW, PHASE_END, LV_RING, -1, -1, -1, -1,
                          bursts[b].open, bursts[b].last, now, r,
                          bursts[b].count - bursts[b].base_count,
                          bursts[b].missed - bursts[b].base_missed, 0.0,
                          quiet / 1e9)  # fmt: skip
                _close(bursts, b)
        elif bursts[b].count > bursts[b].base_count:
            if m >= cap:
                clock[0].deferred += 1
                continue
            m = _emit(ev_i, ev_f, m, A_RING_OVERFLOW, PHASE_START, LV_RING, -1, -1, -1, -1,
                      bursts[b].first, 0, now, r, bursts[b].count - bursts[b].base_count,
                      bursts[b].missed - bursts[b].base_missed, 0.0, quiet / 1e9)  # fmt: skip
            bursts[b].open = bursts[b].first
    return m


@njit(cache=True, _nrt=False)
def _need(thr, d, k):  # pragma: no cover
    if d == D_DIVERGENCE:
        return thr[k].div_for
    if d == D_RATE:
        return thr[k].rate_for
    if d == D_NO_DATA:
        return thr[k].no_data
    if d == D_NO_FIRST:
        return thr[k].first_data
    return thr[k].lat_for


@njit(cache=True, _nrt=False)
def _shown_threshold(thr, meas, d, k):  # pragma: no cover
    """The threshold of detector ``d`` of subscription ``k`` as events show it (s, ms, ratio);
    no data: the one in use (fixed or adaptive)."""
    t = thr[k]
    if d == D_NO_DATA:
        return meas[k, D_NO_DATA, 1]
    if d == D_NO_FIRST:
        return t.first_data * 1e-9
    if d == D_DIVERGENCE:
        return t.div
    if d == D_LAT_EX:
        return t.lat_ex * 1e-6
    if d == D_LAT_LOCAL:
        return t.lat_local * 1e-6
    if d == D_SKEW:
        return t.skew * 1e-6
    return t.rate_ratio


@njit(cache=True, _nrt=False)
def _best_member(sub_groups, meas, lv, g, d):  # pragma: no cover
    """The first member of group ``g`` (level ``lv``) with the largest ``|meas[., d, 0]|``."""
    b = -1
    for k in range(sub_groups.shape[0]):
        if sub_groups[k, lv] == g and (b < 0 or abs(meas[k, d, 0]) > abs(meas[b, d, 0])):
            b = k
    return b


@njit(f"i8({_I2}, {_F2}, i8, i8, i8, i8, i8, i8, i8, i8, i8, f8, f8, f8, f8)", cache=True,
      _nrt=False)  # fmt: skip
def _emit_group(ev_i, ev_f, m, kind, phase, level, gid, start, end, now, count, v0, v1, v2,
                thr):  # fmt: skip  # pragma: no cover
    prov = gid if level == LV_PROVIDER else -1
    venue = gid if level == LV_VENUE else -1
    cls = gid if level == LV_CLASS else -1
    inst = gid if level == LV_INSTRUMENT else -1
    return _emit(ev_i, ev_f, m, kind, phase, level, prov, venue, cls, inst, start, end, now,
                 count, v0, v1, v2, thr)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# State holder used by the compute stage, the tests and the benchmark.


NS = 1_000_000_000
# ``[anomalies]`` threshold (``AnomalyThresholds`` field) -> threshold field and its scale to ns
_THRESHOLD_FIELDS = {
    "no_data_after": ("no_data", NS),
    "no_data_factor": ("nd_factor", 1.0),  # 0 unless no_data_adaptive (threshold_row)
    "no_data_floor": ("nd_floor", NS),
    "no_data_cap": ("nd_cap", NS),
    "first_data_timeout": ("first_data", NS),
    "divergence": ("div", 1.0),
    "divergence_for": ("div_for", NS),
    "divergence_clear": ("div_clear", 1.0),
    "latency_exchange_provider_ms": ("lat_ex", 1e6),
    "latency_provider_local_ms": ("lat_local", 1e6),
    "clock_skew_ms": ("skew", 1e6),
    "latency_for": ("lat_for", NS),
    "rate_drop_ratio": ("rate_ratio", 1.0),
    "rate_drop_clear": ("rate_clear", 1.0),
    "rate_floor": ("rate_floor", 1.0),
    "rate_drop_for": ("rate_for", NS),
}


def threshold_row(acfg: AnomalyConfig, data_class: str = "", instrument: str = "") -> np.ndarray:
    """The thresholds of one instrument (a 0-d ``THRESHOLD_DTYPE`` array, durations in ns)."""
    row = np.zeros((), THRESHOLD_DTYPE)
    values = anomaly_thresholds(acfg, data_class, instrument)
    for name, value in values.items():
        if name in _THRESHOLD_FIELDS:
            field, scale = _THRESHOLD_FIELDS[name]
            row[field] = value * scale
    if not values["no_data_adaptive"]:
        row["nd_factor"] = 0.0  # the fixed no_data_after
    return row


def global_row(acfg: AnomalyConfig) -> AnomalyGlobals:
    """The settings of ``acfg`` that are not per subscription, in ns."""
    return AnomalyGlobals(
        hb_timeout=float(acfg.heartbeat_timeout * NS),
        gap_quiet=float(acfg.gap_quiet * NS),
        rate_sig=float(np.log(1.0 / acfg.rate_drop_alpha)),
        rate_base=float(acfg.rate_baseline * NS),
        lat_clear=float(acfg.latency_clear),
    )


def default_thresholds() -> np.ndarray:
    """The thresholds of the configuration's defaults (``AnomalyConfig()``)."""
    return threshold_row(AnomalyConfig())


def default_globals() -> AnomalyGlobals:
    """The global settings of the configuration's defaults (``AnomalyConfig()``)."""
    return global_row(AnomalyConfig())


def threshold_rows(n: int, row: np.ndarray | None = None) -> np.ndarray:
    """``n`` subscriptions' thresholds, each ``row`` (default: :func:`default_thresholds`)."""
    return np.full(n, default_thresholds() if row is None else row, THRESHOLD_DTYPE)


# Thresholds that can never be crossed (and let every open episode end): an unmonitored
# subscription.
DISABLED_THRESHOLDS = np.full((), np.inf, THRESHOLD_DTYPE)
for _name in ("rate_ratio", "rate_clear", "div_for", "lat_for", "rate_for"):
    DISABLED_THRESHOLDS[_name] = 0.0


class AnomalyLayout(NamedTuple):
    """The monitored set as the kernels see it (fixed for a state, but for live unsubscribes)."""

    sub_meta: np.ndarray  # SUB_META_DTYPE per subscription
    sub_groups: np.ndarray  # i8 [subscription, level]: its group per roll-up level
    group_meta: np.ndarray  # GROUP_META_DTYPE per group
    group_size: np.ndarray  # i8 [group]: monitored members
    src_meta: np.ndarray  # SOURCE_META_DTYPE per source
    in_offsets: np.ndarray  # i8: instrument i's subscriptions = in_subs[in_offsets[i]:...[i + 1]]
    in_subs: np.ndarray  # i8


class AnomalyArrays(NamedTuple):
    """The state the evaluation reads and writes."""

    subs: np.ndarray  # SUB_STATE_DTYPE per subscription
    provs: np.ndarray  # PROVIDER_STATE_DTYPE per provider
    bursts: np.ndarray  # BURST_DTYPE per source, then per ring
    sub_bursts: np.ndarray  # BURST_DTYPE per subscription
    onset: np.ndarray  # i8 [subscription, detector]: beyond the open threshold since (0 = not)
    active: np.ndarray  # i8 [subscription, detector]
    sub_open: np.ndarray  # i8 [subscription, detector]: start of its own open episode
    meas: np.ndarray  # f8 [subscription, detector, 3]: last measures (event values)
    group_open: np.ndarray  # i8 [detector, group]: start of the group's open episode
    spreads: np.ndarray  # PAIR_DTYPE per instrument
    clock: np.ndarray  # CLOCK_DTYPE, one row


class AnomalyState:
    """Every array the anomaly kernels read and write, built from the subscription list.

    ``instrument_classes[i]``: data-class code of instrument i; ``sources[s]`` = (provider,
    venue); ``subscriptions``: (instrument, source) pairs; ``thresholds``: one
    ``THRESHOLD_DTYPE`` row per subscription (e.g. :func:`threshold_rows`); ``globals_``:
    :class:`AnomalyGlobals`. ``start_ns`` starts the first-data clocks.
    """

    def __init__(
        self,
        instrument_classes,
        sources,
        n_providers: int,
        n_venues: int,
        subscriptions,
        thresholds: np.ndarray,
        globals_: AnomalyGlobals,
        n_rings: int = 0,
        start_ns: int = 0,
        max_events: int = 4096,
    ) -> None:
        n_inst = len(instrument_classes)
        n_src = len(sources)
        n_sub = len(subscriptions)
        self.n_sub = n_sub
        thresholds = np.asarray(thresholds)
        if thresholds.dtype != THRESHOLD_DTYPE or thresholds.shape != (n_sub,):
            raise ValueError(
                f"thresholds: one THRESHOLD_DTYPE row per subscription ({n_sub}), got "
                f"{thresholds.shape} of {thresholds.dtype}"
            )
        self.source_table = np.full((max(n_providers, 1), max(n_venues, 1)), -1, np.int32)
        for s, (p, v) in enumerate(sources):
            self.source_table[p, v] = s
        self.src_meta = np.zeros(n_src, SOURCE_META_DTYPE)
        for s, (p, v) in enumerate(sources):
            self.src_meta[s] = (p, v)
        self.sub_table = np.full((max(n_inst, 1), max(n_src, 1)), -1, np.int32)
        self.sub_meta = np.zeros(n_sub, SUB_META_DTYPE)
        # groups: providers, venues, classes (codes 0..7), instruments
        offs = (0, n_providers, n_providers + n_venues, n_providers + n_venues + 8)
        self.group_offsets = offs
        # the last group (level 0, never evaluated) holds unmonitored subscriptions
        n_groups = offs[3] + n_inst + 1
        self.void_group = n_groups - 1
        self.group_meta = np.zeros(n_groups, GROUP_META_DTYPE)
        for lv, (a, count) in enumerate(zip(offs, (n_providers, n_venues, 8, n_inst), strict=True)):
            self.group_meta["level"][a : a + count] = lv + 1
            self.group_meta["id"][a : a + count] = np.arange(count)
        self.group_meta[self.void_group] = (0, -1)
        self.monitored = np.ones(n_sub, np.bool_)
        self.sub_groups = np.zeros((n_sub, N_GROUP_LEVELS), np.int64)
        for k, (i, s) in enumerate(subscriptions):
            p, v = sources[s]
            c = int(instrument_classes[i])
            self.sub_table[i, s] = k
            self.sub_meta[k] = (p, v, c, i, s)
            self.sub_groups[k] = (offs[0] + p, offs[1] + v, offs[2] + c, offs[3] + i)
        self.group_size = np.bincount(self.sub_groups.ravel(), minlength=n_groups).astype(np.int64)
        # every instrument's subscriptions, in order (divergence)
        inst_of = self.sub_meta["instrument"]
        self.in_subs = np.argsort(inst_of, kind="stable").astype(np.int64)
        self.in_offsets = np.zeros(max(n_inst, 1) + 1, np.int64)
        self.in_offsets[1:] = np.cumsum(np.bincount(inst_of, minlength=max(n_inst, 1)))
        self.spreads = np.zeros(max(n_inst, 1), PAIR_DTYPE)
        self.thr = np.ascontiguousarray(thresholds).copy()
        self.gthr = AnomalyGlobals(*(float(x) for x in globals_))
        self.subs = np.zeros(n_sub, SUB_STATE_DTYPE)
        self.subs["quiet_from"] = start_ns
        for name in ("price", "bid", "ask", "ref"):
            self.subs[name] = np.nan
        self.subs["peer"] = -1
        self.provs = np.zeros(max(n_providers, 1), PROVIDER_STATE_DTYPE)
        self.bursts = np.zeros(n_src + n_rings, BURST_DTYPE)
        self.sub_bursts = np.zeros(n_sub, BURST_DTYPE)
        self.n_rings = n_rings
        # per-subscription detector state, [subscription, detector]: one pass touches each
        # subscription's figures together
        self.onset = np.zeros((n_sub, N_DET), np.int64)
        self.active = np.zeros((n_sub, N_DET), np.int64)
        self.sub_open = np.zeros((n_sub, N_DET), np.int64)
        self.meas = np.zeros((n_sub, N_DET, 3))
        self.group_open = np.zeros((N_DET, n_groups), np.int64)
        self.clock = np.zeros(1, CLOCK_DTYPE)
        self.ev_i = np.zeros((max_events, N_EI), np.int64)
        self.ev_f = np.zeros((max_events, N_EF))
        self.ignored = 0
        # the kernels' views; every array above is updated in place, never replaced
        self.layout = AnomalyLayout(self.sub_meta, self.sub_groups, self.group_meta,
                                    self.group_size, self.src_meta, self.in_offsets,
                                    self.in_subs)  # fmt: skip
        self.arrays = AnomalyArrays(self.subs, self.provs, self.bursts, self.sub_bursts,
                                    self.onset, self.active, self.sub_open, self.meas,
                                    self.group_open, self.spreads, self.clock)  # fmt: skip

    def carry_over(self, old: AnomalyState) -> None:
        """Continue ``old``'s clocks and open episodes here, so that growing the monitored set
        neither loses an end event nor repeats a start. This state must hold ``old``'s
        subscriptions first, in the same order (new ones after them), over ids that only grew.
        """
        n = old.n_sub
        if n > self.n_sub or not np.array_equal(self.sub_meta[:n], old.sub_meta):
            raise ValueError("carry_over: the old subscriptions must come first, in order")
        for name in ("subs", "sub_bursts", "onset", "active", "sub_open", "meas", "thr"):
            getattr(self, name)[:n] = getattr(old, name)
        self.provs[: len(old.provs)] = old.provs
        old_src = len(old.src_meta)
        self.bursts[:old_src] = old.bursts[:old_src]
        self.bursts[len(self.src_meta) :][: old.n_rings] = old.bursts[old_src:]
        # groups are numbered level by level: renumber by (level, id)
        real = old.group_meta["level"] > 0
        lv = old.group_meta["level"][real] - 1
        new_index = np.asarray(self.group_offsets)[lv] + old.group_meta["id"][real]
        self.group_open[:, new_index] = old.group_open[:, real]
        self.spreads[: len(old.spreads)] = old.spreads  # per instrument: ids only grew
        self.clock[:] = old.clock
        self.ignored = old.ignored
        for k in np.flatnonzero(~old.monitored):
            self._leave_groups(int(k))

    def _leave_groups(self, k: int) -> None:
        if self.monitored[k]:
            self.monitored[k] = False
            self.group_size[self.sub_groups[k]] -= 1
            self.sub_groups[k] = self.void_group

    def disable(self, k: int) -> None:
        """Stop monitoring subscription ``k`` (an unsubscribe): its open episodes end at the
        next evaluation, and it leaves its groups, so that the roll-ups of the others (one
        event for a silent provider) go on without it."""
        self.thr[k] = DISABLED_THRESHOLDS
        self._leave_groups(k)

    def enable(self, k: int, thresholds: np.ndarray, now_ns: int) -> None:
        """Monitor subscription ``k`` again (a re-subscribe), measured afresh from ``now_ns``:
        no stale price, rate baseline or no-data clock from before."""
        self.thr[k] = thresholds
        self.subs[k] = 0
        self.subs[k]["quiet_from"] = now_ns
        for name in ("price", "bid", "ask"):
            self.subs[k][name] = np.nan
        if not self.monitored[k]:
            p, v, c, i, _s = self.sub_meta[k].tolist()
            o = self.group_offsets
            self.sub_groups[k] = (o[0] + p, o[1] + v, o[2] + c, o[3] + i)
            self.group_size[self.sub_groups[k]] += 1
            self.monitored[k] = True

    def update(self, records: np.ndarray, n: int | None = None) -> int:
        count = len(records) if n is None else min(int(n), len(records))
        ignored = int(update_nb(records, count, self.sub_table, self.source_table, self.subs,
                                self.provs, self.bursts, self.sub_bursts))  # fmt: skip
        self.ignored += ignored
        return ignored

    def evaluate(self, now_ns: int, fair: np.ndarray, ring_dropped: np.ndarray | None = None):
        """Event rows ``(ev_i, ev_f)`` of one evaluation (views valid until the next call)."""
        if ring_dropped is None:
            ring_dropped = np.zeros(self.n_rings, np.int64)
        m = int(
            evaluate_nb(
                np.int64(now_ns),
                self.thr,
                self.gthr,
                self.layout,
                self.arrays,
                np.ascontiguousarray(ring_dropped, np.int64),
                np.ascontiguousarray(fair, np.float64),
                self.ev_i,
                self.ev_f,
            )
        )
        return self.ev_i[:m], self.ev_f[:m]

    def open_count(self) -> int:
        """Episodes open now."""
        return int(
            (self.sub_open > 0).sum() + (self.group_open > 0).sum()
            + (self.provs["open"] > 0).sum() + (self.spreads["g_open"] > 0).sum()
            + ((self.spreads["open"] > 0) & (self.spreads["group"] == 0)).sum()
            + (self.bursts["open"] > 0).sum() + (self.sub_bursts["open"] > 0).sum()
        )  # fmt: skip
