"""Kafka message encoding: RECORD_DTYPE batches → columnar JSON messages, without a Python
object per record.

Ticks: a batch is grouped by (instrument, provider, venue) with one stable argsort on a packed
64-bit key; each group becomes one message keyed by the instrument name, whose value holds the
group's columns as JSON arrays (``orjson`` serializes the contiguous numpy slices directly).
Order inside a group is the order in the batch, and groups of one instrument are emitted in
batch order, so per-instrument order holds end to end (same key → same partition).

Derivatives (mark, index, funding, open interest, liquidations): grouped and columnar as ticks,
on a topic of their own, with their own columns.

Fair prices: one message per output, keyed by instrument, with how it was made (method, sources
and venues used, excluded sources and why, dispersion, oldest input age, status).

The wire format is documented in ``docs/kafka-schema.md``; :data:`SCHEMA_VERSION` changes only
for breaking changes (added fields keep it).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from fairfeed.core.records import CLASS_CODES, CLASS_NAMES, KIND_FUNDING, RECORD_DTYPE
from fairfeed.core.registry import Registry
from fairfeed.hotpath import anomaly as an
from fairfeed.hotpath.fairmethods import (
    FAIR_STATUS_NAMES,
    REASON_NAMES,
    REASON_OUTLIER,
    REASON_STALE,
)

SCHEMA_VERSION = 1

# Columns published for each tick, in value order; all other record fields (flags, reserved)
# are internal and not published.
TICK_COLUMNS: tuple[str, ...] = (
    "kind",
    "price",
    "size",
    "side",
    "sequence",
    "ts_exchange",
    "ts_provider",
    "ts_receive",
)

# Columns of a derivatives message (docs/kafka-schema.md, `derivatives`): the record's fields
# but `sequence` (derivatives data carries none), plus the next funding time of a funding record.
DERIVATIVE_COLUMNS: tuple[str, ...] = (
    "kind",
    "price",
    "size",
    "side",
    "ts_exchange",
    "ts_provider",
    "ts_receive",
    "next_funding_time",
)
_NS = np.int64(1_000_000_000)

# A ticks value stays well under Kafka's default 1 MB message limit: about 100 bytes of JSON
# per tick, so at most ~400 kB. Larger groups are split into consecutive messages, in order.
DEFAULT_MAX_RECORDS = 4096

_OPTS = orjson.OPT_SERIALIZE_NUMPY
# The record's instrument (u32), provider (u16) and venue (u16) as one little-endian uint64.
_GROUP_VIEW = np.dtype(
    {"names": ["group"], "formats": ["<u8"], "offsets": [RECORD_DTYPE.fields["instrument"][1]],
     "itemsize": RECORD_DTYPE.itemsize}
)  # fmt: skip
assert (
    RECORD_DTYPE.fields["provider"][1] == RECORD_DTYPE.fields["instrument"][1] + 4
    and RECORD_DTYPE.fields["venue"][1] == RECORD_DTYPE.fields["instrument"][1] + 6
), "the group view needs instrument, provider, venue adjacent"
_U16, _U32, _U48 = np.uint64(16), np.uint64(32), np.uint64(48)
_PROVIDER_BITS = np.uint64(0xFFFF << 16)

Message = tuple[bytes, bytes]  # (key, value)
# (batch, its group order or None, column names) -> the columns' arrays in that order
_Columns = Callable[[np.ndarray, np.ndarray | None, tuple[str, ...]], list[np.ndarray]]


class TickEncoder:
    """Encoder bound to one registry (names are looked up and encoded once per id)."""

    def __init__(self, registry: Registry, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self.registry = registry
        self.max_records = max_records
        self._keys = [name.encode() for name in registry.instruments]
        # (message type, group key, data class) -> JSON head
        self._heads: dict[tuple[str, int, int], bytes] = {}
        self._source_names: list[str] = []  # "provider/venue" per source id, built when needed
        self.counts: list[int] = []  # records per message of the last ticks() / derivatives()

    def refresh(self) -> None:
        """Pick up instruments the registry gained since."""
        self._keys = [name.encode() for name in self.registry.instruments]

    def key(self, instrument: int) -> bytes:
        return self._keys[instrument]

    # -- ticks -------------------------------------------------------------------------------
    def ticks(self, batch: np.ndarray) -> list[Message]:
        """One ``(key, value)`` per (instrument, provider, venue) group of ``batch``."""
        return self._grouped(batch, "ticks", TICK_COLUMNS, _record_columns)

    def derivatives(self, batch: np.ndarray) -> list[Message]:
        """Derivatives records (kinds ``DERIVATIVE_KINDS``) as ticks are: one ``(key, value)``
        per (instrument, provider, venue) group, type ``"derivatives"``, the columns
        ``DERIVATIVE_COLUMNS`` (``next_funding_time``: ns, from a funding record's
        ``reserved`` seconds; 0 on other kinds)."""
        return self._grouped(batch, "derivatives", DERIVATIVE_COLUMNS, _derivative_columns)

    def _grouped(
        self, batch: np.ndarray, kind: str, names: tuple[str, ...], columns: _Columns
    ) -> list[Message]:
        """Messages of type ``kind``: ``columns(ordered batch)`` gives the arrays of ``names``."""
        n = len(batch)
        if n == 0:
            self.counts = []
            return []
        if batch.dtype != RECORD_DTYPE:
            raise TypeError(f"expected RECORD_DTYPE records, got {batch.dtype}")
        # instrument, provider and venue are 8 adjacent bytes of a record: read as one uint64
        # they are the group key as they are (a view, no arithmetic)
        key = batch.view(_GROUP_VIEW)["group"]
        if n == 1 or not np.any(key[1:] != key[:-1]):
            order = None  # one group: no gather needed
            skey = key
        else:
            # messages in (instrument, provider, venue) order: the view's key rearranged
            by = (key << _U32) | ((key >> _U16) & _PROVIDER_BITS) | (key >> _U48)
            order = np.argsort(by, kind="stable")
            skey = key[order]
        dclass = batch["data_class"] if order is None else batch["data_class"][order]
        # Group boundaries: where the key changes; a data class changing inside a group (it
        # should not: it belongs to the instrument) splits it too, so nothing is lost.
        change = (skey[1:] != skey[:-1]) | (dclass[1:] != dclass[:-1])
        starts = np.flatnonzero(change).tolist()
        starts = [0, *(i + 1 for i in starts), n]
        cols = columns(batch, order, names)
        out: list[Message] = []
        counts = self.counts = []
        step = self.max_records
        heads = self._heads
        groups = skey[starts[:-1]].tolist()
        classes = dclass[starts[:-1]].tolist()
        for g, k in enumerate(groups):
            a, end = starts[g], starts[g + 1]
            head = heads.get((kind, k, classes[g]))
            if head is None:
                head = heads[(kind, k, classes[g])] = self._head(kind, k, classes[g])
            kb = self._keys[k & 0xFFFFFFFF]
            while a < end:
                b = min(end, a + step)
                # the head's JSON ends with '"count":', the columns' object gives the rest
                body = orjson.dumps(dict(zip(names, [c[a:b] for c in cols], strict=True)),
                                    option=_OPTS)  # fmt: skip
                out.append((kb, b"".join((head, str(b - a).encode(), b",", body[1:]))))
                counts.append(b - a)
                a = b
        return out

    def _head(self, kind: str, key: int, data_class: int) -> bytes:
        """The JSON of a ``kind`` message up to its count, for group ``key`` (instrument in
        the low 32 bits, provider, venue) and ``data_class``."""
        reg = self.registry
        head: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "type": kind,
            "instrument": reg.instruments[key & 0xFFFFFFFF],
            "provider": reg.providers[(key >> 32) & 0xFFFF],
            "venue": reg.venues[key >> 48],
            "data_class": CLASS_NAMES.get(data_class, "unknown"),
        }
        return orjson.dumps(head)[:-1] + b',"count":'

    # -- fair prices -------------------------------------------------------------------------
    def fair(
        self,
        instruments: np.ndarray | Sequence[int],
        prices: np.ndarray | Sequence[float],
        sources: np.ndarray | Sequence[int],
        oldest_age_ns: np.ndarray | Sequence[int],
        ts: np.ndarray | Sequence[int] | int,
        method: str = "median",
        *,
        venues: np.ndarray | Sequence[int] | None = None,
        dispersion: np.ndarray | Sequence[float] | None = None,
        status: np.ndarray | Sequence[int] | None = None,
        reasons: np.ndarray | None = None,
        marks: np.ndarray | Sequence[int] | None = None,
        mark_reasons: np.ndarray | None = None,
    ) -> list[Message]:
        """One ``(key, value)`` per fair-price output (arrays of equal length; ``ts`` may be one
        timestamp for all).

        The methodology fields are written when given (the compute stage always gives them):
        ``venues``, ``dispersion``, ``status`` (codes of ``FAIR_STATUS_NAMES``) and ``reasons``
        (``[output, source]`` codes of ``REASON_NAMES``), published as ``excluded``: the sources
        left out as stale or outlier, ``{"source": "provider/venue", "reason": ...}``. With
        ``[fair] mark_inputs`` also ``marks`` (the mark prices among ``sources``) and
        ``mark_reasons`` (``[output, source]``, the sources' marks), in ``excluded`` with
        ``"input": "mark"`` after their source's own entry.
        """
        inst = np.asarray(instruments).tolist()
        n = len(inst)
        px = np.asarray(prices, dtype=np.float64).tolist()
        src = np.asarray(sources).tolist()
        age = np.asarray(oldest_age_ns).tolist()
        tsv = np.broadcast_to(np.asarray(ts, dtype=np.int64), (n,)).tolist()
        if not (len(px) == len(src) == len(age) == n):
            raise ValueError("fair-price arrays must have the same length")
        ven = None if venues is None else np.asarray(venues).tolist()
        disp = None if dispersion is None else np.asarray(dispersion, np.float64).tolist()
        stat = None if status is None else np.asarray(status).tolist()
        mk = None if marks is None else np.asarray(marks).tolist()
        excluded: list[list[dict[str, str]]] | None = None
        if reasons is not None:
            marked = None if mark_reasons is None else np.asarray(mark_reasons)[:n]
            excluded = self._excluded(np.asarray(reasons)[:n], marked)
        for extra in (ven, disp, stat, excluded, mk):
            if extra is not None and len(extra) != n:
                raise ValueError("fair-price arrays must have the same length")
        names = self.registry.instruments
        keys = self._keys
        out: list[Message] = []
        for i in range(n):
            p = px[i]
            msg: dict[str, Any] = {
                "schema": SCHEMA_VERSION,
                "type": "fair",
                "instrument": names[inst[i]],
                "price": _finite(p),
                "method": method,
                "sources": src[i],
                "oldest_age_ns": age[i],
                "ts": tsv[i],
            }
            if ven is not None:
                msg["venues"] = ven[i]
            if disp is not None:
                msg["dispersion"] = _finite(disp[i])
            if stat is not None:
                msg["status"] = FAIR_STATUS_NAMES.get(stat[i], "unknown")
            if mk is not None:
                msg["marks"] = mk[i]
            if excluded is not None:
                msg["excluded"] = excluded[i]
            out.append((keys[inst[i]], orjson.dumps(msg)))
        return out

    def _excluded(
        self, reasons: np.ndarray, mark_reasons: np.ndarray | None = None
    ) -> list[list[dict[str, str]]]:
        """Per output row, the sources (and their marks) excluded as stale or outlier, in
        source id order, a source's mark after the source."""
        rows: list[list[dict[str, str]]] = [[] for _ in range(len(reasons))]
        hits = []
        for mark, codes in enumerate((reasons, mark_reasons)):
            if codes is None or codes.ndim != 2:
                continue
            r = codes[:, : min(codes.shape[1], len(self.registry.sources))]
            hit_rows, hit_cols = np.nonzero((r == REASON_STALE) | (r == REASON_OUTLIER))
            hits += [(row, col, mark, int(r[row, col])) for row, col in
                     zip(hit_rows.tolist(), hit_cols.tolist(), strict=True)]  # fmt: skip
        if not hits:
            return rows
        if len(self._source_names) != len(self.registry.sources):
            reg = self.registry
            self._source_names = [reg.source_name(s) for s in range(len(reg.sources))]
        names = self._source_names
        for row, col, mark, code in sorted(hits):
            entry = {"source": names[col], "reason": REASON_NAMES[code]}
            if mark:
                entry["input"] = "mark"
            rows[row].append(entry)
        return rows


def _record_columns(batch: np.ndarray, order: np.ndarray | None, names: tuple[str, ...]) -> list:
    """The record fields ``names`` of ``batch`` in ``order`` (None: as they are), contiguous."""
    return [np.ascontiguousarray(batch[n] if order is None else batch[n][order]) for n in names]


def _derivative_columns(
    batch: np.ndarray, order: np.ndarray | None, names: tuple[str, ...]
) -> list:
    """``DERIVATIVE_COLUMNS``: record fields, and the next funding time in ns."""
    cols = _record_columns(batch, order, names[:-1])
    kind = cols[0]
    reserved = batch["reserved"] if order is None else batch["reserved"][order]
    cols.append(np.where(kind == KIND_FUNDING, reserved.astype(np.int64) * _NS, np.int64(0)))
    return cols


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def encode_ticks(
    batch: np.ndarray, registry: Registry, max_records: int = DEFAULT_MAX_RECORDS
) -> list[Message]:
    """Convenience wrapper around :meth:`TickEncoder.ticks` (build the encoder once in loops)."""
    return TickEncoder(registry, max_records).ticks(batch)


# -- decoding (tests, tools) -----------------------------------------------------------------
_COLUMN_DTYPES = {name: RECORD_DTYPE.fields[name][0] for name in TICK_COLUMNS}


def decode_ticks(value: bytes) -> dict[str, Any]:
    """Parse a ticks value: header fields as they are, tick columns as numpy arrays of the
    record dtypes (``null`` prices/sizes become NaN)."""
    return _decode_columns(value, "ticks", _COLUMN_DTYPES)


def _decode_columns(value: bytes, kind: str, dtypes: dict[str, np.dtype]) -> dict[str, Any]:
    """A columnar value of message type ``kind``: its columns as numpy arrays of ``dtypes``
    (``null`` floats become NaN), checked against its ``count``."""
    msg = orjson.loads(value)
    if msg.get("type") != kind:
        raise ValueError(f"not a {kind} message: type={msg.get('type')!r}")
    if msg.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"unsupported {kind} schema {msg.get('schema')!r}")
    for name, dtype in dtypes.items():
        msg[name] = np.array(msg[name], dtype=np.float64 if dtype.kind == "f" else dtype)
        if len(msg[name]) != msg["count"]:
            raise ValueError(f"column {name} has {len(msg[name])} values, count={msg['count']}")
    return msg


