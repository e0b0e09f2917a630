"""The collector and the HTTP endpoint in-process: exposition, budget, health checks."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fairfeed.core.config import KafkaConfig
from fairfeed.core.counters import Slot
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Stream, SubscriptionSet
from fairfeed.daemon.metrics import OVERFLOW, FairfeedCollector, render_text
from fairfeed.daemon.metrics_http import MetricsHTTPServer
from fairfeed.daemon.supervisor import ChildSpec
from fairfeed.hotpath.metrics import HOP_RING_KERNEL
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.ipc.streams import StreamBoard
from tests.daemon.socket_loop import SelectLoop
from tests.waiting import wait_for

NOW = 1_700_000_000 * 10**9


@pytest.fixture
def rt():
    tag = f"fftest-{os.getpid()}-met"
    reg = Registry.build([(f'I{i}-"x"', 1) for i in range(6)], [("p0", "V0"), ("p1", "V1")], 64, 8)
    control = ControlBlock.create(f"{tag}-c", 2, 64)
    streams = StreamBoard.create(f"{tag}-s", 64, 8)
    board = MetricsBoard.create(f"{tag}-m", 64, 8)
    streams.count[:6, :2] = 5
    streams.last_ts[:6, :2] = NOW
    board.price[:6, :2] = 101.0
    control.fair_price[:6] = 100.0
    board.hist[0, HOP_RING_KERNEL, 2] = 7
    board.anomaly_event(1, 0, True)
    control.set(1, Slot.KAFKA_DELIVERED, 42)
    children = [ChildSpec("ingest-0", 0, lambda: 0), ChildSpec("compute", 1, lambda: 0)]
    control.set(1, Slot.DROPPED_FAIR, 7)
    control.set(1, Slot.SPOOL_BYTES, 1234)
    ns = SimpleNamespace(
        cfg=SimpleNamespace(kafka=KafkaConfig()),
        compute=SimpleNamespace(slot=1),
        registry=reg,
        book=SimpleNamespace(live=SubscriptionSet([Stream("p0", "V0", 'I0-"x"', "spot")])),
        control=control,
        streams=streams,
        rings=[],
        workers=[],
        children=children,
        supervisor=None,
        board=board,
        served=[],
    )
    yield ns
    for seg in (control, streams, board):
        seg.close()
        seg.unlink()


def _samples(body: bytes) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def test_render_text_matches_generate_latest(rt) -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FairfeedCollector(rt, rt.board, 100))
    ours, theirs = render_text(reg), generate_latest(reg)
    drop = {"fairfeed_metrics_collect_seconds"}
    a = {k: v for k, v in _samples(ours).items() if k[0] not in drop}
    b = {k: v for k, v in _samples(theirs).items() if k[0] not in drop}
    assert a.keys() == b.keys()
    for k, v in a.items():  # ages move between the two scrapes
        assert v == pytest.approx(b[k], rel=1e-6) if "age" in k[0] else v == b[k], k
    key = ("fairfeed_price_ratio", (("data_class", "spot"), ("instrument", 'I0-"x"'),
                                    ("provider", "p0"), ("venue", "V0")))  # fmt: skip
    assert a[key] == pytest.approx(1.01)
    assert a[("fairfeed_kafka_delivered_total", (("process", "compute"),))] == 42
    assert a[("fairfeed_anomalies_total", (("kind", "no_data"), ("provider", "p0")))] == 1
    assert a[("fairfeed_latency_seconds_count",
              (("hop", "ring_kernel"), ("provider", "p0"), ("venue", "V0")))] == 7  # fmt: skip
    dropped = "fairfeed_output_dropped_records_total"
    assert a[(dropped, (("topic", "fairfeed.fair"),))] == 7
    assert a[(dropped, (("topic", "fairfeed.ticks"),))] == 0
    assert a[("fairfeed_spool_bytes", ())] == 1234


def test_budget_folds_streams_into_overflow(rt) -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FairfeedCollector(rt, rt.board, 5))
    got = _samples(render_text(reg))
    msgs = {k[1]: v for k, v in got.items() if k[0] == "fairfeed_messages_total"}
    assert len(msgs) == 5 + 2  # kept + one overflow series per source
    over = {dict(k)["provider"]: v for k, v in msgs.items() if dict(k)["instrument"] == OVERFLOW}
    assert over == {"p0": 5 * 3, "p1": 5 * 4}
    assert got[("fairfeed_metrics_folded_streams", ())] == 7 + 1  # 7 streams, 1 fair price
    assert not any(
        dict(k[1]).get("instrument") == OVERFLOW for k in got if k[0] == "fairfeed_price"
    )


def test_http_endpoint_serves_and_keeps_alive() -> None:
    server = MetricsHTTPServer(
        "127.0.0.1:0",
        lambda: (b"m 1\n", "text/plain"),
        lambda: (True, "ok"),
        lambda: (False, "not ready: compute down"),
    )
    server.open()
    try:
        client = socket.create_connection(server.address, timeout=5)
        reqs = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n"
        reqs += b"POST /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"
        client.sendall(reqs)
        data = b""
        while b"405" not in data or not data.endswith(b"HEAD\n"):
            server.handle([server.sock.fileno(), *server.clients], list(server.clients))
            try:
                client.settimeout(0.05)
                chunk = client.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\n\r\nm 1\n" in data
        assert b"HTTP/1.1 503 Service Unavailable" in data and b"compute down" in data
        assert b"HTTP/1.1 405" in data
        client.close()
    finally:
        server.close()


def test_negative_values_never_break_the_board(rt) -> None:
    rt.board.observe(HOP_RING_KERNEL, np.array([1, 99]), np.array([-0.5, 0.1]))
    assert rt.board.skew[1, HOP_RING_KERNEL] == 1


class _Looped(SelectLoop):
    """An HTTP endpoint driven by a select loop in a thread, as the supervisor drives it."""

    def __init__(self, **kw) -> None:
        super().__init__(
            MetricsHTTPServer(
                "127.0.0.1:0",
                lambda: (b"m 1\n", "text/plain"),
                lambda: (True, "ok"),
                lambda: (True, "ready"),
                **kw,
            )
        )


def _ask(address, request: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_idle_connections_never_keep_the_health_checks_out() -> None:
    looped = _Looped(max_clients=4, idle_timeout=30.0)
    server = looped.server
    idle = []
    try:
        for _ in range(3 * server.max_clients):  # more idle connections than allowed
            idle.append(socket.create_connection(server.address, timeout=5))
        wait_for(lambda: server.drops["evicted"] >= 2 * server.max_clients, 5.0, "evictions")
        for path in (b"/healthz", b"/readyz"):
            got = _ask(server.address, b"GET " + path + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
        assert server.drops["busy"] == 0 and len(server.clients) <= server.max_clients
    finally:
        for s in idle:
            s.close()
        looped.close()


def test_request_heads_are_bounded_in_time_and_size() -> None:
    looped = _Looped(max_clients=4, idle_timeout=30.0, header_timeout=0.3)
    server = looped.server
    try:
        # a head trickled byte by byte is cut off at the header timeout, not the idle one
        with socket.create_connection(server.address, timeout=5) as s:
            s.settimeout(0.05)
            got = b""
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 600:  # 30 s at most
                try:
                    s.send(bytes([byte]))
                    got = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if got:
                    break
        assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
        assert server.drops["slow_request"] == 1
        big = _ask(server.address, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
        assert big.startswith(b"HTTP/1.1 431 "), big[:60]
        ok = _ask(server.address, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        looped.close()


def test_derivatives_families_per_stream_within_the_budget(rt) -> None:
    from fairfeed.hotpath.metrics import D_FUNDING_RATE, D_INDEX, D_MARK, D_NEXT_FUNDING

    b = rt.board
    b.deriv[D_MARK, :3, 0] = 110.0
    b.deriv[D_INDEX, :3, 0] = 100.0
    b.deriv[D_FUNDING_RATE, :2, 0] = 0.0001
    b.deriv[D_NEXT_FUNDING, 0, 0] = 1_700_003_600
    b.deriv[D_NEXT_FUNDING, 1, 0] = 0  # not published (Kaiko): no sample
    b.liquidations[:3, 0] = [2, 0, 5]
    b.liquidated[:3, 0] = [0.5, 0.0, 1.5]
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FairfeedCollector(rt, b, 2))  # budget: the third stream is folded
    got = _samples(render_text(reg))

    def series(name: str) -> dict[str, float]:
        return {dict(k)["instrument"]: v for (n, k), v in got.items() if n == name}

    assert series("fairfeed_mark_price") == {'I0-"x"': 110.0, 'I1-"x"': 110.0}
    assert series("fairfeed_basis") == pytest.approx({'I0-"x"': 0.1, 'I1-"x"': 0.1})
    assert series("fairfeed_funding_rate") == {'I0-"x"': 0.0001, 'I1-"x"': 0.0001}
    assert series("fairfeed_next_funding_time_seconds") == {'I0-"x"': 1_700_003_600}
    assert series("fairfeed_open_interest") == {}
    assert series("fairfeed_liquidations_total") == {'I0-"x"': 2, OVERFLOW: 5}
    assert series("fairfeed_liquidation_size_total") == {'I0-"x"': 0.5, OVERFLOW: 1.5}
    labels = next(dict(k) for (n, k) in got if n == "fairfeed_mark_price")
    assert (labels["provider"], labels["venue"], labels["data_class"]) == ("p0", "V0", "spot")
