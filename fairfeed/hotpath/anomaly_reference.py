"""Slow plain-Python oracles of the anomaly kernels (:mod:`fairfeed.hotpath.anomaly`).

Same signatures and in-place effects as ``update_nb`` and ``evaluate_nb``, written the plain way
(Python ints and floats, dicts of group members instead of per-level scans); the tests run both
on copies of one state over random inputs and compare every array and every event row.
"""

from __future__ import annotations

import math

import numpy as np

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
from fairfeed.hotpath import anomaly as a


def update_reference(records, n, sub_table, source_table, sub_i64, sub_f64, prov_i64, bursts):
    """Plain-Python twin of ``update_nb``."""
    n_prov = prov_i64.shape[0]
    ignored = 0
    for rec in records[:n]:
        kind = int(rec["kind"])
        prov, venue, inst = int(rec["provider"]), int(rec["venue"]), int(rec["instrument"])
        ts = int(rec["ts_receive"])
        src = -1
        if prov < source_table.shape[0] and venue < source_table.shape[1]:
            src = int(source_table[prov, venue])
            if src >= sub_table.shape[1]:
                src = -1
        if kind in (KIND_TRADE, KIND_BID, KIND_ASK):
            if inst >= sub_table.shape[0] or src < 0 or sub_table[inst, src] < 0:
                ignored += 1
                continue
            k = int(sub_table[inst, src])
            s = sub_i64[k]
            s[a.SI_LAST_DATA] = ts
            s[a.SI_COUNT] += 1
            if prov < n_prov:
                prov_i64[prov, a.P_LAST_ALIVE] = max(int(prov_i64[prov, a.P_LAST_ALIVE]), ts)
            tex, tpr = int(rec["ts_exchange"]), int(rec["ts_provider"])
            samples = []
            if tex > 0 and tpr > 0:
                samples.append((a.SI_EP_MAX, a.SI_EP_MIN, a.SI_N_EP, tpr - tex))
            base = tpr if tpr > 0 else tex
            if base > 0 and ts > 0:
                samples.append((a.SI_LOC_MAX, a.SI_LOC_MIN, a.SI_N_LOC, ts - base))
            for hi, lo, cnt, lat in samples:
                first = s[cnt] == 0
                s[hi] = lat if first else max(int(s[hi]), lat)
                s[lo] = lat if first else min(int(s[lo]), lat)
                s[cnt] += 1
            price = float(rec["price"])
            if math.isfinite(price):
                f = sub_f64[k]
                if kind == KIND_TRADE:
                    f[a.SF_PRICE] = price
                else:
                    f[a.SF_BID if kind == KIND_BID else a.SF_ASK] = price
                    if not (math.isnan(f[a.SF_BID]) or math.isnan(f[a.SF_ASK])):
                        f[a.SF_PRICE] = (f[a.SF_BID] + f[a.SF_ASK]) * 0.5
        elif kind == KIND_HEARTBEAT and prov < n_prov:
            p = prov_i64[prov]
            p[a.P_LAST_HB] = ts
            p[a.P_HB_SEEN] = 1
            p[a.P_LAST_ALIVE] = max(int(p[a.P_LAST_ALIVE]), ts)
        elif kind == KIND_STATUS and prov < n_prov:
            p = prov_i64[prov]
            code = int(rec["flags"])
            if code == STATUS_CONNECTED:
                if p[a.P_DOWN_SINCE] > 0 and p[a.P_BLIP_START] == 0:
                    p[a.P_BLIP_START] = p[a.P_DOWN_SINCE]
                    p[a.P_BLIP_END] = ts
                    p[a.P_BLIP_REASON] = p[a.P_DOWN_REASON]
                p[a.P_DOWN_SINCE] = p[a.P_DOWN_REASON] = 0
                p[a.P_LAST_ALIVE] = max(int(p[a.P_LAST_ALIVE]), ts)
            elif code in (STATUS_DISCONNECTED, STATUS_SUBSCRIBE_ERROR):
                reason = (
                    a.REASON_DISCONNECTED
                    if code == STATUS_DISCONNECTED
                    else a.REASON_SUBSCRIBE_ERROR
                )
                if p[a.P_DOWN_SINCE] == 0:
                    p[a.P_DOWN_SINCE] = max(ts, 1)
                    p[a.P_DOWN_REASON] = reason
                elif reason == a.REASON_SUBSCRIBE_ERROR:
                    p[a.P_DOWN_REASON] = reason
            else:
                ignored += 1
                continue
            p[a.P_STATUS] = code
        elif kind == KIND_GAP and src >= 0:
            b = bursts[src]
            b[a.B_COUNT] += 1
            b[a.B_MISSED] += int(max(float(rec["size"]), 0.0))
            if b[a.B_FIRST] == 0:
                b[a.B_FIRST] = max(ts, 1)
            b[a.B_LAST] = max(ts, 1)
        else:
            ignored += 1
    return ignored


