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
    KIND_FUNDING,
    KIND_GAP,
    KIND_HEARTBEAT,
    KIND_INDEX,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    KIND_STATUS,
    KIND_TRADE,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_SUBSCRIBE_ERROR,
)
from fairfeed.hotpath import anomaly as a


def update_reference(records, n, sub_table, source_table, subs, provs, bursts, sub_bursts):
    """Plain-Python twin of ``update_nb``."""
    n_prov = provs.shape[0]
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
        market = kind in (KIND_TRADE, KIND_BID, KIND_ASK)
        derivs = kind in (KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_OPEN_INTEREST)
        if market or (derivs and prov < n_prov and provs[prov]["derivs_data"]):
            if inst >= sub_table.shape[0] or src < 0 or sub_table[inst, src] < 0:
                ignored += 1
                continue
            k = int(sub_table[inst, src])
            s = subs[k]
            if s["last_data"] > 0:
                gap = ts - max(int(s["last_data"]), int(s["quiet_from"]))
                s["gap_max"] = max(int(s["gap_max"]), gap)
            s["last_data"] = ts
            s["count"] += 1
            if prov < n_prov:
                provs[prov]["last_alive"] = max(int(provs[prov]["last_alive"]), ts)
            tex, tpr = int(rec["ts_exchange"]), int(rec["ts_provider"])
            samples = []
            if tex > 0 and tpr > 0:
                samples.append(("ep_max", "ep_min", "n_ep", tpr - tex))
            base = tpr if tpr > 0 else tex
            if base > 0 and ts > 0:
                samples.append(("loc_max", "loc_min", "n_loc", ts - base))
            for hi, lo, cnt, lat in samples:
                first = s[cnt] == 0
                s[hi] = lat if first else max(int(s[hi]), lat)
                s[lo] = lat if first else min(int(s[lo]), lat)
                s[cnt] += 1
            price = float(rec["price"])
            if market and math.isfinite(price):
                f = subs[k]
                if kind == KIND_TRADE:
                    f["price"] = price
                else:
                    f["bid" if kind == KIND_BID else "ask"] = price
                    if not (math.isnan(f["bid"]) or math.isnan(f["ask"])):
                        f["price"] = (f["bid"] + f["ask"]) * 0.5
        elif kind == KIND_HEARTBEAT and prov < n_prov:
            p = provs[prov]
            p["last_hb"] = ts
            p["hb_seen"] = 1
            p["last_alive"] = max(int(p["last_alive"]), ts)
        elif kind == KIND_STATUS and prov < n_prov:
            p = provs[prov]
            code = int(rec["flags"])
            if code == STATUS_CONNECTED:
                if p["down_since"] > 0 and p["blip_start"] == 0:
                    p["blip_start"] = p["down_since"]
                    p["blip_end"] = ts
                    p["blip_reason"] = p["down_reason"]
                p["down_since"] = p["down_reason"] = 0
                p["last_alive"] = max(int(p["last_alive"]), ts)
            elif code in (STATUS_DISCONNECTED, STATUS_SUBSCRIBE_ERROR):
                reason = (
                    a.REASON_DISCONNECTED
                    if code == STATUS_DISCONNECTED
                    else a.REASON_SUBSCRIBE_ERROR
                )
                if p["down_since"] == 0:
                    p["down_since"] = max(ts, 1)
                    p["down_reason"] = reason
                elif reason == a.REASON_SUBSCRIBE_ERROR:
                    p["down_reason"] = reason
            else:
                ignored += 1
                continue
            p["status"] = code
        elif kind == KIND_GAP and src >= 0:
            k = int(sub_table[inst, src]) if inst < sub_table.shape[0] else -1
            b = sub_bursts[k] if k >= 0 else bursts[src]
            b["count"] += 1
            b["missed"] += int(max(float(rec["size"]), 0.0))
            if b["first"] == 0:
                b["first"] = max(ts, 1)
            b["last"] = max(ts, 1)
        else:
            ignored += 1
    return ignored


