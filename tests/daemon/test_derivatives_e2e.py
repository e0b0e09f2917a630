"""Derivatives through the whole daemon: the local Binance USD-M server's markPrice@1s and
forceOrder messages, and the local Kaiko server's derivatives instrument metrics, reach the
derivatives topic of a real broker with their exact values, and /metrics; the ticks topic never
sees them, and the fair prices only with ``[fair] mark_inputs``."""

from __future__ import annotations

import math
import signal
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client.parser import text_string_to_metric_families

from fairfeed.core.config import SimulatorConfig
from fairfeed.core.records import (
    KIND_FUNDING,
    KIND_INDEX,
    KIND_LIQUIDATION,
    KIND_MARK,
    KIND_OPEN_INTEREST,
    MAX_MARKET_KIND,
    SIDE_BUY,
    SIDE_SELL,
)
from fairfeed.kafka.broker import free_port
from fairfeed.kafka.encode import decode_derivatives, decode_fair, decode_ticks
from fairfeed.local.binance import BinanceServer
from fairfeed.local.kaiko import KaikoServer
from fairfeed.local.thread import LoopThread
from tests.conftest import consume_all
from tests.daemon.daemon_process import DaemonProcess
from tests.providers.kaiko_metrics import expected_metrics
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

PRICES = {"BTC-USDT-PERP": 64000.0, "ETH-USDT-PERP": 3000.0}
SYMBOLS = {"btcusdt": "BTC-USDT-PERP", "ethusdt": "ETH-USDT-PERP"}
TAG = "deriv"


def _config(
    tmp_path: Path, url: str, bootstrap: str, metrics_port: int, fair: str = "", tag: str = TAG
) -> Path:
    insts = orjson.dumps(list(PRICES)).decode()
    path = tmp_path / "fairfeed.toml"
    path.write_text(f"""
[daemon]
workers = 1
[kafka]
bootstrap = "{bootstrap}"
create_topics = true
ticks_topic = "{tag}.ticks"
fair_topic = "{tag}.fair"
anomalies_topic = "{tag}.anomalies"
derivatives_topic = "{tag}.derivatives"
[fair]
min_interval = 0.01
{fair}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[providers]]
name = "binance-f"
kind = "binance"
venue = "BINANCE"
url = "{url}"
[providers.options]
market = "usdm"
derivatives = true
[[subscriptions]]
provider = "binance-f"
data_class = "perpetual"
instruments = {insts}
""")
    return path


def _values(bootstrap: str, topic: str) -> list[bytes]:
    try:
        return [v for _p, _k, v in consume_all(bootstrap, topic, timeout=20)]
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return []
        raise


