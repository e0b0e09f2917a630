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
* **Bursts** (sequence gaps per source, ring overflow per ring): open at the first increment,
  close after ``gap_quiet`` without another.
* **Venue divergence** (per instrument × venue with two or more providers): the spread of their
  prices (max / min - 1), with the divergence thresholds of the instrument; not rolled up.

Each ``*_nb`` kernel has a plain-Python oracle in :mod:`fairfeed.hotpath.anomaly_reference`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fairfeed.core.records import (
    KIND_ASK,
    KIND_BID,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_STATUS,
    KIND_TRADE,
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

# sub_i64 columns
SI_LAST_DATA = 0  # ts_receive of the last market record (0 = never)
SI_QUIET_FROM = 1  # the no-data clock does not run before this (start, reconnect, roll-up end)
SI_COUNT = 2  # market records since the last evaluation
SI_EP_MAX = 3  # exchange -> provider latency, max / min since the last evaluation
SI_EP_MIN = 4
SI_LOC_MAX = 5  # provider -> us latency, max / min since the last evaluation
SI_LOC_MIN = 6
SI_N_EP = 7  # latency samples since the last evaluation
SI_N_LOC = 8
N_SI = 9
# sub_f64 columns
SF_PRICE = 0  # last trade price or quote mid, whichever came last (NaN = none)
SF_BID = 1
SF_ASK = 2
SF_FAST = 3  # bias-corrected EWMAs of the update rate (msgs/s): raw value and weight
SF_FAST_W = 4
SF_BASE = 5
SF_BASE_W = 6
N_SF = 7
# thresholds per subscription (thr columns; durations in ns)
T_NO_DATA = 0
T_FIRST = 1
T_DIV = 2
T_DIV_FOR = 3
T_DIV_CLEAR = 4
T_LAT_EX = 5
T_LAT_LOCAL = 6
T_SKEW = 7
T_LAT_FOR = 8
T_RATE_RATIO = 9
T_RATE_CLEAR = 10
T_RATE_FLOOR = 11
T_RATE_FOR = 12
N_T = 13
# global thresholds (gthr)
G_HB_TIMEOUT = 0  # ns
G_GAP_QUIET = 1  # ns
G_RATE_FAST = 2  # EWMA time constants, ns
G_RATE_BASE = 3
G_LAT_CLEAR = 4  # latency / skew episodes end below threshold x this
N_G = 5
# prov_i64 columns
P_LAST_HB = 0
P_HB_SEEN = 1
P_LAST_ALIVE = 2  # last heartbeat, data or connect
P_STATUS = 3  # last STATUS code (0 = none yet)
P_DOWN_SINCE = 4  # ts of the first DISCONNECTED / SUBSCRIBE_ERROR not followed by CONNECTED
P_DOWN_REASON = 5
P_BLIP_START = 6  # a disconnect that began and ended between two evaluations
P_BLIP_END = 7
P_BLIP_REASON = 8
P_OPEN = 9  # start of the open disconnect episode (0 = none)
P_OPEN_REASON = 10
N_P = 11
# burst columns (gaps per source, then overflow per ring)
B_COUNT = 0  # running totals
B_MISSED = 1
B_BASE_COUNT = 2  # totals when the open episode started
B_BASE_MISSED = 3
B_FIRST = 4  # first increment of the pending / open episode
B_LAST = 5  # last increment
B_OPEN = 6  # start of the open episode (0 = none)
N_B = 7
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
E_COUNT = 10  # subscriptions covered (gap: -; ring: ring index)
N_EI = 11
N_EF = 4  # v0, v1, v2, threshold
# misc
M_LAST_EVAL = 0
M_DEFERRED = 1  # transitions postponed because the event buffer was full
N_M = 2


@njit(cache=True)
def update_nb(
    records, n, sub_table, source_table, sub_i64, sub_f64, prov_i64, bursts
):  # pragma: no cover
    """Apply ``records[:n]`` to the anomaly state; return the records ignored.

    Reference: ``anomaly_reference.update_reference``.

    Market records (trade, bid, ask) of a subscription (``sub_table[instrument, source]`` >= 0)
    set its last data time (``ts_receive``), count one update, track latencies (exchange ->
    provider = ts_provider - ts_exchange when both are known; provider -> us = ts_receive -
    ts_provider, or ts_receive - ts_exchange when the provider adds no time) and the last price
    (trade price, or quote mid once bid and ask are known); they also make their provider alive.
    KIND_HEARTBEAT marks the provider alive. KIND_STATUS CONNECTED ends a pending disconnect
    (kept as a blip for the evaluation); DISCONNECTED / SUBSCRIBE_ERROR start one. KIND_GAP adds
    one gap and ``size`` missed messages to its source's burst.
    """
    n_inst = sub_table.shape[0]
    n_src = sub_table.shape[1]
    n_prov = prov_i64.shape[0]
    ignored = 0
    for j in range(n):
        r = records[j]
        kind = r.kind
        prov = np.int64(r.provider)
        ts = r.ts_receive
        if kind == KIND_TRADE or kind == KIND_BID or kind == KIND_ASK:  # noqa: SIM109
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
            sub_i64[k, SI_LAST_DATA] = ts
            sub_i64[k, SI_COUNT] += 1
            if prov < n_prov and ts > prov_i64[prov, P_LAST_ALIVE]:
                prov_i64[prov, P_LAST_ALIVE] = ts
            tex = r.ts_exchange
            tpr = r.ts_provider
            if tex > 0 and tpr > 0:
                lat = tpr - tex
                if sub_i64[k, SI_N_EP] == 0 or lat > sub_i64[k, SI_EP_MAX]:
                    sub_i64[k, SI_EP_MAX] = lat
                if sub_i64[k, SI_N_EP] == 0 or lat < sub_i64[k, SI_EP_MIN]:
                    sub_i64[k, SI_EP_MIN] = lat
                sub_i64[k, SI_N_EP] += 1
            base = tpr if tpr > 0 else tex
            if base > 0 and ts > 0:
                lat = ts - base
                if sub_i64[k, SI_N_LOC] == 0 or lat > sub_i64[k, SI_LOC_MAX]:
                    sub_i64[k, SI_LOC_MAX] = lat
                if sub_i64[k, SI_N_LOC] == 0 or lat < sub_i64[k, SI_LOC_MIN]:
                    sub_i64[k, SI_LOC_MIN] = lat
                sub_i64[k, SI_N_LOC] += 1
            price = r.price
            if np.isfinite(price):
                if kind == KIND_TRADE:
                    sub_f64[k, SF_PRICE] = price
                else:
                    if kind == KIND_BID:
                        sub_f64[k, SF_BID] = price
                    else:
                        sub_f64[k, SF_ASK] = price
                    bid = sub_f64[k, SF_BID]
                    ask = sub_f64[k, SF_ASK]
                    if not (np.isnan(bid) or np.isnan(ask)):
                        sub_f64[k, SF_PRICE] = (bid + ask) * 0.5
        elif kind == KIND_HEARTBEAT:
            if prov >= n_prov:
                ignored += 1
                continue
            prov_i64[prov, P_LAST_HB] = ts
            prov_i64[prov, P_HB_SEEN] = 1
            if ts > prov_i64[prov, P_LAST_ALIVE]:
                prov_i64[prov, P_LAST_ALIVE] = ts
        elif kind == KIND_STATUS:
            if prov >= n_prov:
                ignored += 1
                continue
            code = np.int64(r.flags)
            if code == STATUS_CONNECTED:
                if prov_i64[prov, P_DOWN_SINCE] > 0 and prov_i64[prov, P_BLIP_START] == 0:
                    prov_i64[prov, P_BLIP_START] = prov_i64[prov, P_DOWN_SINCE]
                    prov_i64[prov, P_BLIP_END] = ts
                    prov_i64[prov, P_BLIP_REASON] = prov_i64[prov, P_DOWN_REASON]
                prov_i64[prov, P_DOWN_SINCE] = 0
                prov_i64[prov, P_DOWN_REASON] = 0
                if ts > prov_i64[prov, P_LAST_ALIVE]:
                    prov_i64[prov, P_LAST_ALIVE] = ts
            elif code == STATUS_DISCONNECTED or code == STATUS_SUBSCRIBE_ERROR:  # noqa: SIM109
                if prov_i64[prov, P_DOWN_SINCE] == 0:
                    prov_i64[prov, P_DOWN_SINCE] = max(ts, 1)
                    prov_i64[prov, P_DOWN_REASON] = (
                        REASON_DISCONNECTED if code == STATUS_DISCONNECTED
                        else REASON_SUBSCRIBE_ERROR
                    )  # fmt: skip
                elif code == STATUS_SUBSCRIBE_ERROR:
                    prov_i64[prov, P_DOWN_REASON] = REASON_SUBSCRIBE_ERROR
            else:
                ignored += 1
                continue
            prov_i64[prov, P_STATUS] = code
        elif kind == KIND_GAP:
            venue = np.int64(r.venue)
            if prov >= source_table.shape[0] or venue >= source_table.shape[1]:
                ignored += 1
                continue
            b = np.int64(source_table[prov, venue])
            if b < 0 or b >= n_src:
                ignored += 1
                continue
            bursts[b, B_COUNT] += 1
            bursts[b, B_MISSED] += np.int64(max(r.size, 0.0))
            if bursts[b, B_FIRST] == 0:
                bursts[b, B_FIRST] = max(ts, 1)
            bursts[b, B_LAST] = max(ts, 1)
        else:
            ignored += 1
    return ignored


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


@njit(cache=True)
def evaluate_nb(now, thr, gthr, sub_meta, sub_groups, group_meta, group_size, sub_i64, sub_f64,
                prov_i64, bursts, src_meta, ring_dropped, fair, onset, active, sub_open, meas,
                group_open, iv_offsets, iv_subs, iv_state, iv_meas, misc, ev_i,
                ev_f):  # fmt: skip  # pragma: no cover
    """One evaluation at ``now`` (ns); returns the number of event rows written.

    Reference: ``anomaly_reference.evaluate_reference``. Rules: module docstring. ``fair[i]`` is
    the latest fair price of instrument i (NaN = none); ``ring_dropped[r]`` the running drop
    count of ring r; ``src_meta[s]`` = (provider, venue) of source s. ``sub_meta[k]`` =
    (provider, venue, data class, instrument, source) of subscription k. A transition that
    finds the event buffer full is postponed to the next
    evaluation (counted in ``misc[M_DEFERRED]``).
    """
    n_sub = sub_meta.shape[0]
    n_prov = prov_i64.shape[0]
    n_src_b = bursts.shape[0] - ring_dropped.shape[0]
    cap = ev_i.shape[0]
    m = 0
    last = misc[M_LAST_EVAL]
    dt = now - last if last > 0 else 0
    misc[M_LAST_EVAL] = now
    hb_timeout = gthr[G_HB_TIMEOUT]

    # 1. providers: disconnect episodes
    down = np.zeros(n_prov, np.bool_)
    for p in range(n_prov):
        reason = prov_i64[p, P_DOWN_REASON] if prov_i64[p, P_DOWN_SINCE] > 0 else 0
        since = prov_i64[p, P_DOWN_SINCE]
        if reason == 0 and prov_i64[p, P_HB_SEEN] and now - prov_i64[p, P_LAST_ALIVE] > hb_timeout:
            reason = REASON_HEARTBEAT
            since = prov_i64[p, P_LAST_ALIVE]
        silent_s = (now - prov_i64[p, P_LAST_ALIVE]) / 1e9
        if prov_i64[p, P_OPEN] > 0:
            if reason == 0:
                if m >= cap:
                    misc[M_DEFERRED] += 1
                    down[p] = True
                    continue
                end = prov_i64[p, P_BLIP_END] if prov_i64[p, P_BLIP_START] > 0 else now
                end = max(end, prov_i64[p, P_OPEN])
                m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_END, LV_PROVIDER, p, -1, -1, -1,
                          prov_i64[p, P_OPEN], end, now, 0, prov_i64[p, P_OPEN_REASON],
                          silent_s, 0.0, hb_timeout / 1e9)  # fmt: skip
                prov_i64[p, P_OPEN] = 0
                prov_i64[p, P_OPEN_REASON] = 0
                prov_i64[p, P_BLIP_START] = 0
                prov_i64[p, P_BLIP_END] = 0
            else:
                down[p] = True
                prov_i64[p, P_BLIP_START] = 0
        elif reason != 0:
            if m >= cap:
                misc[M_DEFERRED] += 1
            else:
                since = max(since, 1)
                m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_START, LV_PROVIDER, p, -1, -1, -1,
                          since, 0, now, 0, reason, silent_s, 0.0, hb_timeout / 1e9)  # fmt: skip
                prov_i64[p, P_OPEN] = since
                prov_i64[p, P_OPEN_REASON] = reason
            down[p] = True
            prov_i64[p, P_BLIP_START] = 0
        elif prov_i64[p, P_BLIP_START] > 0:
            if m + 2 > cap:
                misc[M_DEFERRED] += 1
                continue
            bs = prov_i64[p, P_BLIP_START]
            be = max(prov_i64[p, P_BLIP_END], bs)
            br = prov_i64[p, P_BLIP_REASON]
            m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_START, LV_PROVIDER, p, -1, -1, -1, bs,
                      0, now, 0, br, 0.0, 0.0, hb_timeout / 1e9)  # fmt: skip
            m = _emit(ev_i, ev_f, m, A_DISCONNECT, PHASE_END, LV_PROVIDER, p, -1, -1, -1, bs,
                      be, now, 0, br, 0.0, 0.0, hb_timeout / 1e9)  # fmt: skip
            prov_i64[p, P_BLIP_START] = 0
            prov_i64[p, P_BLIP_END] = 0

    # 2. per subscription: detector states and measures. Each subscription's figures are read
    # once into locals (the compiler cannot keep them across the stores: arrays may alias).
    busy = np.zeros(N_DET, np.bool_)
    mask = np.empty(n_sub, np.uint8)  # per subscription: bit d = detector d in progress
    a_fast = 1.0 - np.exp(-dt / gthr[G_RATE_FAST]) if dt > 0 else 0.0
    a_base = 1.0 - np.exp(-dt / gthr[G_RATE_BASE]) if dt > 0 else 0.0
    lat_clear = gthr[G_LAT_CLEAR]
    n_fair = fair.shape[0]
    for k in range(n_sub):
        p = sub_meta[k, 0]
        inst = sub_meta[k, 3]
        if p < n_prov and down[p]:
            sub_i64[k, SI_QUIET_FROM] = now
            for d in range(N_DET):
                onset[k, d] = 0
                active[k, d] = 0
        else:
            last_data = sub_i64[k, SI_LAST_DATA]
            n_ep = sub_i64[k, SI_N_EP]
            n_loc = sub_i64[k, SI_N_LOC]
            lim_nodata = thr[k, T_NO_DATA]
            t0 = max(last_data, sub_i64[k, SI_QUIET_FROM])
            silent = now - t0
            # no data (after some) / never any data
            if last_data > 0:
                lim = lim_nodata
                # alive but silent: a heartbeat well into the silence, not just one that
                # happened to follow the last record before the connection died
                hb_ok = (p >= n_prov or prov_i64[p, P_HB_SEEN] == 0
                         or prov_i64[p, P_LAST_HB] - t0 > lim * 0.5)  # fmt: skip
                on_nd = t0 if silent >= lim * 0.5 else 0
                onset[k, D_NO_DATA] = on_nd
                active[k, D_NO_DATA] = 1 if (silent >= lim and hb_ok) else 0
                meas[k, D_NO_DATA, 0] = silent / 1e9
                onset[k, D_NO_FIRST] = 0
                active[k, D_NO_FIRST] = 0
            else:
                lim = thr[k, T_FIRST]
                on_nd = t0 if silent >= lim * 0.5 else 0
                onset[k, D_NO_FIRST] = on_nd
                active[k, D_NO_FIRST] = 1 if silent >= lim else 0
                meas[k, D_NO_FIRST, 0] = silent / 1e9
                onset[k, D_NO_DATA] = 0
                active[k, D_NO_DATA] = 0
            nodata = on_nd > 0
            # divergence from the fair price
            price = sub_f64[k, SF_PRICE]
            f = fair[inst] if inst < n_fair else np.nan
            fresh = last_data > 0 and now - last_data < lim_nodata
            if fresh and not np.isnan(price) and not np.isnan(f) and f > 0:
                dev = price / f - 1.0
                meas[k, D_DIVERGENCE, 0] = dev
                meas[k, D_DIVERGENCE, 1] = price
                meas[k, D_DIVERGENCE, 2] = f
                a = abs(dev)
                _step(onset, active, D_DIVERGENCE, k, now, a > thr[k, T_DIV],
                      a > thr[k, T_DIV_CLEAR], thr[k, T_DIV_FOR])  # fmt: skip
            else:
                _step(onset, active, D_DIVERGENCE, k, now, False, False, thr[k, T_DIV_FOR])
            # latencies (only intervals with samples move the state)
            if n_ep > 0 or n_loc > 0:
                lat_for = thr[k, T_LAT_FOR]
                if n_ep > 0:
                    lat = sub_i64[k, SI_EP_MAX]
                    lim = thr[k, T_LAT_EX]
                    meas[k, D_LAT_EX, 0] = lat / 1e6
                    _step(onset, active, D_LAT_EX, k, now, lat > lim, lat > lim * lat_clear,
                          lat_for)  # fmt: skip
                if n_loc > 0:
                    lat = sub_i64[k, SI_LOC_MAX]
                    lim = thr[k, T_LAT_LOCAL]
                    meas[k, D_LAT_LOCAL, 0] = lat / 1e6
                    _step(onset, active, D_LAT_LOCAL, k, now, lat > lim, lat > lim * lat_clear,
                          lat_for)  # fmt: skip
                lo = np.int64(0)
                if n_ep > 0:
                    lo = sub_i64[k, SI_EP_MIN]
                if n_loc > 0 and (n_ep == 0 or sub_i64[k, SI_LOC_MIN] < lo):
                    lo = sub_i64[k, SI_LOC_MIN]
                lim = thr[k, T_SKEW]
                meas[k, D_SKEW, 0] = lo / 1e6
                _step(onset, active, D_SKEW, k, now, lo < -lim, lo < -lim * lat_clear,
                      lat_for)  # fmt: skip
            # update rate against its baseline (frozen while silent or in a drop)
            r_fast = sub_f64[k, SF_FAST]
            r_fast_w = sub_f64[k, SF_FAST_W]
            r_base = sub_f64[k, SF_BASE]
            r_base_w = sub_f64[k, SF_BASE_W]
            if dt > 0 and last_data > 0 and not nodata:
                rate = sub_i64[k, SI_COUNT] * 1e9 / dt
                r_fast += a_fast * (rate - r_fast)
                r_fast_w += a_fast * (1.0 - r_fast_w)
                sub_f64[k, SF_FAST] = r_fast
                sub_f64[k, SF_FAST_W] = r_fast_w
                if onset[k, D_RATE] == 0 and active[k, D_RATE] == 0:
                    r_base += a_base * (rate - r_base)
                    r_base_w += a_base * (1.0 - r_base_w)
                    sub_f64[k, SF_BASE] = r_base
                    sub_f64[k, SF_BASE_W] = r_base_w
            fast = r_fast / r_fast_w if r_fast_w > 0 else 0.0
            base = r_base / r_base_w if r_base_w > 0 else 0.0
            meas[k, D_RATE, 0] = fast
            meas[k, D_RATE, 1] = base
            if nodata:
                onset[k, D_RATE] = 0
                active[k, D_RATE] = 0
            else:
                ok = base >= thr[k, T_RATE_FLOOR]
                _step(onset, active, D_RATE, k, now, ok and fast < base * thr[k, T_RATE_RATIO],
                      ok and fast < base * thr[k, T_RATE_CLEAR], thr[k, T_RATE_FOR])  # fmt: skip
        sub_i64[k, SI_COUNT] = 0
        sub_i64[k, SI_N_EP] = 0
        sub_i64[k, SI_N_LOC] = 0
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

    # 3. roll-up and episodes of every per-subscription detector. Only subscriptions with
    # something in progress for the detector (``mask`` bit from step 2: onset, active or an open
    # episode) can be pre-active, active or open, so the per-level work runs over that list; a
    # group with a member off the list cannot be all pre-active (``cnt`` < its size). The member
    # with the largest measure (the event's figures) is looked up only when a group emits.
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
    thr_col = np.array([T_NO_DATA, T_FIRST, T_DIV, T_LAT_EX, T_LAT_LOCAL, T_SKEW, T_RATE_RATIO])
    thr_scale = np.array([1e-9, 1e-9, 1.0, 1e-6, 1e-6, 1e-6, 1.0])
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
        tc = thr_col[d]
        ts_ = thr_scale[d]
        bit = np.uint8(1 << d)
        n_l = 0
        for k in range(n_sub):
            if mask[k] & bit:
                lst[n_l] = k
                n_l += 1
        n_fresh = 0  # listed subscriptions active and not covered
        for x in range(n_l):
            k = lst[x]
            p = sub_meta[k, 0]
            cov_l[x] = (p < n_prov and down[p]) or sub_open[k, d] > 0
            act_l[x] = active[k, d] == 1
            if act_l[x] and not cov_l[x]:
                n_fresh += 1
        for lv in range(N_GROUP_LEVELS):
            n_open_lv[lv] = 0
        for g in range(n_groups):
            if group_open[d, g] > 0 and 1 <= group_meta[g, 0] <= N_GROUP_LEVELS:
                n_open_lv[group_meta[g, 0] - 1] += 1
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
                if group_meta[g, 0] != lv + 1 or (group_size[g] < 2 and group_open[d, g] == 0):
                    continue
                all_pre = stamp[g] == pass_id and cnt[g] == group_size[g]
                if group_open[d, g] > 0:
                    if not all_pre:
                        if m >= cap:
                            misc[M_DEFERRED] += 1
                            continue
                        b = _best_member(sub_groups, meas, lv, g, d)
                        if b >= 0:
                            v0, v1, v2, tv = (meas[b, d, 0], meas[b, d, 1], meas[b, d, 2],
                                              thr[b, tc] * ts_)  # fmt: skip
                        else:  # every member unsubscribed
                            v0, v1, v2, tv = 0.0, 0.0, 0.0, np.nan
                        m = _emit_group(ev_i, ev_f, m, kind, PHASE_END, group_meta[g, 0],
                                        group_meta[g, 1], group_open[d, g], now, now,
                                        group_size[g], v0, v1, v2, tv)  # fmt: skip
                        group_open[d, g] = 0
                        for k in range(n_sub):  # members start from scratch
                            if sub_groups[k, lv] == g:
                                if d <= D_NO_FIRST:
                                    sub_i64[k, SI_QUIET_FROM] = now
                                onset[k, d] = 0
                                active[k, d] = 0
                        stale = True
                elif all_pre and fresh_act[g]:
                    if m >= cap:
                        misc[M_DEFERRED] += 1
                        continue
                    start = now
                    for x in range(n_l):
                        k = lst[x]
                        if grp_l[x] == g and onset[k, d] > 0 and onset[k, d] < start:
                            start = onset[k, d]
                    b = _best_member(sub_groups, meas, lv, g, d)
                    m = _emit_group(ev_i, ev_f, m, kind, PHASE_START, group_meta[g, 0],
                                    group_meta[g, 1], start, 0, now, group_size[g],
                                    meas[b, d, 0], meas[b, d, 1], meas[b, d, 2],
                                    thr[b, tc] * ts_)  # fmt: skip
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
                        misc[M_DEFERRED] += 1
                        continue
                    m = _emit(ev_i, ev_f, m, kind, PHASE_END, LV_SUB, sub_meta[k, 0],
                              sub_meta[k, 1], sub_meta[k, 2], sub_meta[k, 3], sub_open[k, d],
                              now, now, 1, meas[k, d, 0], meas[k, d, 1], meas[k, d, 2],
                              thr[k, tc] * ts_)  # fmt: skip
                    sub_open[k, d] = 0
            elif active[k, d] == 1 and not cov_l[x]:
                if m >= cap:
                    misc[M_DEFERRED] += 1
                    continue
                start = onset[k, d] if onset[k, d] > 0 else now
                m = _emit(ev_i, ev_f, m, kind, PHASE_START, LV_SUB, sub_meta[k, 0],
                          sub_meta[k, 1], sub_meta[k, 2], sub_meta[k, 3], start, 0, now, 1,
                          meas[k, d, 0], meas[k, d, 1], meas[k, d, 2],
                          thr[k, tc] * ts_)  # fmt: skip
                sub_open[k, d] = start

    # 4. venue divergence: spread between providers of one venue, per instrument
    n_iv = iv_offsets.shape[0] - 1
    for v in range(n_iv):
        lo = np.inf
        hi = -np.inf
        k0 = iv_subs[iv_offsets[v]]
        npx = 0
        for j in range(iv_offsets[v], iv_offsets[v + 1]):
            k = iv_subs[j]
            p = sub_meta[k, 0]
            price = sub_f64[k, SF_PRICE]
            ld = sub_i64[k, SI_LAST_DATA]
            if (p < n_prov and down[p]) or np.isnan(price) or ld == 0:
                continue
            if now - ld >= thr[k, T_NO_DATA]:
                continue
            lo = min(lo, price)
            hi = max(hi, price)
            npx += 1
        beyond_o = False
        beyond_c = False
        spread = 0.0
        if npx >= 2 and lo > 0:
            spread = hi / lo - 1.0
            beyond_o = spread > thr[k0, T_DIV]
            beyond_c = spread > thr[k0, T_DIV_CLEAR]
            iv_meas[v, 0] = spread
            iv_meas[v, 1] = lo
            iv_meas[v, 2] = hi
        st = iv_state[v]
        if st[1]:
            if not beyond_c:
                st[1] = 0
                st[0] = 0
        elif beyond_o:
            if st[0] == 0:
                st[0] = now
            if now - st[0] >= thr[k0, T_DIV_FOR]:
                st[1] = 1
        else:
            st[0] = 0
        if st[2] > 0 and st[1] == 0:
            if m >= cap:
                misc[M_DEFERRED] += 1
                continue
            m = _emit(ev_i, ev_f, m, A_VENUE_DIVERGENCE, PHASE_END, LV_VENUE_INSTRUMENT, -1,
                      sub_meta[k0, 1], -1, sub_meta[k0, 3], st[2], now, now,
                      iv_offsets[v + 1] - iv_offsets[v], iv_meas[v, 0], iv_meas[v, 1],
                      iv_meas[v, 2], thr[k0, T_DIV])  # fmt: skip
            st[2] = 0
        elif st[2] == 0 and st[1] == 1:
            if m >= cap:
                misc[M_DEFERRED] += 1
                continue
            m = _emit(ev_i, ev_f, m, A_VENUE_DIVERGENCE, PHASE_START, LV_VENUE_INSTRUMENT, -1,
                      sub_meta[k0, 1], -1, sub_meta[k0, 3], st[0], 0, now,
                      iv_offsets[v + 1] - iv_offsets[v], iv_meas[v, 0], iv_meas[v, 1],
                      iv_meas[v, 2], thr[k0, T_DIV])  # fmt: skip
            st[2] = st[0]

    # 5. bursts: gaps per source, overflow per ring
    quiet = gthr[G_GAP_QUIET]
    for r in range(ring_dropped.shape[0]):
        b = n_src_b + r
        if ring_dropped[r] > bursts[b, B_COUNT]:
            bursts[b, B_MISSED] += ring_dropped[r] - bursts[b, B_COUNT]
            bursts[b, B_COUNT] = ring_dropped[r]
            if bursts[b, B_FIRST] == 0:
                bursts[b, B_FIRST] = now
            bursts[b, B_LAST] = now
    for b in range(bursts.shape[0]):
        is_gap = b < n_src_b
        kind = A_GAP if is_gap else A_RING_OVERFLOW
        level = LV_SOURCE if is_gap else LV_RING
        prov = src_meta[b, 0] if is_gap else -1
        venue = src_meta[b, 1] if is_gap else -1
        idx = 0 if is_gap else b - n_src_b
        if bursts[b, B_OPEN] > 0:
            if now - bursts[b, B_LAST] >= quiet:
                if m >= cap:
                    misc[M_DEFERRED] += 1
                    continue
                m = _emit(ev_i, ev_f, m, kind, PHASE_END, level, prov, venue, -1, -1,
                          bursts[b, B_OPEN], bursts[b, B_LAST], now, idx,
                          bursts[b, B_COUNT] - bursts[b, B_BASE_COUNT],
                          bursts[b, B_MISSED] - bursts[b, B_BASE_MISSED], 0.0,
                          quiet / 1e9)  # fmt: skip
                bursts[b, B_OPEN] = 0
                bursts[b, B_FIRST] = 0
                bursts[b, B_BASE_COUNT] = bursts[b, B_COUNT]
                bursts[b, B_BASE_MISSED] = bursts[b, B_MISSED]
        elif bursts[b, B_COUNT] > bursts[b, B_BASE_COUNT]:
            if m >= cap:
                misc[M_DEFERRED] += 1
                continue
            m = _emit(ev_i, ev_f, m, kind, PHASE_START, level, prov, venue, -1, -1,
                      bursts[b, B_FIRST], 0, now, idx,
                      bursts[b, B_COUNT] - bursts[b, B_BASE_COUNT],
                      bursts[b, B_MISSED] - bursts[b, B_BASE_MISSED], 0.0, quiet / 1e9)  # fmt: skip
            bursts[b, B_OPEN] = bursts[b, B_FIRST]
    return m