_THR_COL = {
    a.D_NO_DATA: (a.T_NO_DATA, 1e-9),
    a.D_NO_FIRST: (a.T_FIRST, 1e-9),
    a.D_DIVERGENCE: (a.T_DIV, 1.0),
    a.D_LAT_EX: (a.T_LAT_EX, 1e-6),
    a.D_LAT_LOCAL: (a.T_LAT_LOCAL, 1e-6),
    a.D_SKEW: (a.T_SKEW, 1e-6),
    a.D_RATE: (a.T_RATE_RATIO, 1.0),
}
_NEED = {
    a.D_NO_DATA: a.T_NO_DATA,
    a.D_NO_FIRST: a.T_FIRST,
    a.D_DIVERGENCE: a.T_DIV_FOR,
    a.D_RATE: a.T_RATE_FOR,
    a.D_LAT_EX: a.T_LAT_FOR,
    a.D_LAT_LOCAL: a.T_LAT_FOR,
    a.D_SKEW: a.T_LAT_FOR,
}


class _Out:
    def __init__(self, ev_i, ev_f, misc):
        self.rows: list[tuple[list[int], list[float]]] = []
        self.cap = ev_i.shape[0]
        self.ev_i, self.ev_f, self.misc = ev_i, ev_f, misc

    def room(self, n: int = 1) -> bool:
        if len(self.rows) + n > self.cap:
            self.misc[a.M_DEFERRED] += 1
            return False
        return True

    def emit(self, kind, phase, level, prov, venue, cls, inst, start, end, now, count, vals, thr):
        m = len(self.rows)
        self.ev_i[m] = [kind, phase, level, prov, venue, cls, inst, start, end, now, count]
        self.ev_f[m] = [*vals, thr]
        self.rows.append((list(self.ev_i[m]), list(self.ev_f[m])))


def _step(onset, active, d, k, now, beyond_open, beyond_clear, need):
    if active[k, d]:
        if not beyond_clear:
            active[k, d] = onset[k, d] = 0
    elif beyond_open:
        if onset[k, d] == 0:
            onset[k, d] = now
        if now - onset[k, d] >= need:
            active[k, d] = 1
    else:
        onset[k, d] = 0