def _expected(sent: list[str]) -> dict[str, list[tuple]]:
    """Per instrument, the derivatives rows the server's messages imply, in order:
    (kind, price, size or None, side, next funding ns, ts_exchange, ts_provider)."""
    out: dict[str, list[tuple]] = defaultdict(list)
    for text in sent:
        m = orjson.loads(text)
        sym, _, kind = m["stream"].partition("@")
        d = m["data"]
        rows = out[SYMBOLS[sym]]
        if kind == "markPrice@1s":
            t = d["E"] * 10**6
            rows.append((KIND_MARK, float(d["p"]), 0.0, 0, 0, t, t))
            rows.append((KIND_INDEX, float(d["i"]), 0.0, 0, 0, t, t))
            rows.append((KIND_FUNDING, float(d["r"]), None, 0, d["T"] // 1000 * 10**9, t, t))
        elif kind == "forceOrder":
            o = d["o"]
            side = SIDE_SELL if o["S"] == "SELL" else SIDE_BUY
            rows.append((KIND_LIQUIDATION, float(o["ap"]), float(o["z"]), side, 0,
                         o["T"] * 10**6, d["E"] * 10**6))  # fmt: skip
    return out


def _published(bootstrap: str) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = defaultdict(list)
    for value in _values(bootstrap, f"{TAG}.derivatives"):
        m = decode_derivatives(value)
        assert (m["provider"], m["venue"], m["data_class"]) == ("binance-f", "BINANCE", "perpetual")
        cols = [m[c].tolist() for c in ("kind", "price", "size", "side", "next_funding_time",
                                        "ts_exchange", "ts_provider")]  # fmt: skip
        for k, p, s, side, nxt, te, tp in zip(*cols, strict=True):
            out[m["instrument"]].append((k, p, None if k == KIND_FUNDING else s, side, nxt, te, tp))
    return out


def _scrape(port: int, provider: str = "binance-f") -> dict[tuple[str, str], float]:
    """(metric, instrument) → value of the per-stream derivatives samples of ``provider``."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except urllib.error.URLError:
        return {}
    return {
        (s.name, s.labels["instrument"]): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
        if "instrument" in s.labels and s.labels.get("provider") == provider
    }


def test_mark_prices_and_liquidations_reach_their_topic_and_metrics_exactly(
    tmp_path: Path, kafka_broker
) -> None:
    bootstrap = kafka_broker.bootstrap
    cfg = SimulatorConfig(prices=PRICES, rate=400, max_events=1200, quote_ratio=0.5, seed=14)
    server = BinanceServer("binance-f", cfg, market="usdm", keep_log=True, mark_interval=0.2,
                           liquidation_every=9)  # fmt: skip
    thread = LoopThread(server).start()
    port = free_port()
    daemon = None
    try:
        daemon = DaemonProcess(tmp_path, _config(tmp_path, server.url, bootstrap, port))
        # two connections (/public and /market), each served its max_events
        wait_for(lambda: thread.call(lambda: server.stats.finished) == 2, 90,
                 "the server to finish both connections")  # fmt: skip
        sent = thread.call(lambda: list(server.sent))
        want = _expected(sent)
        n_want = sum(map(len, want.values()))
        assert n_want > 20 and set(want) == set(PRICES)
        assert {r[0] for rows in want.values() for r in rows} == {
            KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_LIQUIDATION
        }  # fmt: skip
        got = wait_for(
            lambda: (g := _published(bootstrap)) and sum(map(len, g.values())) >= n_want and g,
            60, f"{n_want} derivatives records in Kafka", interval=0.5,
        )  # fmt: skip
        assert dict(got) == dict(want)

        # /metrics: the latest values per stream and every liquidation
        def latest(kind: int, inst: str) -> tuple:
            return next(r for r in reversed(want[inst]) if r[0] == kind)

        for inst in PRICES:
            mark, index = latest(KIND_MARK, inst)[1], latest(KIND_INDEX, inst)[1]
            funding = latest(KIND_FUNDING, inst)
            liqs = [r for r in want[inst] if r[0] == KIND_LIQUIDATION]
            expect = {
                ("fairfeed_mark_price", inst): mark,
                ("fairfeed_index_price", inst): index,
                ("fairfeed_basis", inst): mark / index - 1.0,
                ("fairfeed_funding_rate", inst): funding[1],
                ("fairfeed_next_funding_time_seconds", inst): funding[4] / 1e9,
                ("fairfeed_liquidations_total", inst): len(liqs),
                ("fairfeed_liquidation_size_total", inst): sum(r[2] for r in liqs),
            }
            m = wait_for(lambda e=expect: (s := _scrape(port)) and all(k in s for k in e) and s,
                         20, f"the derivatives metrics of {inst}")  # fmt: skip
            for key, value in expect.items():
                assert m[key] == pytest.approx(value, rel=1e-12), key
            assert ("fairfeed_open_interest", inst) not in m  # Binance publishes none here

        # never a tick, never a fair price: no mark or index price among the fair prices
        ticks = [decode_ticks(v) for v in _values(bootstrap, f"{TAG}.ticks")]
        assert ticks and all((t["kind"] <= MAX_MARKET_KIND).all() for t in ticks)
        fair = {decode_fair(v)["price"] for v in _values(bootstrap, f"{TAG}.fair")}
        marks = {r[1] for rows in want.values() for r in rows if r[0] in (KIND_MARK, KIND_INDEX)}
        assert fair and not fair & marks
        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill()
        thread.stop()


KAIKO_PRICES = {"BTC-USDT-PERP": 64000.0, "ETH-USDT-PERP": 3000.0}
KAIKO_KEY_ENV = "FAIRFEED_TEST_KAIKO_DERIV_KEY"
KAIKO_UPDATES = 5
KAIKO_CODES = {"BTC-USDT-PERP": "binc:perpetual-future:btc-usdt",
               "ETH-USDT-PERP": "binc:perpetual-future:eth-usdt"}  # fmt: skip
KAIKO_UNITS = {"BTC-USDT-PERP": 0.001, "ETH-USDT-PERP": 1.0}  # base units per contract
KAIKO_KINDS = (KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_OPEN_INTEREST)


def _kaiko_config(tmp_path: Path, port: int, bootstrap: str, metrics_port: int) -> Path:
    path = tmp_path / "fairfeed.toml"
    path.write_text(f"""
[daemon]
workers = 1
[kafka]
bootstrap = "{bootstrap}"
create_topics = true
ticks_topic = "{TAG}k.ticks"
fair_topic = "{TAG}k.fair"
anomalies_topic = "{TAG}k.anomalies"
derivatives_topic = "{TAG}k.derivatives"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[providers]]
name = "kaiko-d"
kind = "kaiko"
url = "grpc://127.0.0.1:{port}"
api_key_env = "{KAIKO_KEY_ENV}"
[providers.options]
trades = false
quotes = false
derivatives = true
amount_units = {{ "BINANCE:perpetual:BTC-USDT-PERP" = 0.001 }}
[[subscriptions]]
provider = "kaiko-d"
venue = "BINANCE"
data_class = "perpetual"
instruments = {orjson.dumps(list(KAIKO_PRICES)).decode()}
""")
    return path


def _kaiko_published(bootstrap: str) -> dict[str, list[tuple]]:
    """(kind, price, size, ts_provider) per instrument, in order, of the derivatives topic."""
    out: dict[str, list[tuple]] = defaultdict(list)
    for value in _values(bootstrap, f"{TAG}k.derivatives"):
        m = decode_derivatives(value)
        assert (m["provider"], m["venue"], m["data_class"]) == ("kaiko-d", "BINANCE", "perpetual")
        assert (m["ts_exchange"] == 0).all() and (m["next_funding_time"] == 0).all()
        cols = [m[c].tolist() for c in ("kind", "price", "size", "ts_provider")]
        out[m["instrument"]] += zip(*cols, strict=True)
    return out


def _same(got: list[tuple], want: list[tuple]) -> bool:
    """Row by row equal, NaN (a predicted rate not yet published) equal to NaN."""
    return len(got) == len(want) and all(
        g[:2] == w[:2] and g[3] == w[3] and (g[2] == w[2] or math.isnan(g[2]) == math.isnan(w[2]))
        for g, w in zip(got, want, strict=True)
    )


def test_kaiko_derivatives_metrics_reach_their_topic_and_metrics_exactly(
    tmp_path: Path, kafka_broker
) -> None:
    """Kaiko with only ``derivatives = true``: one metrics call per perpetual; its mark, index,
    funding and open interest (0.001 BTC contracts: base units) are on the derivatives topic
    exactly as the local Kaiko server sent them, and their latest values on /metrics (no next
    funding time: Kaiko publishes none)."""
    bootstrap = kafka_broker.bootstrap
    cfg = SimulatorConfig(prices=KAIKO_PRICES, rate=100, seed=17)
    server = KaikoServer(cfg, api_key="kaiko-e2e-key", venues=("BINANCE",), metrics_interval=0.1,
                         metrics_max=KAIKO_UPDATES)  # fmt: skip
    thread = LoopThread(server).start()
    port = free_port()
    daemon = None
    try:
        daemon = DaemonProcess(tmp_path, _kaiko_config(tmp_path, server.port, bootstrap, port),
                               env={KAIKO_KEY_ENV: "kaiko-e2e-key"})  # fmt: skip
        wait_for(lambda: thread.call(lambda: server.calls_capped) == 2, 90,
                 "both metrics calls to send their updates")  # fmt: skip
        assert thread.call(lambda: (server.subscribes, server.rejected)) == (2, 0)
        want = {
            inst: expected_metrics(
                thread.call(lambda c=code: list(server.stats[c].metrics_log)),
                lambda a, _mark, u=KAIKO_UNITS[inst]: a * u,
            )
            for inst, code in KAIKO_CODES.items()
        }
        for rows in want.values():  # each update: mark, index, open interest, rate, predicted
            assert len(rows) == 5 * KAIKO_UPDATES
            assert {r[0] for r in rows} == set(KAIKO_KINDS)
        got = wait_for(
            lambda: (g := _kaiko_published(bootstrap))
            and all(len(g[i]) >= len(w) for i, w in want.items()) and g,
            60, "every Kaiko derivatives record in Kafka", interval=0.5,
        )  # fmt: skip
        for inst, rows in want.items():
            assert _same(got[inst], rows), (inst, got[inst], rows)

        for inst, rows in want.items():
            last = {k: next(r for r in reversed(rows) if r[0] == k) for k in KAIKO_KINDS}
            mark, index = last[KIND_MARK][1], last[KIND_INDEX][1]
            expect = {
                ("fairfeed_mark_price", inst): mark,
                ("fairfeed_index_price", inst): index,
                ("fairfeed_basis", inst): mark / index - 1.0,
                ("fairfeed_funding_rate", inst): last[KIND_FUNDING][1],
                ("fairfeed_open_interest", inst): last[KIND_OPEN_INTEREST][2],
            }
            m = wait_for(lambda e=expect: (s := _scrape(port, "kaiko-d")) and all(k in s for k in e)
                         and s, 20, f"the derivatives metrics of {inst}")  # fmt: skip
            for key, value in expect.items():
                assert m[key] == pytest.approx(value, rel=1e-12), key
            assert ("fairfeed_next_funding_time_seconds", inst) not in m  # unknown: no sample
        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill()
        thread.stop()


def _prices(sent: list[str], stream: str) -> dict[str, set[float]]:
    """Per instrument, the prices of the server's ``stream`` messages."""
    out: dict[str, set[float]] = defaultdict(set)
    for text in sent:
        m = orjson.loads(text)
        sym, _, kind = m["stream"].partition("@")
        if kind == stream:
            out[SYMBOLS[sym]].add(float(m["data"]["p"]))
    return out


@pytest.mark.parametrize("mark_inputs", [True, False])
def test_fair_prices_take_the_perpetuals_marks_only_with_mark_inputs(
    tmp_path: Path, kafka_broker, mark_inputs: bool
) -> None:
    """With the plain median, an instrument's fair price is its last trade's price, its last
    mark's, or with mark inputs the mean of the two: each published price is checked against
    the prices the server sent, and the `marks` field says which it was."""
    bootstrap = kafka_broker.bootstrap
    cfg = SimulatorConfig(prices=PRICES, rate=400, max_events=800, quote_ratio=0.3, seed=15)
    server = BinanceServer("binance-f", cfg, market="usdm", keep_log=True, mark_interval=0.1)
    thread = LoopThread(server).start()
    fair_cfg = f'method = "median"\nmark_inputs = {"true" if mark_inputs else "false"}'
    tag = f"marks-{'on' if mark_inputs else 'off'}"  # topics of their own on the shared broker
    daemon = None
    try:
        path = _config(tmp_path, server.url, bootstrap, free_port(), fair_cfg, tag)
        daemon = DaemonProcess(tmp_path, path)
        wait_for(lambda: thread.call(lambda: server.stats.finished) == 2, 90,
                 "the server to finish both connections")  # fmt: skip
        sent = thread.call(lambda: list(server.sent))
        trades, marks = _prices(sent, "aggTrade"), _prices(sent, "markPrice@1s")
        assert set(trades) == set(marks) == set(PRICES)
        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()  # the last fair prices out
        fair = [decode_fair(v) for v in _values(bootstrap, f"{tag}.fair")]
        fair = [f for f in fair if f["status"] != "stale"]
        assert fair
        kinds: dict[str, set[str]] = defaultdict(set)
        for f in fair:
            inst, price, n = f["instrument"], f["price"], f["sources"]
            if not mark_inputs:
                assert "marks" not in f and n == 1, f
                assert price in trades[inst], f
                kinds[inst].add("trade")
                continue
            used = {(1, 0): "trade", (1, 1): "mark", (2, 1): "both"}[(n, f["marks"])]
            kinds[inst].add(used)
            if used == "trade":
                assert price in trades[inst], f
            elif used == "mark":
                assert price in marks[inst], f
            else:
                assert price in {(t + m) / 2 for t in trades[inst] for m in marks[inst]}, f
                assert price not in trades[inst], f  # a mark moved it
        for inst in PRICES:
            assert ("both" in kinds[inst]) == mark_inputs, (inst, kinds[inst])
            if not mark_inputs:
                assert kinds[inst] == {"trade"}
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill()
        thread.stop()
