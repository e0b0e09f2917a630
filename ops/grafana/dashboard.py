"""Generate the Grafana dashboard ``ops/grafana/fairfeed.json`` with grafana-foundation-sdk.

    python ops/grafana/dashboard.py            # rewrite fairfeed.json
    python ops/grafana/dashboard.py --check    # exit 1 if fairfeed.json is not up to date

The committed JSON is what operators import; ``tests/ops/test_grafana_dashboard.py`` regenerates
it and compares, and ``tests/daemon/test_metrics_e2e.py`` runs every query against a real
Prometheus scraping a running daemon. Variables are chained: provider → venue → instrument.
Metrics: docs/metrics.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).with_name("fairfeed.json")
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
STREAM = 'provider=~"$provider",venue=~"$venue",instrument=~"$instrument"'
SOURCE = 'provider=~"$provider",venue=~"$venue"'
DIVERGENCE = 0.06  # the alert's threshold (ops/prometheus/fairfeed.rules.yml)


def _variables() -> list[db.QueryVariable | db.DatasourceVariable]:
    ds = db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")

    def query(name: str, label: str, q: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(q)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )

    return [
        ds,
        query("provider", "Provider", "label_values(fairfeed_messages_total, provider)"),
        query(
            "venue", "Venue", 'label_values(fairfeed_messages_total{provider=~"$provider"}, venue)'
        ),
        query("instrument", "Instrument",
              f"label_values(fairfeed_messages_total{{{SOURCE}}}, instrument)"),
    ]  # fmt: skip


def _target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def _ts(pid: int, title: str, pos: tuple[int, int, int, int], unit: str, *targets, desc=""):
    x, y, w, h = pos
    p = (
        timeseries.Panel()
        .id(pid)
        .title(title)
        .description(desc)
        .datasource(DS)
        .unit(unit)
        .grid_pos(GridPos(h=h, w=w, x=x, y=y))
    )
    for t in targets:
        p = p.with_target(t)
    return p


def _panels() -> list:
    rate = "$__rate_interval"
    ratio_thresholds = (
        db.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps(
            [
                Threshold(value=None, color="red"),
                Threshold(value=1 - DIVERGENCE, color="green"),
                Threshold(value=1 + DIVERGENCE, color="red"),
            ]
        )
    )
    return [
        _ts(1, "Prices per provider", (0, 0, 12, 9), "none",
            _target(f"fairfeed_price{{{STREAM}}}", "{{instrument}} {{provider}}/{{venue}}"),
            _target('fairfeed_fair_price{instrument=~"$instrument"}', "fair {{instrument}}", "B"),
            desc="Latest price per stream (trade, or quote mid) and the fair price"),
        _ts(2, "Price / fair price", (12, 0, 12, 9), "none",
            _target(f"fairfeed_price_ratio{{{STREAM}}}", "{{instrument}} {{provider}}/{{venue}}"),
            desc=f"Alert beyond ±{DIVERGENCE:.0%} for 30 s (FairfeedPriceDivergence)")
        .thresholds(ratio_thresholds)
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)),
        _ts(3, "Latency per hop (p99)", (0, 9, 12, 9), "s",
            _target(
                "histogram_quantile(0.99, sum by (hop, le) "
                f"(rate(fairfeed_latency_seconds_bucket{{{SOURCE}}}[{rate}])))",
                "p99 {{hop}}",
            ),
            _target(
                "histogram_quantile(0.5, sum by (hop, le) "
                f"(rate(fairfeed_latency_seconds_bucket{{{SOURCE}}}[{rate}])))",
                "p50 {{hop}}", "B",
            ),
            desc="exchange → provider → receive → ring → kernel → Kafka ack"),
        _ts(4, "Update rate", (12, 9, 12, 9), "reqps",
            _target(f"fairfeed_update_rate{{{STREAM}}}", "{{instrument}} {{provider}}/{{venue}}")),
        _ts(5, "Last update age", (0, 18, 12, 8), "s",
            _target(f"fairfeed_last_update_age_seconds{{{STREAM}}}",
                    "{{instrument}} {{provider}}/{{venue}}")),
        stat.Panel().id(6).title("Active subscriptions").datasource(DS)
        .grid_pos(GridPos(h=8, w=6, x=12, y=18))
        .with_target(_target(f"sum by (provider) (fairfeed_subscriptions{{{SOURCE}}})",
                             "{{provider}}")),
        _ts(7, "Anomalies", (18, 18, 6, 8), "short",
            _target('sum by (kind) (fairfeed_anomalies_open{provider=~"$provider|"})',
                    "open {{kind}}"),
            _target('sum by (kind) (increase(fairfeed_anomalies_total{provider=~"$provider|"}'
                    f"[{rate}]))", "started {{kind}}", "B")),
        _ts(8, "Ring fill and drops", (0, 26, 12, 8), "percentunit",
            _target("fairfeed_ring_fill / fairfeed_ring_capacity", "fill {{process}}"),
            _target(f"rate(fairfeed_ring_dropped_total[{rate}])", "drops/s {{process}}", "B")),
        _ts(9, "Kafka", (12, 26, 12, 8), "short",
            _target("fairfeed_kafka_queue_messages", "queue {{process}}"),
            _target(f"rate(fairfeed_kafka_delivered_total[{rate}])", "delivered/s", "B"),
            _target(f"rate(fairfeed_kafka_errors_total[{rate}]) + "
                    f"rate(fairfeed_kafka_dropped_total[{rate}])", "errors+drops/s", "C"),
            _target("fairfeed_spool_messages", "waiting in the spool", "D"),
            _target(f"sum by (topic) (rate(fairfeed_output_dropped_records_total[{rate}]))",
                    "records dropped/s {{topic}}", "E")),
        _ts(10, "Records per process", (0, 34, 12, 8), "reqps",
            _target(f"rate(fairfeed_records_in_total[{rate}])", "in {{process}}"),
            _target(f"rate(fairfeed_records_out_total[{rate}])", "out {{process}}", "B")),
        _ts(11, "Kernel time per batch", (12, 34, 12, 8), "s",
            _target(f"rate(fairfeed_kernel_seconds_sum[{rate}]) / "
                    f"rate(fairfeed_kernel_seconds_count[{rate}])", "mean"),
            _target(f"histogram_quantile(0.99, rate(fairfeed_kernel_seconds_bucket[{rate}]))",
                    "p99", "B")),
        _ts(12, "Processes: heartbeat age and restarts", (0, 42, 24, 8), "short",
            _target("fairfeed_heartbeat_age_seconds", "heartbeat age {{process}}"),
            _target("increase(fairfeed_restarts_total[1h])", "restarts/h {{process}}", "B")),
    ]  # fmt: skip


def build() -> dict:
    d = (
        db.Dashboard("fairfeed")
        .uid("fairfeed")
        .tags(["fairfeed", "market-data"])
        .editable()
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("utc")
    )
    for v in _variables():
        d = d.with_variable(v)
    for p in _panels():
        d = d.with_panel(p)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(d.build()))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
