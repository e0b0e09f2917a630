"""An output without a broker, for ``fairfeed replay``: messages go to a JSON-lines file.

:class:`CollectSink` has the part of :class:`~fairfeed.kafka.sink.KafkaSink`'s interface the
compute process uses. The messages of ``topics`` (the fair prices and anomalies a user wants
to see) are written as ``{"topic", "key", "value"}`` lines, the value parsed back from our
JSON; every other message (ticks, dead letters) is only counted, per topic, in ``counts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from fairfeed.core.counters import Counters, Slot


class _NoSpool:
    positions = None  # nothing spooled by an earlier process: nothing to resume


class CollectSink:
    """Writes the messages of ``topics`` to ``path``; counts the others."""

    def __init__(self, path: str | Path, topics: frozenset[str], counters: Counters) -> None:
        self.path = Path(path)
        self.topics = topics
        self.counters = counters
        self.counts: dict[str, int] = {}  # messages per topic
        self.spool = _NoSpool()
        try:
            self._out = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise OSError(f"cannot write the replay output {self.path}: {exc}") from None

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: Any = None,
        records: int = 1,
    ) -> bool:
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if topic in self.topics:
            line = {"topic": topic, "key": key.decode() if key else None,
                    "value": orjson.loads(value)}  # fmt: skip
            self._out.write(orjson.dumps(line) + b"\n")
        self.counters.add(Slot.KAFKA_DELIVERED)
        return True

    def produce_many(
        self,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes]],
        records: Sequence[int],
        on_last_delivery: Any = None,
    ) -> bool:
        """:meth:`produce` for each of ``messages`` (key, value)."""
        for key, value in messages:
            self.produce(topic, key, value)
        return True

    def commit(self, prefix: bytes = b"", tails: Any = None) -> None:
        self._out.flush()

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def idle(self) -> bool:
        return True  # nothing is ever in flight

    def overflow_events(self) -> list:
        return []  # nothing is ever dropped: the file takes everything

    def close(self, timeout: float | None = None) -> int:
        self._out.close()
        return 0