@njit(cache=True, _nrt=False)
def _need(thr, d, k):  # pragma: no cover
    if d == D_DIVERGENCE:
        return thr[k, T_DIV_FOR]
    if d == D_RATE:
        return thr[k, T_RATE_FOR]
    if d == D_NO_DATA:
        return thr[k, T_NO_DATA]
    if d == D_NO_FIRST:
        return thr[k, T_FIRST]
    return thr[k, T_LAT_FOR]


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


def default_thresholds() -> np.ndarray:
    """One row of thresholds (``T_*`` columns) with the configuration defaults."""
    row = np.zeros(N_T)
    row[T_NO_DATA] = 30e9
    row[T_FIRST] = 30e9
    row[T_DIV] = 0.06
    row[T_DIV_FOR] = 30e9
    row[T_DIV_CLEAR] = 0.04
    row[T_LAT_EX] = 2000e6
    row[T_LAT_LOCAL] = 1000e6
    row[T_SKEW] = 100e6
    row[T_LAT_FOR] = 10e9
    row[T_RATE_RATIO] = 0.2
    row[T_RATE_CLEAR] = 0.5
    row[T_RATE_FLOOR] = 1.0
    row[T_RATE_FOR] = 60e9
    return row


def default_globals() -> np.ndarray:
    g = np.zeros(N_G)
    g[G_HB_TIMEOUT] = 10e9
    g[G_GAP_QUIET] = 10e9
    g[G_RATE_FAST] = 10e9
    g[G_RATE_BASE] = 600e9
    g[G_LAT_CLEAR] = 0.8
    return g