_THR_COL = {
    a.D_NO_DATA: ("no_data", 1e-9),
    a.D_NO_FIRST: ("first_data", 1e-9),
    a.D_DIVERGENCE: ("div", 1.0),
    a.D_LAT_EX: ("lat_ex", 1e-6),
    a.D_LAT_LOCAL: ("lat_local", 1e-6),
    a.D_SKEW: ("skew", 1e-6),
    a.D_RATE: ("rate_ratio", 1.0),
}
_NEED = {
    a.D_NO_DATA: "no_data",
    a.D_NO_FIRST: "first_data",
    a.D_DIVERGENCE: "div_for",
    a.D_RATE: "rate_for",
    a.D_LAT_EX: "lat_for",
    a.D_LAT_LOCAL: "lat_for",
    a.D_SKEW: "lat_for",
}


class _Out:
    def __init__(self, ev_i, ev_f, misc):
        self.rows: list[tuple[list[int], list[float]]] = []
        self.cap = ev_i.shape[0]
        self.ev_i, self.ev_f, self.misc = ev_i, ev_f, misc

    def room(self, n: int = 1) -> bool:
        if len(self.rows) + n > self.cap:
            self.misc["deferred"] += 1
            return False
        return True

    def emit(self, kind, phase, level, prov, venue, cls, inst, start, end, now, count, vals, thr):
        m = len(self.rows)
        self.ev_i[m] = [kind, phase, level, prov, venue, cls, inst, start, end, now, count, -1, -1]
        self.ev_f[m] = [*vals, thr]
        self.rows.append((list(self.ev_i[m]), list(self.ev_f[m])))


def _chernoff(n: float, mu: float) -> float:
    """G with P(N <= n), P(N >= n) <= exp(-G) for N ~ Poisson(mu) (n below, above mu)."""
    if mu <= 0:
        return 0.0
    return mu if n <= 0 else mu - n + n * math.log(n / mu)


def _no_data_limit(t, s) -> float:
    """Fixed, or factor x the decaying longest gap within [floor, cap] (learning this one)."""
    if t["nd_factor"] <= 0:
        return float(t["no_data"])

    def limit():
        if s["gap_n"] < a.ND_WARMUP:
            return t["nd_cap"]
        return min(max(t["nd_factor"] * s["gap_hi"], t["nd_floor"]), t["nd_cap"])

    lim = limit()
    if s["gap_max"] > 0:
        s["gap_hi"] = max(min(float(s["gap_max"]), lim), s["gap_hi"] * a.ND_DECAY)
        s["gap_n"] += 1
        lim = limit()
    return float(lim)


def _rate(now, dt, t, sig, s, onset, active, meas, k, base, quiet, gone) -> None:
    """The rate-drop window test (docs/anomalies.md)."""
    d = a.D_RATE

    def new_window():
        s["rd_from"], s["rd_n"], s["rd_mu"] = now, 0, 0.0

    start = int(s["rd_from"])
    if gone:  # no_data's silence: an open drop stays open, the window starts afresh
        if not active[k, d]:
            onset[k, d] = 0
        new_window()
        return
    if quiet:
        return
    if base < t["rate_floor"]:  # illiquid: no window
        onset[k, d] = active[k, d] = 0
        s["rd_from"], s["rd_n"], s["rd_mu"] = 0, 0, 0.0
        return
    if start == 0 or start < s["quiet_from"]:
        onset[k, d] = active[k, d] = 0
        new_window()
        return
    if dt <= 0 or now <= start:
        return
    s["rd_n"] += s["count"]
    s["rd_mu"] += base * dt / 1e9
    n, mu = int(s["rd_n"]), float(s["rd_mu"])
    meas[k, d, 0] = n * 1e9 / (now - start)
    if active[k, d]:
        lo = t["rate_clear"] * mu
        if n <= lo:
            new_window()
        elif _chernoff(n, lo) >= sig:
            onset[k, d] = active[k, d] = 0
            new_window()
    elif n >= t["rate_ratio"] * mu:
        onset[k, d] = 0
        new_window()
    elif _chernoff(n, mu) >= sig:
        onset[k, d] = start
        if now - start >= t["rate_for"]:
            active[k, d] = 1
            new_window()
    else:
        onset[k, d] = 0


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