def ticks_to_records(msg: dict[str, Any], registry: Registry) -> np.ndarray:
    """RECORD_DTYPE array from a :func:`decode_ticks` result (ids from ``registry``; flags and
    reserved are zero)."""
    out = np.zeros(msg["count"], dtype=RECORD_DTYPE)
    out["instrument"] = registry.instrument_id(msg["instrument"])
    out["provider"] = registry.provider_id(msg["provider"])
    out["venue"] = registry.venue_id(msg["venue"])
    out["data_class"] = CLASS_CODES.get(msg["data_class"], 0)
    for name in TICK_COLUMNS:
        out[name] = msg[name]
    return out


def decode_ticks_records(value: bytes, registry: Registry) -> np.ndarray:
    """``ticks_to_records(decode_ticks(value), registry)``."""
    return ticks_to_records(decode_ticks(value), registry)


_DERIVATIVE_DTYPES = {
    **{n: RECORD_DTYPE.fields[n][0] for n in DERIVATIVE_COLUMNS[:-1]},
    "next_funding_time": np.dtype(np.int64),
}


def decode_derivatives(value: bytes) -> dict[str, Any]:
    """Parse a derivatives value as :func:`decode_ticks` does a ticks value."""
    return _decode_columns(value, "derivatives", _DERIVATIVE_DTYPES)


