"""The compute process's anomaly detector over live subscription changes."""

from __future__ import annotations

import numpy as np

from fairfeed.core.config import AnomalyConfig, loads
from fairfeed.core.records import (
    CLASS_CODES,
    KIND_HEARTBEAT,
    KIND_MARK,
    KIND_TRADE,
    NO_INSTRUMENT,
    RECORD_DTYPE,
)
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Stream
from fairfeed.daemon.anomalies import AnomalyDetector, global_row, threshold_row
from fairfeed.hotpath import anomaly as an
from fairfeed.kafka.encode import decode_anomaly, encode_anomalies

S = 1_000_000_000
T0 = 1_700_000_000 * S
CFG = loads("[anomalies]\nno_data_after = 2.0\nfirst_data_timeout = 2.0\n")
SPOT = CLASS_CODES["spot"]


def _records(reg: Registry, streams: list[tuple[str, str, str]], t: int) -> np.ndarray:
    """One trade per stream and one heartbeat per source, received at ``t``."""
    rows = []
    for p, v, inst in streams:
        rows.append((KIND_TRADE, reg.instrument_id(inst), reg.provider_id(p), reg.venue_id(v)))
    for p, v in reg.sources:  # ids
        rows.append((KIND_HEARTBEAT, NO_INSTRUMENT, p, v))
    r = np.zeros(len(rows), RECORD_DTYPE)
    for j, (kind, i, p, v) in enumerate(rows):
        r[j]["kind"], r[j]["instrument"], r[j]["provider"], r[j]["venue"] = kind, i, p, v
    r["ts_receive"], r["price"], r["size"] = t, 100.0, 1.0
    return r


def _run(det: AnomalyDetector, reg, streams, t0: int, t1: int) -> list[dict]:
    out, t = [], t0
    while t < t1:
        t += S // 4
        if streams:
            det.update(_records(reg, streams, t))
        rows = det.evaluate(t, np.full(len(reg.instruments), 100.0), np.zeros(1, np.int64))
        msgs = encode_anomalies(*rows, reg)
        out += [decode_anomaly(value) for _key, value in msgs]
    return out


def _subjects(events: list[dict]) -> list[tuple]:
    return [(e["kind"], e["phase"], e["subject"]["provider"], e["subject"]["instrument"])
            for e in events]  # fmt: skip


def test_a_live_subscribe_keeps_the_other_episodes_and_a_resubscribe_starts_afresh() -> None:
    reg = Registry.build([("BTC-USD", SPOT)], [("p0", "V0"), ("p1", "V1")], 64, 8)
    streams = [Stream("p0", "V0", "BTC-USD", "spot"), Stream("p1", "V1", "BTC-USD", "spot")]
    det = AnomalyDetector(CFG, reg, 1, T0, streams)
    both = [s.key for s in streams]
    assert _run(det, reg, both, T0, T0 + 3 * S) == []
    # p1 goes silent: its no-data episode opens
    ev = _run(det, reg, both[:1], T0 + 3 * S, T0 + 6 * S)
    assert _subjects(ev) == [("no_data", "start", "p1", "BTC-USD")]

    # a live subscribe of a new instrument while the episode is open
    reg.add_instrument("ETH-USD", SPOT)
    assert det.extend([Stream("p0", "V0", "ETH-USD", "spot")], T0 + 6 * S) == 1
    assert det.extend([Stream("p0", "V0", "ETH-USD", "spot")], T0 + 6 * S) == 0  # known already
    three = [*both, ("p0", "V0", "ETH-USD")]
    ev = _run(det, reg, [three[0], three[2]], T0 + 6 * S, T0 + 7 * S)
    assert ev == []  # no repeated start, nothing about the new stream
    ev = _run(det, reg, three, T0 + 7 * S, T0 + 8 * S)
    assert _subjects(ev) == [("no_data", "end", "p1", "BTC-USD")]
    assert det.open_count() == 0

    # unsubscribe p1, re-subscribe it much later: measured afresh, no stale no-data alarm
    det.disable(("p1", "V1", "BTC-USD"))
    rest = [three[0], three[2]]
    assert _run(det, reg, rest, T0 + 8 * S, T0 + 60 * S) == []
    assert det.enable(("p1", "V1", "BTC-USD"), T0 + 60 * S)
    assert _run(det, reg, rest, T0 + 60 * S, T0 + 61 * S) == []  # within first_data_timeout
    ev = _run(det, reg, rest, T0 + 61 * S, T0 + 63 * S)
    assert _subjects(ev) == [("no_first_data", "start", "p1", "BTC-USD")]


def test_kernel_defaults_are_the_configuration_defaults() -> None:
    """The kernel module's default rows (warm-up, tests, benches) must not drift from the
    configuration's defaults."""
    acfg = AnomalyConfig()
    assert np.array_equal(threshold_row(acfg, "spot", "BTC-USD"), an.default_thresholds())
    assert np.array_equal(global_row(acfg), an.default_globals())


def test_a_provider_streaming_derivatives_values_only_is_judged_by_them(monkeypatch) -> None:
    """A Kaiko provider with only `derivatives = true` sends marks, funding and open interest:
    they are its subscriptions' data. A Binance USD-M provider's marks are not (it streams
    trades: a dead trade stream must not hide behind its marks)."""
    monkeypatch.setenv("FAIRFEED_TEST_KAIKO_ANOMALY", "key")
    cfg = loads(
        "[anomalies]\nno_data_after = 2.0\nfirst_data_timeout = 2.0\n"
        '[[providers]]\nname = "k"\nkind = "kaiko"\nurl = "grpc://x:1"\n'
        'api_key_env = "FAIRFEED_TEST_KAIKO_ANOMALY"\n'
        "[providers.options]\ntrades = false\nquotes = false\nderivatives = true\n"
        '[[providers]]\nname = "b"\nkind = "binance"\nvenue = "BINANCE"\nurl = "ws://x"\n'
        '[providers.options]\nmarket = "usdm"\nderivatives = true\n'
        '[[subscriptions]]\nprovider = "k"\nvenue = "BINANCE"\ndata_class = "perpetual"\n'
        'instruments = ["BTC-USDT-PERP"]\n'
        '[[subscriptions]]\nprovider = "b"\ndata_class = "perpetual"\n'
        'instruments = ["BTC-USDT-PERP"]\n'
    )
    reg = Registry.build(
        [("BTC-USDT-PERP", CLASS_CODES["perpetual"])], [("k", "BINANCE"), ("b", "BINANCE")], 64, 8
    )
    det = AnomalyDetector(cfg, reg, 1, T0)
    flags = det.state.provs["derivs_data"]
    assert flags[reg.provider_id("k")] == 1 and flags[reg.provider_id("b")] == 0
    marks = np.zeros(2, RECORD_DTYPE)
    marks["kind"], marks["instrument"] = KIND_MARK, reg.instrument_id("BTC-USDT-PERP")
    marks["provider"] = [reg.provider_id("k"), reg.provider_id("b")]
    marks["venue"], marks["price"] = reg.venue_id("BINANCE"), 64000.0
    quiet = set()
    t = T0
    for _ in range(40):  # 10 s of marks every 0.25 s
        t += S // 4
        marks["ts_receive"] = t
        det.update(marks)
        rows = det.evaluate(t, np.full(1, np.nan), np.zeros(1, np.int64))
        quiet |= {
            e["subject"]["provider"]
            for e in (decode_anomaly(v) for _k, v in encode_anomalies(*rows, reg))
            if e["kind"] in ("no_data", "no_first_data")
        }
    assert quiet == {"b"}