def evaluate_reference(now, thr, glob, layout, st, ring_dropped, fair, ev_i, ev_f):
    """Plain-Python twin of ``evaluate_nb``."""
    sub_meta, sub_groups, group_meta, group_size, src_meta, in_offsets, in_subs = layout
    subs, provs, bursts, sub_bursts, onset, active, sub_open, meas, group_open, spreads, clock = st
    misc = clock[0]
    out = _Out(ev_i, ev_f, misc)
    n_sub = sub_meta.shape[0]
    n_prov = provs.shape[0]
    last = int(misc["last_eval"])
    dt = now - last if last > 0 else 0
    misc["last_eval"] = now
    hb_timeout = float(glob.hb_timeout)
    hb_s = hb_timeout / 1e9

    down = set()
    for p in range(n_prov):
        st = provs[p]
        reason = int(st["down_reason"]) if st["down_since"] > 0 else 0
        since = int(st["down_since"])
        if reason == 0 and st["hb_seen"] and now - st["last_alive"] > hb_timeout:
            reason, since = a.REASON_HEARTBEAT, int(st["last_alive"])
        silent_s = (now - int(st["last_alive"])) / 1e9
        opened = int(st["open"])
        if opened and reason == 0:
            if not out.room():
                down.add(p)
                continue
            end = int(st["blip_end"]) if st["blip_start"] > 0 else now
            out.emit(a.A_DISCONNECT, a.PHASE_END, a.LV_PROVIDER, p, -1, -1, -1, opened,
                     max(end, opened), now, 0, (st["open_reason"], silent_s, 0.0),
                     hb_s)  # fmt: skip
            for col in ("open", "open_reason", "blip_start", "blip_end"):
                st[col] = 0
        elif opened:
            down.add(p)
            st["blip_start"] = 0
        elif reason:
            if out.room():
                since = max(since, 1)
                out.emit(a.A_DISCONNECT, a.PHASE_START, a.LV_PROVIDER, p, -1, -1, -1, since, 0,
                         now, 0, (reason, silent_s, 0.0), hb_s)  # fmt: skip
                st["open"], st["open_reason"] = since, reason
            down.add(p)
            st["blip_start"] = 0
        elif st["blip_start"] > 0:
            if not out.room(2):
                continue
            bs, br = int(st["blip_start"]), int(st["blip_reason"])
            be = max(int(st["blip_end"]), bs)
            for phase, end in ((a.PHASE_START, 0), (a.PHASE_END, be)):
                out.emit(a.A_DISCONNECT, phase, a.LV_PROVIDER, p, -1, -1, -1, bs, end, now, 0,
                         (br, 0.0, 0.0), hb_s)  # fmt: skip
            st["blip_start"] = st["blip_end"] = 0

    _pairs_reference(now, thr, sub_meta, in_offsets, in_subs, subs, fair, down, spreads, out)

    a_base = 1.0 - math.exp(-dt / glob.rate_base) if dt > 0 else 0.0
    lc = float(glob.lat_clear)
    for k in range(n_sub):
        p = int(sub_meta[k]["provider"])
        si = sf = subs[k]
        t = thr[k]
        if p in down:
            si["quiet_from"] = now
            onset[k, :] = 0
            active[k, :] = 0
        else:
            last_data = int(si["last_data"])
            t0 = max(last_data, int(si["quiet_from"]))
            silent = now - t0
            d_on, d_off = (a.D_NO_DATA, a.D_NO_FIRST) if last_data else (a.D_NO_FIRST, a.D_NO_DATA)
            lim = _no_data_limit(t, si) if last_data else t["first_data"]
            proven = True
            if last_data and p < n_prov and provs[p]["hb_seen"]:
                proven = provs[p]["last_hb"] - t0 > lim * 0.5
            onset[k, d_on] = t0 if silent >= lim * 0.5 else 0
            active[k, d_on] = int(silent >= lim and proven)
            meas[k, d_on, 0] = silent / 1e9
            if last_data:
                meas[k, d_on, 1] = lim / 1e9
            onset[k, d_off] = active[k, d_off] = 0
            nodata = onset[k, a.D_NO_DATA] > 0 or onset[k, a.D_NO_FIRST] > 0
            lim_q = min(lim, t["rate_for"]) if last_data else 0.0
            quiet, gone = nodata or silent >= lim_q * 0.5, silent >= lim_q

            price = sf["price"]
            f = sf["ref"]
            fresh = last_data > 0 and now - last_data < t["no_data"]
            if fresh and not math.isnan(price) and not math.isnan(f) and f > 0:
                dev = price / f - 1.0
                meas[k, a.D_DIVERGENCE] = (dev, price, f)
                _step(onset, active, a.D_DIVERGENCE, k, now, abs(dev) > t["div"],
                      abs(dev) > t["div_clear"], t["div_for"])  # fmt: skip
            else:
                _step(onset, active, a.D_DIVERGENCE, k, now, False, False, t["div_for"])
            lows = []
            for n_col, hi_col, lo_col, d, tcol in (
                ("n_ep", "ep_max", "ep_min", a.D_LAT_EX, "lat_ex"),
                ("n_loc", "loc_max", "loc_min", a.D_LAT_LOCAL, "lat_local"),
            ):
                if si[n_col] > 0:
                    lat = int(si[hi_col])
                    meas[k, d, 0] = lat / 1e6
                    _step(onset, active, d, k, now, lat > t[tcol], lat > t[tcol] * lc,
                          t["lat_for"])  # fmt: skip
                    lows.append(int(si[lo_col]))
            if lows:
                lo = min(lows)
                meas[k, a.D_SKEW, 0] = lo / 1e6
                _step(onset, active, a.D_SKEW, k, now, lo < -t["skew"], lo < -t["skew"] * lc,
                      t["lat_for"])  # fmt: skip
            if (dt > 0 and last_data > 0 and not quiet and onset[k, a.D_RATE] == 0
                    and active[k, a.D_RATE] == 0):  # fmt: skip
                c, dt_s = float(si["count"]), dt / 1e9
                sf["base"] += a_base * (c / dt_s - sf["base"])
                sf["base_sq"] += a_base * (c * c / dt_s - sf["base_sq"])
                sf["base_w"] += a_base * (1.0 - sf["base_w"])
            base = sf["base"] / sf["base_w"] if sf["base_w"] > 0 else 0.0
            disp = 1.0  # variance / mean of the counts
            if base > 0:
                disp = max(1.0, (sf["base_sq"] / sf["base_w"] - base * base * dt / 1e9) / base)
            meas[k, a.D_RATE, 1] = base
            _rate(now, dt, t, glob.rate_sig * disp, si, onset, active, meas, k, base, quiet, gone)
        si["count"] = si["gap_max"] = si["n_ep"] = si["n_loc"] = 0

    m0 = len(out.rows)
    members: dict[int, list[int]] = {}
    for k in range(n_sub):
        for lv in range(a.N_GROUP_LEVELS):
            members.setdefault(int(sub_groups[k, lv]), []).append(k)
    for d in range(a.N_DET):
        kind = int(a.DET_KINDS[d])
        tcol, scale = _THR_COL[d]

        def shown(k, d=d, tcol=tcol, scale=scale):  # no data: the threshold in use
            return meas[k, d, 1] if d == a.D_NO_DATA else thr[k][tcol] * scale

        def pre(k, d=d):
            if active[k, d]:
                return True
            if onset[k, d] <= 0:
                return False
            return d <= a.D_NO_FIRST or now - onset[k, d] >= thr[k][_NEED[d]] * 0.5

        covered = {k for k in range(n_sub)
                   if int(sub_meta[k]["provider"]) in down or sub_open[k, d] > 0}  # fmt: skip
        for lv in range(a.N_GROUP_LEVELS):
            for g in range(group_size.shape[0]):
                if group_meta[g]["level"] != lv + 1 or (group_size[g] < 2 and not group_open[d, g]):
                    continue
                ks = members.get(g, [])
                b = ks[0] if ks else -1
                for k in ks:
                    if abs(meas[k, d, 0]) > abs(meas[b, d, 0]):
                        b = k
                vals = tuple(meas[b, d]) if ks else (0.0, 0.0, 0.0)
                group_thr = shown(b) if ks else np.nan
                level, gid = int(group_meta[g]["level"]), int(group_meta[g]["id"])
                subject = [gid if level == x else -1 for x in (1, 2, 3, 4)]
                all_pre = bool(ks) and all(pre(k) for k in ks)  # an emptied group closes
                if group_open[d, g] > 0:
                    if not all_pre and out.room():
                        out.emit(kind, a.PHASE_END, level, *subject, int(group_open[d, g]), now,
                                 now, len(ks), vals, group_thr)  # fmt: skip
                        group_open[d, g] = 0
                        for k in ks:
                            if d <= a.D_NO_FIRST:
                                subs[k]["quiet_from"] = now
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
            subject = list(sub_meta[k].tolist()[:4])
            vals = tuple(meas[k, d])
            if sub_open[k, d] > 0:
                if not active[k, d] and out.room():
                    out.emit(kind, a.PHASE_END, a.LV_SUB, *subject, int(sub_open[k, d]), now, now,
                             1, vals, shown(k))  # fmt: skip
                    sub_open[k, d] = 0
            elif active[k, d] and k not in covered and out.room():
                start = int(onset[k, d]) or now
                out.emit(kind, a.PHASE_START, a.LV_SUB, *subject, start, 0, now, 1, vals,
                         shown(k))  # fmt: skip
                sub_open[k, d] = start

    for e in range(m0, len(out.rows)):  # a subscription's divergence rows name its peer
        row = ev_i[e]
        if row[a.E_KIND] != a.A_DIVERGENCE or row[a.E_LEVEL] != a.LV_SUB:
            continue
        i = int(row[a.E_INSTRUMENT])
        for k in in_subs[in_offsets[i] : in_offsets[i + 1]]:
            sm = sub_meta[k]
            if (sm["provider"], sm["venue"]) == (row[a.E_PROVIDER], row[a.E_VENUE]):
                q = int(subs[k]["peer"])
                if q >= 0:
                    row[a.E_PEER_PROVIDER] = sub_meta[q]["provider"]
                    row[a.E_PEER_VENUE] = sub_meta[q]["venue"]
                break

    quiet = float(glob.gap_quiet)
    n_src = src_meta.shape[0]
    _gaps_reference(now, last, quiet, bursts, sub_bursts, sub_meta, src_meta, out)
    for r, total in enumerate(ring_dropped):
        b = bursts[n_src + r]
        if total > b["count"]:
            b["missed"] += int(total) - int(b["count"])
            b["count"] = total
            if b["first"] == 0:
                b["first"] = now
            b["last"] = now
        _episode(b, now, quiet, out, a.A_RING_OVERFLOW, a.LV_RING, (-1, -1, -1, -1), r)
    return len(out.rows)