def decode_fair(value: bytes) -> dict[str, Any]:
    """Parse a fair-price value (a plain dict; ``null`` price becomes NaN)."""
    msg = orjson.loads(value)
    if msg.get("type") != "fair":
        raise ValueError(f"not a fair message: type={msg.get('type')!r}")
    if msg.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"unsupported fair schema {msg.get('schema')!r}")
    if msg["price"] is None:
        msg["price"] = float("nan")
    return msg


# -- dead letters ----------------------------------------------------------------------------
DEAD_LETTER_MAX_FRAME = 64 * 1024  # bytes of the frame kept in a dead letter


def encode_dead_letter(
    provider: str, error: str, frame: bytes, ts_receive: int, size: int | None = None
) -> bytes:
    """The dead-letter value for one malformed provider message (docs/kafka-schema.md).

    ``size``: the message's real size when ``frame`` is only its head (an oversized message
    is never held whole: the adapter keeps its first bytes, or none of a single frame).
    """
    kept = frame[:DEAD_LETTER_MAX_FRAME]
    real = len(frame) if size is None else max(size, len(frame))
    msg: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "type": "dead_letter",
        "provider": provider,
        "error": error,
        "ts_receive": ts_receive,
        "size": real,
        "truncated": len(kept) < real,
    }
    try:
        msg["frame"] = kept.decode()
    except UnicodeDecodeError:
        msg["frame_base64"] = base64.b64encode(kept).decode()
    return orjson.dumps(msg)


