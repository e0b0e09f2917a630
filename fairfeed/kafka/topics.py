"""Topic checks for the sink: do the topics it writes exist, and create them if allowed.

The check runs in a background thread (an admin request may wait for a broker that is down)
and is asked for again after every producer replacement: a broker restarted without its data
comes back without the topics, and a producer must not have them auto-created with the broker's
default partition count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("fairfeed.sink")

# librdkafka settings an admin client shares with the producer (address and security).
_SHARED_PREFIXES = ("bootstrap.servers", "security.", "sasl.", "ssl.", "client.id")


@dataclass(frozen=True)
class TopicCheck:
    """The result of one check: topics still missing, and why (empty = all there)."""

    missing: tuple[str, ...] = ()
    created: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.error


def admin_config(producer_conf: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """An admin client's configuration from a producer's (same broker, same credentials)."""
    conf = {k: v for k, v in producer_conf.items() if k.startswith(_SHARED_PREFIXES)}
    conf["socket.timeout.ms"] = int(timeout * 1000)
    return conf


def check_topics(
    conf: Mapping[str, Any],
    topics: Iterable[str],
    partitions: int,
    create: bool,
    timeout: float = 5.0,
) -> TopicCheck:
    """Which of ``topics`` are missing; creates them (``partitions`` partitions, the broker's
    default replication) when ``create``. Never raises: a failure is the result's ``error``."""
    names = sorted(set(topics))
    try:
        admin = AdminClient(admin_config(conf, timeout))
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        return TopicCheck(tuple(names), error=f"cannot list topics: {exc.args[0]}")
    missing = [t for t in names if t not in existing]
    if not missing or not create:
        return TopicCheck(tuple(missing))
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions) for t in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    still, created, errors = [], [], []
    for topic, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(topic)
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            still.append(topic)
            errors.append(f"{topic}: {err}")
        except Exception as exc:  # a timeout of the future itself
            still.append(topic)
            errors.append(f"{topic}: {exc!r}")
    return TopicCheck(tuple(still), tuple(created), "; ".join(errors))


class TopicGuard:
    """Runs :func:`check_topics` in one background thread; :meth:`result` polls it."""

    def __init__(self, conf: Mapping[str, Any], partitions: int, create: bool) -> None:
        self.conf = dict(conf)
        self.partitions = partitions
        self.create = create
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[TopicCheck] | None = None

    @property
    def busy(self) -> bool:
        return self._future is not None

    def request(self, topics: Iterable[str]) -> None:
        """Start a check of ``topics`` unless one is running."""
        if self._future is not None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-topics")
        self._future = self._pool.submit(
            check_topics, self.conf, tuple(topics), self.partitions, self.create
        )

    def result(self) -> TopicCheck | None:
        """The finished check (once), or None while it runs or when none was asked for."""
        fut = self._future
        if fut is None or not fut.done():
            return None
        self._future = None
        return fut.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._future = None