def _episode(b, now, quiet, out, kind, level, subject, count) -> None:
    """A burst's start or end event, if due (twin of the kernels' burst episodes)."""
    vals = (b["count"] - b["base_count"], b["missed"] - b["base_missed"], 0.0)
    if b["open"] > 0:
        if now - b["last"] >= quiet and out.room():
            out.emit(kind, a.PHASE_END, level, *subject, int(b["open"]), int(b["last"]), now,
                     count, vals, quiet / 1e9)  # fmt: skip
            b["open"] = b["first"] = 0
            b["base_count"], b["base_missed"] = b["count"], b["missed"]
            return
    elif b["count"] > b["base_count"] and out.room():
        out.emit(kind, a.PHASE_START, level, *subject, int(b["first"]), 0, now, count, vals,
                 quiet / 1e9)  # fmt: skip
        b["open"] = b["first"]


def _gaps_reference(now, last, quiet, bursts, sub_bursts, sub_meta, src_meta, out) -> None:
    """Twin of ``anomaly._gaps``."""

    def pending(b):
        return b["open"] == 0 and b["count"] > b["base_count"]

    members: dict[int, list[int]] = {}
    for k in range(len(sub_meta)):
        members.setdefault(int(sub_meta[k]["source"]), []).append(k)
    for s in range(len(src_meta)):
        mine = members.get(s, [])
        src = bursts[s]
        waiting = [k for k in mine if pending(sub_bursts[k])]
        if src["open"] > 0 or len(waiting) >= 2 or src["count"] > src["base_count"]:
            for k in waiting:
                kb = sub_bursts[k]
                src["count"] += kb["count"] - kb["base_count"]
                src["missed"] += kb["missed"] - kb["base_missed"]
                src["first"] = kb["first"] if src["first"] == 0 else min(src["first"], kb["first"])
                src["last"] = max(src["last"], kb["last"])
                kb["base_count"], kb["base_missed"], kb["first"] = kb["count"], kb["missed"], 0
                if not kb["covered"]:
                    kb["covered"] = 1
                    src["covered"] += 1
    for s in range(len(src_meta)):
        src = bursts[s]
        was_open = src["open"] > 0
        subject = (int(src_meta[s]["provider"]), int(src_meta[s]["venue"]), -1, -1)
        _episode(src, now, quiet, out, a.A_GAP, a.LV_SOURCE, subject, int(src["covered"]))
        if was_open and src["open"] == 0:
            src["covered"] = 0
            for k in members.get(s, []):
                sub_bursts[k]["covered"] = 0
    for k in range(len(sub_meta)):
        if pending(sub_bursts[k]) and sub_bursts[k]["first"] > last:
            continue  # seen since the last evaluation: held for the next one
        sm = sub_meta[k]
        subject = (int(sm["provider"]), int(sm["venue"]), int(sm["data_class"]),
                   int(sm["instrument"]))  # fmt: skip
        _episode(sub_bursts[k], now, quiet, out, a.A_GAP, a.LV_SUB, subject, 1)