# -- anomalies ---------------------------------------------------------------------------
def _anomaly_values(kind: int, level: int, ef: list[float], count: int) -> dict[str, Any]:
    v0, v1, v2, _thr = ef
    if kind in (an.A_NO_DATA,):
        return {"silent_s": v0, "subscriptions": count}
    if kind == an.A_NO_FIRST_DATA:
        return {"waited_s": v0, "subscriptions": count}
    if kind == an.A_DIVERGENCE and level == an.LV_PAIR:
        return {"deviation": v0, "ratio": v1 / v2 if v2 else None, "price": v1, "peer_price": v2,
                "subscriptions": count}  # fmt: skip
    if kind == an.A_DIVERGENCE:
        return {"deviation": v0, "ratio": v0 + 1.0, "price": v1, "reference": v2,
                "subscriptions": count}  # fmt: skip
    if kind == an.A_VENUE_DIVERGENCE:
        return {"spread": v0, "low": v1, "high": v2, "subscriptions": count}
    if kind in (an.A_LATENCY_EXCHANGE, an.A_LATENCY_LOCAL, an.A_CLOCK_SKEW):
        return {"latency_ms": v0, "subscriptions": count}
    if kind == an.A_RATE_DROP:
        return {"rate": v0, "baseline": v1, "subscriptions": count}
    if kind == an.A_GAP:
        return {"gaps": int(v0), "missed": int(v1), "subscriptions": count}
    if kind == an.A_DISCONNECT:
        return {"reason": an.REASON_NAMES.get(int(v0), "unknown"), "silent_s": v1}
    if kind == an.A_RING_OVERFLOW:
        return {"ring": count, "dropped": int(v0)}
    return {}