def evaluate_reference(now, thr, gthr, sub_meta, sub_groups, group_meta, group_size, sub_i64,
                       sub_f64, prov_i64, bursts, src_meta, ring_dropped, fair, onset, active,
                       sub_open, meas, group_open, iv_offsets, iv_subs, iv_state, iv_meas, misc,
                       ev_i, ev_f):  # fmt: skip
    """Plain-Python twin of ``evaluate_nb``."""
    out = _Out(ev_i, ev_f, misc)
    n_sub = sub_meta.shape[0]
    n_prov = prov_i64.shape[0]
    last = int(misc[a.M_LAST_EVAL])
    dt = now - last if last > 0 else 0
    misc[a.M_LAST_EVAL] = now
    hb_timeout = float(gthr[a.G_HB_TIMEOUT])
    hb_s = hb_timeout / 1e9

    down = set()
    for p in range(n_prov):
        st = prov_i64[p]
        reason = int(st[a.P_DOWN_REASON]) if st[a.P_DOWN_SINCE] > 0 else 0
        since = int(st[a.P_DOWN_SINCE])
        if reason == 0 and st[a.P_HB_SEEN] and now - st[a.P_LAST_ALIVE] > hb_timeout:
            reason, since = a.REASON_HEARTBEAT, int(st[a.P_LAST_ALIVE])
        silent_s = (now - int(st[a.P_LAST_ALIVE])) / 1e9
        opened = int(st[a.P_OPEN])
        if opened and reason == 0:
            if not out.room():
                down.add(p)
                continue
            end = int(st[a.P_BLIP_END]) if st[a.P_BLIP_START] > 0 else now
            out.emit(a.A_DISCONNECT, a.PHASE_END, a.LV_PROVIDER, p, -1, -1, -1, opened,
                     max(end, opened), now, 0, (st[a.P_OPEN_REASON], silent_s, 0.0),
                     hb_s)  # fmt: skip
            for col in (a.P_OPEN, a.P_OPEN_REASON, a.P_BLIP_START, a.P_BLIP_END):
                st[col] = 0
        elif opened:
            down.add(p)
            st[a.P_BLIP_START] = 0
        elif reason:
            if out.room():
                since = max(since, 1)
                out.emit(a.A_DISCONNECT, a.PHASE_START, a.LV_PROVIDER, p, -1, -1, -1, since, 0,
                         now, 0, (reason, silent_s, 0.0), hb_s)  # fmt: skip
                st[a.P_OPEN], st[a.P_OPEN_REASON] = since, reason
            down.add(p)
            st[a.P_BLIP_START] = 0
        elif st[a.P_BLIP_START] > 0:
            if not out.room(2):
                continue
            bs, br = int(st[a.P_BLIP_START]), int(st[a.P_BLIP_REASON])
            be = max(int(st[a.P_BLIP_END]), bs)
            for phase, end in ((a.PHASE_START, 0), (a.PHASE_END, be)):
                out.emit(a.A_DISCONNECT, phase, a.LV_PROVIDER, p, -1, -1, -1, bs, end, now, 0,
                         (br, 0.0, 0.0), hb_s)  # fmt: skip
            st[a.P_BLIP_START] = st[a.P_BLIP_END] = 0

    a_fast = 1.0 - math.exp(-dt / gthr[a.G_RATE_FAST]) if dt > 0 else 0.0
    a_base = 1.0 - math.exp(-dt / gthr[a.G_RATE_BASE]) if dt > 0 else 0.0
    lc = float(gthr[a.G_LAT_CLEAR])
    for k in range(n_sub):
        p, inst = int(sub_meta[k, 0]), int(sub_meta[k, 3])
        si, sf, t = sub_i64[k], sub_f64[k], thr[k]
        if p in down:
            si[a.SI_QUIET_FROM] = now
            onset[k, :] = 0
            active[k, :] = 0
        else:
            last_data = int(si[a.SI_LAST_DATA])
            t0 = max(last_data, int(si[a.SI_QUIET_FROM]))
            silent = now - t0
            d_on, d_off = (a.D_NO_DATA, a.D_NO_FIRST) if last_data else (a.D_NO_FIRST, a.D_NO_DATA)
            lim = t[a.T_NO_DATA] if last_data else t[a.T_FIRST]
            proven = True
            if last_data and p < n_prov and prov_i64[p, a.P_HB_SEEN]:
                proven = prov_i64[p, a.P_LAST_HB] - t0 > lim * 0.5
            onset[k, d_on] = t0 if silent >= lim * 0.5 else 0
            active[k, d_on] = int(silent >= lim and proven)
            meas[k, d_on, 0] = silent / 1e9
            onset[k, d_off] = active[k, d_off] = 0
            nodata = onset[k, a.D_NO_DATA] > 0 or onset[k, a.D_NO_FIRST] > 0

            price = sf[a.SF_PRICE]
            f = fair[inst] if inst < len(fair) else math.nan
            fresh = last_data > 0 and now - last_data < t[a.T_NO_DATA]
            if fresh and not math.isnan(price) and not math.isnan(f) and f > 0:
                dev = price / f - 1.0
                meas[k, a.D_DIVERGENCE] = (dev, price, f)
                _step(onset, active, a.D_DIVERGENCE, k, now, abs(dev) > t[a.T_DIV],
                      abs(dev) > t[a.T_DIV_CLEAR], t[a.T_DIV_FOR])  # fmt: skip
            else:
                _step(onset, active, a.D_DIVERGENCE, k, now, False, False, t[a.T_DIV_FOR])
            lows = []
            for n_col, hi_col, lo_col, d, tcol in (
                (a.SI_N_EP, a.SI_EP_MAX, a.SI_EP_MIN, a.D_LAT_EX, a.T_LAT_EX),
                (a.SI_N_LOC, a.SI_LOC_MAX, a.SI_LOC_MIN, a.D_LAT_LOCAL, a.T_LAT_LOCAL),
            ):
                if si[n_col] > 0:
                    lat = int(si[hi_col])
                    meas[k, d, 0] = lat / 1e6
                    _step(onset, active, d, k, now, lat > t[tcol], lat > t[tcol] * lc,
                          t[a.T_LAT_FOR])  # fmt: skip
                    lows.append(int(si[lo_col]))
            if lows:
                lo = min(lows)
                meas[k, a.D_SKEW, 0] = lo / 1e6
                _step(onset, active, a.D_SKEW, k, now, lo < -t[a.T_SKEW], lo < -t[a.T_SKEW] * lc,
                      t[a.T_LAT_FOR])  # fmt: skip
            if dt > 0 and last_data > 0 and not nodata:
                rate = int(si[a.SI_COUNT]) * 1e9 / dt
                sf[a.SF_FAST] += a_fast * (rate - sf[a.SF_FAST])
                sf[a.SF_FAST_W] += a_fast * (1.0 - sf[a.SF_FAST_W])
                if onset[k, a.D_RATE] == 0 and active[k, a.D_RATE] == 0:
                    sf[a.SF_BASE] += a_base * (rate - sf[a.SF_BASE])
                    sf[a.SF_BASE_W] += a_base * (1.0 - sf[a.SF_BASE_W])
            fast = sf[a.SF_FAST] / sf[a.SF_FAST_W] if sf[a.SF_FAST_W] > 0 else 0.0
            base = sf[a.SF_BASE] / sf[a.SF_BASE_W] if sf[a.SF_BASE_W] > 0 else 0.0
            meas[k, a.D_RATE, 0], meas[k, a.D_RATE, 1] = fast, base
            if nodata:
                onset[k, a.D_RATE] = active[k, a.D_RATE] = 0
            else:
                ok = base >= t[a.T_RATE_FLOOR]
                _step(onset, active, a.D_RATE, k, now, ok and fast < base * t[a.T_RATE_RATIO],
                      ok and fast < base * t[a.T_RATE_CLEAR], t[a.T_RATE_FOR])  # fmt: skip
        si[a.SI_COUNT] = si[a.SI_N_EP] = si[a.SI_N_LOC] = 0

    members: dict[int, list[int]] = {}
    for k in range(n_sub):
        for lv in range(a.N_GROUP_LEVELS):
            members.setdefault(int(sub_groups[k, lv]), []).append(k)
    for d in range(a.N_DET):
        kind = int(a.DET_KINDS[d])
        tcol, scale = _THR_COL[d]

        def pre(k, d=d):
            if active[k, d]:
                return True
            if onset[k, d] <= 0:
                return False
            return d <= a.D_NO_FIRST or now - onset[k, d] >= thr[k, _NEED[d]] * 0.5

        covered = {k for k in range(n_sub) if int(sub_meta[k, 0]) in down or sub_open[k, d] > 0}
        for lv in range(a.N_GROUP_LEVELS):
            for g in range(group_size.shape[0]):
                if group_meta[g, 0] != lv + 1 or (group_size[g] < 2 and not group_open[d, g]):
                    continue
                ks = members.get(g, [])
                b = ks[0] if ks else -1
                for k in ks:
                    if abs(meas[k, d, 0]) > abs(meas[b, d, 0]):
                        b = k
                vals = tuple(meas[b, d]) if ks else (0.0, 0.0, 0.0)
                group_thr = thr[b, tcol] * scale if ks else np.nan
                level, gid = int(group_meta[g, 0]), int(group_meta[g, 1])
                subject = [gid if level == x else -1 for x in (1, 2, 3, 4)]
                all_pre = bool(ks) and all(pre(k) for k in ks)  # an emptied group closes
                if group_open[d, g] > 0:
                    if not all_pre and out.room():
                        out.emit(kind, a.PHASE_END, level, *subject, int(group_open[d, g]), now,
                                 now, len(ks), vals, group_thr)  # fmt: skip
                        group_open[d, g] = 0
                        for k in ks:
                            if d <= a.D_NO_FIRST:
                                sub_i64[k, a.SI_QUIET_FROM] = now
                            onset[k, d] = active[k, d] = 0
                elif all_pre and any(active[k, d] and k not in covered for k in ks):  # noqa: SIM102 - mirrors the kernel
                    if out.room():
                        start = min([now] + [int(onset[k, d]) for k in ks if onset[k, d] > 0])
                        out.emit(kind, a.PHASE_START, level, *subject, start, 0, now, len(ks),
                                 vals, group_thr)  # fmt: skip
                        group_open[d, g] = start
            for k in range(n_sub):
                if group_open[d, sub_groups[k, lv]] > 0:
                    covered.add(k)
        for k in range(n_sub):
            subject = [int(x) for x in sub_meta[k, :4]]
            vals = tuple(meas[k, d])
            if sub_open[k, d] > 0:
                if not active[k, d] and out.room():
                    out.emit(kind, a.PHASE_END, a.LV_SUB, *subject, int(sub_open[k, d]), now, now,
                             1, vals, thr[k, tcol] * scale)  # fmt: skip
                    sub_open[k, d] = 0
            elif active[k, d] and k not in covered and out.room():
                start = int(onset[k, d]) or now
                out.emit(kind, a.PHASE_START, a.LV_SUB, *subject, start, 0, now, 1, vals,
                         thr[k, tcol] * scale)  # fmt: skip
                sub_open[k, d] = start

    for v in range(len(iv_offsets) - 1):
        ks = [int(k) for k in iv_subs[iv_offsets[v] : iv_offsets[v + 1]]]
        k0 = ks[0]
        prices = [
            sub_f64[k, a.SF_PRICE]
            for k in ks
            if int(sub_meta[k, 0]) not in down
            and not math.isnan(sub_f64[k, a.SF_PRICE])
            and sub_i64[k, a.SI_LAST_DATA] != 0
            and now - sub_i64[k, a.SI_LAST_DATA] < thr[k, a.T_NO_DATA]
        ]
        bo = bc = False
        if len(prices) >= 2 and min(prices) > 0:
            lo, hi = min(prices), max(prices)
            spread = hi / lo - 1.0
            bo, bc = spread > thr[k0, a.T_DIV], spread > thr[k0, a.T_DIV_CLEAR]
            iv_meas[v] = (spread, lo, hi)
        st = iv_state[v]
        if st[1]:
            if not bc:
                st[0] = st[1] = 0
        elif bo:
            if st[0] == 0:
                st[0] = now
            if now - st[0] >= thr[k0, a.T_DIV_FOR]:
                st[1] = 1
        else:
            st[0] = 0
        subject = (-1, int(sub_meta[k0, 1]), -1, int(sub_meta[k0, 3]))
        if st[2] > 0 and st[1] == 0:
            if out.room():
                out.emit(a.A_VENUE_DIVERGENCE, a.PHASE_END, a.LV_VENUE_INSTRUMENT, *subject,
                         int(st[2]), now, now, len(ks), tuple(iv_meas[v]),
                         thr[k0, a.T_DIV])  # fmt: skip
                st[2] = 0
        elif st[2] == 0 and st[1] == 1 and out.room():
            out.emit(a.A_VENUE_DIVERGENCE, a.PHASE_START, a.LV_VENUE_INSTRUMENT, *subject,
                     int(st[0]), 0, now, len(ks), tuple(iv_meas[v]), thr[k0, a.T_DIV])  # fmt: skip
            st[2] = st[0]

    quiet = float(gthr[a.G_GAP_QUIET])
    n_src = bursts.shape[0] - len(ring_dropped)
    for r, total in enumerate(ring_dropped):
        b = bursts[n_src + r]
        if total > b[a.B_COUNT]:
            b[a.B_MISSED] += int(total) - int(b[a.B_COUNT])
            b[a.B_COUNT] = total
            if b[a.B_FIRST] == 0:
                b[a.B_FIRST] = now
            b[a.B_LAST] = now
    for i in range(bursts.shape[0]):
        b = bursts[i]
        gap = i < n_src
        kind, level = (a.A_GAP, a.LV_SOURCE) if gap else (a.A_RING_OVERFLOW, a.LV_RING)
        prov, venue = (int(src_meta[i, 0]), int(src_meta[i, 1])) if gap else (-1, -1)
        idx = 0 if gap else i - n_src
        vals = (b[a.B_COUNT] - b[a.B_BASE_COUNT], b[a.B_MISSED] - b[a.B_BASE_MISSED], 0.0)
        if b[a.B_OPEN] > 0:
            if now - b[a.B_LAST] >= quiet and out.room():
                out.emit(kind, a.PHASE_END, level, prov, venue, -1, -1, int(b[a.B_OPEN]),
                         int(b[a.B_LAST]), now, idx, vals, quiet / 1e9)  # fmt: skip
                b[a.B_OPEN] = b[a.B_FIRST] = 0
                b[a.B_BASE_COUNT], b[a.B_BASE_MISSED] = b[a.B_COUNT], b[a.B_MISSED]
        elif b[a.B_COUNT] > b[a.B_BASE_COUNT] and out.room():
            out.emit(kind, a.PHASE_START, level, prov, venue, -1, -1, int(b[a.B_FIRST]), 0, now,
                     idx, vals, quiet / 1e9)  # fmt: skip
            b[a.B_OPEN] = b[a.B_FIRST]
    return len(out.rows)


def as_array_args(state) -> tuple:
    """The ``evaluate_*`` arguments after ``now``, taken from an ``AnomalyState``."""
    return (
        state.thr, state.gthr, state.sub_meta, state.sub_groups, state.group_meta,
        state.group_size, state.sub_i64, state.sub_f64, state.prov_i64, state.bursts,
        state.src_meta,
    )  # fmt: skip


__all__ = ["as_array_args", "evaluate_reference", "np", "update_reference"]