def _pairs_reference(now, thr, sub_meta, in_offsets, in_subs, subs, fair, down, spreads, out):
    """Twin of ``anomaly._pairs``: divergence references and the two-source pair episodes."""
    for i in range(len(in_offsets) - 1):
        ks = [int(k) for k in in_subs[in_offsets[i] : in_offsets[i + 1]]]
        if not ks:
            continue

        def fresh(k):
            lim, ld = thr[k]["no_data"], int(subs[k]["last_data"])
            return (int(sub_meta[k]["provider"]) not in down and not math.isinf(lim)
                    and ld > 0 and now - ld < lim and subs[k]["price"] > 0)  # fmt: skip

        live = [k for k in ks if fresh(k)]
        for k in ks:
            subs[k]["peer"] = -1
        prices = [float(subs[k]["price"]) for k in live]
        k_hi = k_lo = -1
        for k in live:  # ties: the last highest, the first lowest (as the kernel)
            if k_hi < 0 or subs[k]["price"] >= subs[k_hi]["price"]:
                k_hi = k
            if k_lo < 0 or subs[k]["price"] < subs[k_lo]["price"]:
                k_lo = k
        if len(live) >= 3:
            med = float(np.median(prices))
            for k in ks:
                subs[k]["ref"] = med
            for k in live:
                q = k_lo if subs[k]["price"] >= med else k_hi
                subs[k]["peer"] = k_hi if q == k else q
        else:
            r = float(fair[i]) if len(live) <= 1 and i < len(fair) else math.nan
            for k in ks:
                subs[k]["ref"] = r
        sp = spreads[i]
        k0 = k_hi if len(live) == 2 else int(sp["k_hi"])
        bo = bc = False
        if len(live) == 2:
            hi, lo = float(subs[k_hi]["price"]), float(subs[k_lo]["price"])
            spread = hi / lo - 1.0
            bo, bc = spread > thr[k0]["div"], spread > thr[k0]["div_clear"]
            sp["spread"], sp["lo"], sp["hi"], sp["k_hi"], sp["k_lo"] = spread, lo, hi, k_hi, k_lo
        if sp["active"]:
            if not bc:
                sp["onset"] = sp["active"] = 0
        elif bo:
            if sp["onset"] == 0:
                sp["onset"] = now
            if now - sp["onset"] >= thr[k0]["div_for"]:
                sp["active"] = 1
        else:
            sp["onset"] = 0
    _pair_episodes_reference(now, thr, sub_meta, spreads, out)