def _divergence_sources(row_i: list[int], subject: dict, reg: Registry) -> dict[str, Any]:
    """A divergence's two sources: the subject's and its ``peer`` (null for a roll-up, whose
    instruments have different peers); the ``outlier`` is the subject unless the event is a
    two-source ``pair`` (no outlier can be told)."""
    pp, pv = row_i[an.E_PEER_PROVIDER], row_i[an.E_PEER_VENUE]
    peer = None
    if 0 <= pp < len(reg.providers) and 0 <= pv < len(reg.venues):
        peer = {"provider": reg.providers[pp], "venue": reg.venues[pv]}
    own = {"provider": subject["provider"], "venue": subject["venue"]}
    outlier = None if row_i[an.E_LEVEL] == an.LV_PAIR else own
    return {"source": own, "peer": peer, "outlier": outlier}


def encode_anomalies(
    ev_i: np.ndarray, ev_f: np.ndarray, registry: Registry
) -> list[tuple[bytes, bytes]]:
    """One ``(key, value)`` per event row; the key is the subject string
    (``provider/venue/data_class/instrument`` with ``*`` where not applicable; a ring overflow
    is keyed ``ring<N>``)."""
    out = []
    reg = registry
    for row_i, row_f in zip(ev_i.tolist(), ev_f.tolist(), strict=True):
        kind = row_i[an.E_KIND]
        p, v, c, i = (row_i[an.E_PROVIDER], row_i[an.E_VENUE], row_i[an.E_CLASS],
                      row_i[an.E_INSTRUMENT])  # fmt: skip
        subject = {
            "provider": reg.providers[p] if 0 <= p < len(reg.providers) else None,
            "venue": reg.venues[v] if 0 <= v < len(reg.venues) else None,
            "data_class": CLASS_NAMES.get(c) if c >= 0 else None,
            "instrument": reg.instruments[i] if 0 <= i < len(reg.instruments) else None,
        }
        if kind == an.A_RING_OVERFLOW:
            key = f"ring{row_i[an.E_COUNT]}"
        else:
            key = "/".join(x if x is not None else "*" for x in subject.values())
        end = row_i[an.E_END]
        value = {
            "schema": SCHEMA_VERSION,
            "type": "anomaly",
            "kind": an.KIND_NAMES.get(kind, str(kind)),
            "phase": "start" if row_i[an.E_PHASE] == an.PHASE_START else "end",
            "subject": subject,
            "level": LEVEL_NAMES.get(row_i[an.E_LEVEL], "?"),
            "start": row_i[an.E_START],
            "end": end if end else None,
            "detected": row_i[an.E_DETECTED],
            "values": _anomaly_values(kind, row_i[an.E_LEVEL], row_f, row_i[an.E_COUNT]),
            "threshold": row_f[3],
        }
        if kind == an.A_DIVERGENCE:
            value["values"].update(_divergence_sources(row_i, subject, reg))
        out.append((key.encode(), orjson.dumps(value)))
    return out


