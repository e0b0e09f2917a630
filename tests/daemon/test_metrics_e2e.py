"""Metrics with the real thing: a Prometheus server (Debian package) scrapes a running daemon.

The daemon reads three local simulators; one of them goes silent (heartbeats only) after a
few hundred events. Checked through Prometheus's HTTP API: the expected series and labels with
plausible values, every dashboard panel query and variable query, the silent provider in the
matching metrics, a worker restart without stale or duplicated series, and the alert rules
loaded. Everything is polled (Prometheus discovers targets on a 5 s tick).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from fairfeed.core.config import SimulatorConfig
from fairfeed.kafka.broker import free_port
from fairfeed.local.simulator import SimulatorServer, SimulatorThread
from tests.daemon.daemon_process import DaemonProcess
from tests.ops.test_grafana_dashboard import dashboard_queries, substitute
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
# The real server is required, never skipped: .ci/run installs the Debian package.
assert shutil.which("prometheus"), "prometheus missing: apt-get install prometheus"

ROOT = Path(__file__).resolve().parents[2]
INSTRUMENTS = {"BTC-USD": 64000.0, "ETH-USD": 3200.0}
# name, venue, price offset (bps), events before going silent (0 = never)
PROVIDERS = (
    ("sim-a", "VENUE-A", -5.0, 0),
    ("sim-b", "VENUE-B", 5.0, 0),
    ("sim-c", "VENUE-C", 0.0, 300),
)
HOPS = (
    "exchange_provider",
    "provider_receive",
    "receive_ring",
    "ring_kernel",
    "kernel_kafka",
    "kafka_ack",
)


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):  # not listening yet
        return 0, b""


class Prom:
    """A Prometheus server on 127.0.0.1 scraping ``target`` every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        rules = ROOT / "ops" / "prometheus" / "fairfeed.rules.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}\n"
            "scrape_configs:\n  - job_name: fairfeed\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> dict:
        status, body = _get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        data = json.loads(body)
        assert data["status"] == "success", (status, data)
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def values(self, expr: str) -> dict[tuple, float]:
        """``{sorted label items: value}`` of an instant vector."""
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in self.query(expr)}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _simulators() -> SimulatorThread:
    servers = [
        SimulatorServer(
            name,
            SimulatorConfig(
                prices=INSTRUMENTS,
                rate=400,
                batch=2,
                price_offset_bps=offset,
                max_events=max_events,
                heartbeat_interval=0.3,
                seed=i + 1,
            ),
        )
        for i, (name, _venue, offset, max_events) in enumerate(PROVIDERS)
    ]
    return SimulatorThread(*servers).start()


def _config(tmp_path: Path, sims: SimulatorThread, bootstrap: str) -> Path:
    lines = [
        "[daemon]\nworkers = 2\nheartbeat_interval = 0.1\nheartbeat_timeout = 3.0\n",
        f'[kafka]\nbootstrap = "{bootstrap}"\ncreate_topics = true\n'
        'ticks_topic = "m.ticks"\nfair_topic = "m.fair"\n'
        'anomalies_topic = "m.anomalies"\n',
        '[fair]\nmethod = "median"\n',
        "[anomalies]\nno_data_after = 2.0\nfirst_data_timeout = 5.0\n",
        '[metrics]\nlisten = "127.0.0.1:0"\n',
    ]
    insts = ", ".join(f'"{i}"' for i in INSTRUMENTS)
    for (name, venue, _o, _m), server in zip(PROVIDERS, sims.servers, strict=True):
        lines.append(
            f'[[providers]]\nname = "{name}"\nkind = "simulator"\nvenue = "{venue}"\n'
            f'url = "{server.url}"\n'
        )
        lines.append(f'[[subscriptions]]\nprovider = "{name}"\ninstruments = [{insts}]\n')
    path = tmp_path / "fairfeed.toml"
    path.write_text("\n".join(lines))
    return path


