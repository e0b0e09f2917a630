"""The anomaly scenario tests' shared set-up: a daemon configuration over local Kraken servers,
and the anomaly events read back from Kafka (docs/anomalies.md, docs/kafka-schema.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException

from fairfeed.kafka.encode import decode_anomaly
from tests.conftest import consume_all


@dataclass(frozen=True)
class Feed:
    """One provider of the test: its local server's URL and the instruments subscribed."""

    name: str
    venue: str
    url: str
    instruments: tuple[str, ...]


def write_config(
    tmp_path: Path, tag: str, bootstrap: str, anomalies: str, feeds: list[Feed]
) -> Path:
    """A daemon configuration (one worker, topics ``<tag>.*``) with the ``[anomalies]`` table
    ``anomalies`` and one Kraken provider per feed."""
    lines = [
        "[daemon]\nworkers = 1\nheartbeat_interval = 0.1\nheartbeat_timeout = 3.0\n",
        f'[kafka]\nbootstrap = "{bootstrap}"\ncreate_topics = true\nticks_topic = "{tag}.ticks"\n'
        f'fair_topic = "{tag}.fair"\nanomalies_topic = "{tag}.anomalies"\n',
        "[fair]\nstale_after = 30.0\nmin_interval = 0.05\n",
        anomalies,
    ]
    for f in feeds:
        listed = ", ".join(f'"{i}"' for i in f.instruments)
        lines.append(
            f'[[providers]]\nname = "{f.name}"\nkind = "kraken"\nvenue = "{f.venue}"\n'
            f'url = "{f.url}"\n'
        )
        lines.append(f'[[subscriptions]]\nprovider = "{f.name}"\ninstruments = [{listed}]\n')
    path = tmp_path / "fairfeed.toml"
    path.write_text("\n".join(lines))
    return path


def read_events(bootstrap: str, tag: str, t0: int = 0) -> list[dict]:
    """The events of ``<tag>.anomalies`` detected at or after ``t0`` (ns), in detection order,
    each with its Kafka key as ``key``."""
    try:
        msgs = consume_all(bootstrap, f"{tag}.anomalies", timeout=20)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return []
        raise
    out = []
    for _p, key, value in msgs:
        ev = decode_anomaly(value)
        ev["key"] = key.decode()
        out.append(ev)
    return sorted((e for e in out if e["detected"] >= t0), key=lambda e: e["detected"])


def brief(e: dict) -> tuple:
    """An event as (kind, phase, key)."""
    return (e["kind"], e["phase"], e["key"])