# Thresholds that can never be crossed (and let every open episode end): an unmonitored
# subscription.
DISABLED_THRESHOLDS = np.full(N_T, np.inf)
DISABLED_THRESHOLDS[[T_RATE_RATIO, T_RATE_CLEAR]] = 0.0
DISABLED_THRESHOLDS[[T_DIV_FOR, T_LAT_FOR, T_RATE_FOR]] = 0.0


class AnomalyState:
    """Every array the anomaly kernels read and write, built from the subscription list.

    ``instrument_classes[i]``: data-class code of instrument i; ``sources[s]`` = (provider,
    venue); ``subscriptions``: (instrument, source) pairs; ``thresholds``: ``(n_sub, N_T)``
    (one row per subscription, e.g. from ``default_thresholds``); ``globals_``: ``(N_G,)``.
    ``start_ns`` starts the first-data clocks.
    """

    def __init__(
        self,
        instrument_classes,
        sources,
        n_providers: int,
        n_venues: int,
        subscriptions,
        thresholds: np.ndarray,
        globals_: np.ndarray,
        n_rings: int = 0,
        start_ns: int = 0,
        max_events: int = 4096,
    ) -> None:
        n_inst = len(instrument_classes)
        n_src = len(sources)
        n_sub = len(subscriptions)
        self.n_sub = n_sub
        self.source_table = np.full((max(n_providers, 1), max(n_venues, 1)), -1, np.int32)
        for s, (p, v) in enumerate(sources):
            self.source_table[p, v] = s
        self.src_meta = np.array(list(sources), np.int64).reshape(n_src, 2)
        self.sub_table = np.full((max(n_inst, 1), max(n_src, 1)), -1, np.int32)
        self.sub_meta = np.zeros((n_sub, 5), np.int64)
        # groups: providers, venues, classes (codes 0..7), instruments
        offs = (0, n_providers, n_providers + n_venues, n_providers + n_venues + 8)
        self.group_offsets = offs
        # the last group (level 0, never evaluated) holds unmonitored subscriptions
        n_groups = offs[3] + n_inst + 1
        self.void_group = n_groups - 1
        self.group_meta = np.zeros((n_groups, 2), np.int64)
        for lv, (a, count) in enumerate(zip(offs, (n_providers, n_venues, 8, n_inst), strict=True)):
            self.group_meta[a : a + count, 0] = lv + 1
            self.group_meta[a : a + count, 1] = np.arange(count)
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
        # (instrument, venue) segments with two or more subscriptions (venue divergence)
        segs: dict[tuple[int, int], list[int]] = {}
        for k in range(n_sub):
            segs.setdefault((int(self.sub_meta[k, 3]), int(self.sub_meta[k, 1])), []).append(k)
        multi = [ks for ks in segs.values() if len(ks) >= 2]
        self.iv_offsets = np.zeros(len(multi) + 1, np.int64)
        self.iv_offsets[1:] = np.cumsum([len(ks) for ks in multi])
        self.iv_subs = np.array([k for ks in multi for k in ks], np.int64)
        self.iv_state = np.zeros((len(multi), 3), np.int64)
        self.iv_meas = np.zeros((len(multi), 3))
        self.thr = np.ascontiguousarray(thresholds, np.float64).reshape(n_sub, N_T)
        self.gthr = np.ascontiguousarray(globals_, np.float64)
        self.sub_i64 = np.zeros((n_sub, N_SI), np.int64)
        self.sub_i64[:, SI_QUIET_FROM] = start_ns
        self.sub_f64 = np.zeros((n_sub, N_SF))
        self.sub_f64[:, SF_PRICE : SF_ASK + 1] = np.nan
        self.prov_i64 = np.zeros((max(n_providers, 1), N_P), np.int64)
        self.bursts = np.zeros((n_src + n_rings, N_B), np.int64)
        self.n_rings = n_rings
        # per-subscription detector state, [subscription, detector]: one pass touches each
        # subscription's figures together
        self.onset = np.zeros((n_sub, N_DET), np.int64)
        self.active = np.zeros((n_sub, N_DET), np.int64)
        self.sub_open = np.zeros((n_sub, N_DET), np.int64)
        self.meas = np.zeros((n_sub, N_DET, 3))
        self.group_open = np.zeros((N_DET, n_groups), np.int64)
        self.misc = np.zeros(N_M, np.int64)
        self.ev_i = np.zeros((max_events, N_EI), np.int64)
        self.ev_f = np.zeros((max_events, N_EF))
        self.ignored = 0

    def carry_over(self, old: AnomalyState) -> None:
        """Continue ``old``'s clocks and open episodes here, so that growing the monitored set
        neither loses an end event nor repeats a start. This state must hold ``old``'s
        subscriptions first, in the same order (new ones after them), over ids that only grew.
        """
        n = old.n_sub
        if n > self.n_sub or not np.array_equal(self.sub_meta[:n], old.sub_meta):
            raise ValueError("carry_over: the old subscriptions must come first, in order")
        for name in ("sub_i64", "sub_f64", "onset", "active", "sub_open", "meas", "thr"):
            getattr(self, name)[:n] = getattr(old, name)
        self.prov_i64[: len(old.prov_i64)] = old.prov_i64
        old_src = len(old.src_meta)
        self.bursts[:old_src] = old.bursts[:old_src]
        self.bursts[len(self.src_meta) :][: old.n_rings] = old.bursts[old_src:]
        # groups are numbered level by level: renumber by (level, id)
        real = old.group_meta[:, 0] > 0
        lv = old.group_meta[real, 0] - 1
        new_index = np.asarray(self.group_offsets)[lv] + old.group_meta[real, 1]
        self.group_open[:, new_index] = old.group_open[:, real]
        segments = {
            (int(self.sub_meta[self.iv_subs[self.iv_offsets[v]], 3]),
             int(self.sub_meta[self.iv_subs[self.iv_offsets[v]], 1])): v
            for v in range(len(self.iv_state))
        }  # fmt: skip
        for v in range(len(old.iv_state)):
            k0 = old.iv_subs[old.iv_offsets[v]]
            w = segments[(int(old.sub_meta[k0, 3]), int(old.sub_meta[k0, 1]))]
            self.iv_state[w] = old.iv_state[v]
            self.iv_meas[w] = old.iv_meas[v]
        self.misc[:] = old.misc
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
        self.sub_i64[k] = 0
        self.sub_i64[k, SI_QUIET_FROM] = now_ns
        self.sub_f64[k] = 0.0
        self.sub_f64[k, SF_PRICE : SF_ASK + 1] = np.nan
        if not self.monitored[k]:
            p, v, c, i, _s = self.sub_meta[k]
            o = self.group_offsets
            self.sub_groups[k] = (o[0] + p, o[1] + v, o[2] + c, o[3] + i)
            self.group_size[self.sub_groups[k]] += 1
            self.monitored[k] = True

    def update(self, records: np.ndarray, n: int | None = None) -> int:
        count = len(records) if n is None else min(int(n), len(records))
        ignored = int(
            update_nb(
                records,
                count,
                self.sub_table,
                self.source_table,
                self.sub_i64,
                self.sub_f64,
                self.prov_i64,
                self.bursts,
            )
        )
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
                self.sub_meta,
                self.sub_groups,
                self.group_meta,
                self.group_size,
                self.sub_i64,
                self.sub_f64,
                self.prov_i64,
                self.bursts,
                self.src_meta,
                np.ascontiguousarray(ring_dropped, np.int64),
                np.ascontiguousarray(fair, np.float64),
                self.onset,
                self.active,
                self.sub_open,
                self.meas,
                self.group_open,
                self.iv_offsets,
                self.iv_subs,
                self.iv_state,
                self.iv_meas,
                self.misc,
                self.ev_i,
                self.ev_f,
            )
        )
        return self.ev_i[:m], self.ev_f[:m]

    def open_count(self) -> int:
        """Episodes open now."""
        return int(
            (self.sub_open > 0).sum() + (self.group_open > 0).sum()
            + (self.prov_i64[:, P_OPEN] > 0).sum() + (self.iv_state[:, 2] > 0).sum()
            + (self.bursts[:, B_OPEN] > 0).sum()
        )  # fmt: skip