def test_prometheus_scrapes_the_daemon(tmp_path: Path, kafka_broker) -> None:
    sims = _simulators()
    daemon = prom = None
    try:
        daemon = DaemonProcess(tmp_path, _config(tmp_path, sims, kafka_broker.bootstrap))
        found = wait_for(
            lambda: re.search(r"metrics +(http://\S+)/metrics", daemon.stdout()),
            30,
            "the metrics address on stdout",
        )
        base = found[1]
        host_port = base.removeprefix("http://")
        assert _get(f"{base}/healthz")[0] == 200
        wait_for(lambda: _get(f"{base}/readyz")[0] == 200, 30, "/readyz = 200")
        assert _get(f"{base}/nope")[0] == 404

        prom = Prom(tmp_path, host_port)
        wait_for(lambda: _get(f"{prom.url}/-/ready")[0] == 200, 15, "prometheus ready")
        wait_for(
            lambda: any(t["health"] == "up" for t in prom.api("targets")["activeTargets"]),
            20,
            "the daemon's target up",
            interval=0.2,
        )

        # -- expected series, labels and plausible values ------------------------------------
        def all_streams() -> bool:
            got = prom.values("fairfeed_messages_total > 0")
            return len(got) == len(PROVIDERS) * len(INSTRUMENTS)

        wait_for(all_streams, 30, "messages for every stream", interval=0.3)
        ratio = prom.values('fairfeed_price_ratio{provider="sim-a"}')
        assert len(ratio) == 2 and all(0.95 < v < 1.05 for v in ratio.values()), ratio
        labels = dict(next(iter(ratio)))
        assert labels["venue"] == "VENUE-A" and labels["data_class"] == "spot"
        fair = prom.values('fairfeed_fair_price{instrument="BTC-USD"}')
        assert 0.9 * 64000 < next(iter(fair.values())) < 1.1 * 64000
        for hop in HOPS:
            wait_for(
                lambda hop=hop: prom.values(
                    f'fairfeed_latency_seconds_count{{provider="sim-a",hop="{hop}"}} > 0'
                ),
                20,
                f"latency observations for hop {hop}",
                interval=0.3,
            )
        local = prom.values(
            "histogram_quantile(0.5, sum by (hop, le) "
            '(fairfeed_latency_seconds_bucket{hop=~"receive_ring|ring_kernel"}))'
        )
        assert local and all(v < 0.5 for v in local.values()), local
        up = prom.values("fairfeed_process_up")
        assert {dict(k)["process"]: v for k, v in up.items()} == {
            "ingest-0": 1.0, "ingest-1": 1.0, "compute": 1.0
        }  # fmt: skip
        assert prom.values("fairfeed_kernel_seconds_count > 0")
        assert prom.values('process_resident_memory_bytes{job="fairfeed"} > 0')
        assert prom.values('fairfeed_child_resident_memory_bytes{process="compute"} > 0')
        subs = prom.values("fairfeed_subscriptions")
        assert sorted(subs.values()) == [2.0, 2.0, 2.0]

        # -- every dashboard query and variable returns data ------------------------------------
        dash = json.loads((ROOT / "ops" / "grafana" / "fairfeed.json").read_text())
        exprs, variables = dashboard_queries(dash)
        pending = {substitute(e, rate="10s") for e in exprs}

        def dashboard_has_data() -> bool:
            for expr in sorted(pending):
                if prom.query(expr):
                    pending.discard(expr)
            return not pending

        try:
            wait_for(dashboard_has_data, 40, "data for every dashboard query", interval=0.5)
        except AssertionError:
            raise AssertionError(f"dashboard queries without data: {sorted(pending)}") from None
        for q in variables:
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", q)
            assert m, q
            match = substitute(m[1])
            vals = prom.api(f"label/{m[2]}/values", **{"match[]": match})
            assert vals, q

        # -- the silent provider shows up ---------------------------------------------------
        wait_for(
            lambda: len(prom.values('fairfeed_last_update_age_seconds{provider="sim-c"} > 3')) == 2,
            30,
            "sim-c's streams getting old",
            interval=0.3,
        )
        assert not prom.values('fairfeed_last_update_age_seconds{provider="sim-a"} > 3')
        wait_for(
            lambda: prom.values('fairfeed_anomalies_open{kind="no_data",provider="sim-c"} > 0'),
            30,
            "a no-data anomaly for sim-c",
            interval=0.3,
        )
        assert not prom.values('fairfeed_anomalies_open{kind="no_data",provider="sim-a"} > 0')
        wait_for(
            lambda: prom.values('fairfeed_update_rate{provider="sim-c"} == 0'),
            30,
            "sim-c's update rate at 0",
            interval=0.3,
        )

        # -- a worker restart: same series, restart counted, nothing stale -------------------
        before = prom.values('fairfeed_records_in_total{process="ingest-0"}')
        victim = daemon.pid_of("ingest-0")
        assert victim
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: prom.values('fairfeed_restarts_total{process="ingest-0"} >= 1'),
            30,
            "the restart in fairfeed_restarts_total",
            interval=0.3,
        )
        wait_for(
            lambda: prom.values('fairfeed_process_up{process="ingest-0"} == 1'), 30, "ingest-0 up"
        )
        after = prom.values('fairfeed_records_in_total{process="ingest-0"}')
        assert len(after) == 1 and next(iter(after.values())) >= next(iter(before.values()))
        assert len(prom.values("fairfeed_process_up")) == 3

        # -- rules loaded; scrape time -------------------------------------------------------
        groups = prom.api("rules")["groups"]
        assert {g["name"] for g in groups} == {"fairfeed.data", "fairfeed.pipeline"}
        scrape = prom.values('scrape_duration_seconds{job="fairfeed"}')
        print(f"scrape_duration_seconds: {scrape}")
        assert next(iter(scrape.values())) < 0.5

        assert daemon.stop(signal.SIGTERM) == 0, daemon.stderr()
        assert daemon.leftovers() == []
    finally:
        if prom is not None:
            prom.stop()
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill()
        sims.stop()
