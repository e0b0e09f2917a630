"""Topic checks for the sink: do the topics it writes exist, and create them if allowed.

The check runs in a background thread (an admin request may wait for a broker that is down)
and is asked for again after every producer replacement: a broker restarted without its data
comes back without the topics, and a producer must not have them auto-created with the broker's
default partition count.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from fairfeed.core.config import KafkaConfig
from fairfeed.kafka.client import client_config, scrub

log = logging.getLogger("fairfeed.sink")

_AFTER = re.compile(r" ?\(after \d+ms in state ([A-Z_]+)\)")
_THREAD = re.compile(r"^\[thrd:[^\]]*\]: ")


@dataclass(frozen=True)
class TopicCheck:
    """The result of one check: topics still missing, and why (empty = all there)."""

    missing: tuple[str, ...] = ()
    created: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.error


class _Failures(logging.Logger):
    """librdkafka's log lines for one check: connection failures (FAIL at warning level and
    above: refused, TLS handshake, SASL authentication) are kept as the reasons; every line
    goes on to our log."""

    def __init__(self) -> None:
        super().__init__("fairfeed.kafka")
        self.parent = logging.getLogger("fairfeed")
        self.reasons: dict[str, None] = {}  # ordered, without repeats

    def log(self, level: int, msg: object, *args: object, **kw: Any) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client name, text)
        if level >= logging.WARNING and len(args) == 3 and args[0] == "FAIL":
            self.reasons[_reason(str(args[2]))] = None  # summed up in the check's error
        else:
            super().log(level, msg, *args, **kw)


def _reason(text: str) -> str:
    """A librdkafka FAIL line without its thread tag and timing (so repeats are one)."""
    text = _THREAD.sub("", text)
    after = _AFTER.search(text)
    if after is None:
        return text
    state = "" if " in state " in text[: after.start()] else f" (in state {after[1]})"
    return text[: after.start()].rstrip() + state + text[after.end() :]


def admin_config(cfg: KafkaConfig, timeout: float) -> dict[str, Any]:
    """An admin client's configuration: the producer's broker, credentials and security."""
    conf = client_config(cfg, "admin")
    conf["socket.timeout.ms"] = int(timeout * 1000)
    # A TLS client at a plaintext port waits in the handshake until this: keep it inside the
    # check's timeout, so the failure is reported with its state instead of a bare timeout.
    conf["socket.connection.setup.timeout.ms"] = max(1000, int(timeout * 500))
    return conf


def check_topics(cfg: KafkaConfig, topics: Iterable[str], timeout: float = 5.0) -> TopicCheck:
    """Which of ``topics`` are missing; creates them when ``cfg.create_topics`` (with
    ``cfg.topic_partitions`` partitions and ``cfg.replication_factor`` replicas). Never raises:
    a failure is the result's ``error``, with librdkafka's reasons (an authentication or TLS
    failure is named, not just "transport failure"), secrets removed."""
    names = sorted(set(topics))
    conf = admin_config(cfg, timeout)
    failures = _Failures()
    conf["logger"] = failures
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:  # e.g. a certificate librdkafka cannot load
        text = f"cannot create a Kafka client: {exc.args[0]}"
        return TopicCheck(tuple(names), error=scrub(text, conf))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        admin.poll(0.2)  # serves the log queue: why the brokers could not be reached
        err = exc.args[0]
        text = f"cannot list topics: {err.str() if isinstance(err, KafkaError) else err}"
        if failures.reasons:
            text += f" ({'; '.join(failures.reasons)})"
        return TopicCheck(tuple(names), error=scrub(text, conf))
    missing = [t for t in names if t not in existing]
    if not missing or not cfg.create_topics:
        return TopicCheck(tuple(missing))
    replicas = cfg.replication_factor
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=cfg.topic_partitions, replication_factor=replicas)
            for t in missing
        ],
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
    return TopicCheck(tuple(still), tuple(created), scrub("; ".join(errors), conf))


class TopicGuard:
    """Runs :func:`check_topics` in one background thread; :meth:`result` polls it."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
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
        self._future = self._pool.submit(check_topics, self.cfg, tuple(topics))

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