def encode_output_overflows(
    events: list[tuple[str, str, int, int, int, int]],
) -> list[tuple[bytes, bytes]]:
    """Anomaly events of the output spool's overflow episodes (``KafkaSink.overflow_events``):
    keyed ``output/<topic>``, kind ``output_overflow``, the records and messages dropped."""
    out = []
    for topic, phase, start, end, records, messages in events:
        value = {
            "schema": SCHEMA_VERSION,
            "type": "anomaly",
            "kind": OUTPUT_OVERFLOW,
            "phase": phase,
            "subject": {"topic": topic},
            "level": "output",
            "start": start,
            "end": end or None,
            "detected": end or start,
            "values": {"dropped_records": records, "dropped_messages": messages},
            "threshold": None,
        }
        out.append((f"output/{topic}".encode(), orjson.dumps(value)))
    return out


OUTPUT_OVERFLOW = "output_overflow"  # the anomaly kind of a full output spool

LEVEL_NAMES = {
    an.LV_SUB: "subscription",
    an.LV_PROVIDER: "provider",
    an.LV_VENUE: "venue",
    an.LV_CLASS: "data_class",
    an.LV_INSTRUMENT: "instrument",
    an.LV_SOURCE: "source",
    an.LV_VENUE_INSTRUMENT: "venue_instrument",
    an.LV_RING: "ring",
    an.LV_PAIR: "pair",
}


def decode_anomaly(value: bytes) -> dict[str, Any]:
    """Parse an anomaly value (tests, tools)."""
    msg = orjson.loads(value)
    if msg.get("type") != "anomaly" or msg.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"not an anomaly message of schema {SCHEMA_VERSION}: {msg!r:.200}")
    return msg