def _pair_episodes_reference(now, thr, sub_meta, spreads, out):
    """Twin of ``anomaly._pair_episodes``: own and source-pair episodes."""

    def pre(sp):
        return sp["active"] == 1 or (
            sp["onset"] > 0 and now - sp["onset"] >= thr[int(sp["k_hi"])]["div_for"] / 2
        )

    def src(k):
        return int(sub_meta[int(k)]["source"])

    def key(sp):
        return (src(sp["k_hi"]), src(sp["k_lo"]))

    def prices(sp, k_subject):
        same = src(sp["k_hi"]) == src(k_subject)
        return (sp["hi"], sp["lo"]) if same else (sp["lo"], sp["hi"])

    def emit(phase, k_subject, k_peer, inst, start, end, count, vals):
        sa, sb = sub_meta[int(k_subject)], sub_meta[int(k_peer)]
        cls = int(sa["data_class"]) if inst >= 0 else -1
        out.emit(a.A_DIVERGENCE, phase, a.LV_PAIR, int(sa["provider"]), int(sa["venue"]), cls,
                 inst, int(start), int(end), now, count, vals,
                 thr[int(k_subject)]["div"])  # fmt: skip
        row = out.ev_i[len(out.rows) - 1]
        row[a.E_PEER_PROVIDER], row[a.E_PEER_VENUE] = sb["provider"], sb["venue"]
        out.rows[-1] = (list(row), out.rows[-1][1])

    rows = range(len(spreads))
    for i in rows:
        sp = spreads[i]
        g = int(sp["group"]) - 1
        if g >= 0 and not pre(sp):
            lead = spreads[g]
            lead["g_n"] -= 1
            lead["g_spread"] = sp["spread"]
            lead["g_phi"], lead["g_plo"] = prices(sp, lead["g_hi"])
            sp["group"] = sp["open"] = 0
    for g in rows:
        lead = spreads[g]
        if lead["g_open"] > 0 and lead["g_n"] == 0 and out.room():
            emit(
                a.PHASE_END,
                lead["g_hi"],
                lead["g_lo"],
                -1,
                lead["g_open"],
                now,
                2 * int(lead["g_count"]),
                (lead["g_spread"], lead["g_phi"], lead["g_plo"]),
            )
            lead["g_open"] = 0
    held = {key({"k_hi": spreads[g]["g_hi"], "k_lo": spreads[g]["g_lo"]}): g
            for g in rows if spreads[g]["g_open"] > 0}  # fmt: skip
    waiting: dict[tuple[int, int], list[int]] = {}
    for i in rows:
        sp = spreads[i]
        if sp["group"] != 0 or sp["open"] != 0 or not pre(sp):
            continue
        if key(sp) in held:
            g = held[key(sp)]
            sp["group"], sp["open"] = g + 1, spreads[g]["g_open"]
            spreads[g]["g_n"] += 1
            spreads[g]["g_count"] += 1
        else:
            waiting.setdefault(key(sp), []).append(i)
    leads = []  # (the instrument holding it, its candidates), in the order of the former
    for members in waiting.values():
        if len(members) < 2 or not any(spreads[j]["active"] for j in members):
            continue
        lead_i = next((j for j in members if spreads[j]["g_open"] == 0), None)
        if lead_i is not None:
            leads.append((lead_i, [j for j in members if j >= lead_i]))
    for lead_i, members in sorted(leads):
        if not out.room():
            continue
        start = min(int(spreads[j]["onset"]) for j in members)
        widest = max(members, key=lambda j: (spreads[j]["spread"], -j))
        lead = spreads[lead_i]
        for j in members:
            spreads[j]["group"], spreads[j]["open"] = lead_i + 1, start
        lead["g_open"], lead["g_n"], lead["g_count"] = start, len(members), len(members)
        lead["g_hi"], lead["g_lo"] = lead["k_hi"], lead["k_lo"]
        emit(
            a.PHASE_START,
            lead["k_hi"],
            lead["k_lo"],
            -1,
            start,
            0,
            2 * len(members),
            (spreads[widest]["spread"], *prices(spreads[widest], lead["k_hi"])),
        )
    for i in rows:
        sp = spreads[i]
        if sp["group"] != 0:
            continue
        if sp["open"] > 0 and sp["active"] == 0:
            phase, start, end = a.PHASE_END, int(sp["open"]), now
        elif sp["open"] == 0 and sp["active"] == 1:
            phase, start, end = a.PHASE_START, int(sp["onset"]), 0
        else:
            continue
        if not out.room():
            continue
        if phase == a.PHASE_START:  # the end names the start's sources, in its order
            sp["s_hi"], sp["s_lo"] = sp["k_hi"], sp["k_lo"]
        emit(
            phase, sp["s_hi"], sp["s_lo"], i, start, end, 2, (sp["spread"], *prices(sp, sp["s_hi"]))
        )
        sp["open"] = 0 if phase == a.PHASE_END else start
