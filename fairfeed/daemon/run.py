"""`fairfeed run`: build the registry, shared memory and children, then supervise them."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from fairfeed.core.config import Config, ConfigError
from fairfeed.core.counters import Slot
from fairfeed.core.records import CLASS_CODES
from fairfeed.core.registry import Registry, RegistryError
from fairfeed.core.subscriptions import SubscriptionSet
from fairfeed.daemon.child import configure_logging
from fairfeed.daemon.commands import CommandPipe
from fairfeed.daemon.compute import ComputeWorker
from fairfeed.daemon.ctl_handlers import ControlHandlers, Runtime
from fairfeed.daemon.ctl_server import ControlServer, ControlSocketError, default_socket_path
from fairfeed.daemon.ingest import IngestWorker
from fairfeed.daemon.liveview import LiveView
from fairfeed.daemon.proctitle import set_title
from fairfeed.daemon.readiness import readiness_problems
from fairfeed.daemon.sdnotify import SdNotify, watchdog_interval
from fairfeed.daemon.service import ReadyCheck, ServiceNotifier
from fairfeed.daemon.simulators import SimulatorHost
from fairfeed.daemon.subscriptions import SubscriptionBook, default_state_file
from fairfeed.daemon.supervisor import ChildSpec, Supervisor
from fairfeed.hotpath.metrics import warm_metrics
from fairfeed.hotpath.warmup import warm_up
from fairfeed.ipc.blobring import BlobRing
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.doorbell import Doorbell
from fairfeed.ipc.lastids import LastIds
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.ipc.pacer import Pacer
from fairfeed.ipc.ring import Ring
from fairfeed.ipc.shm import SHM_DIR, list_segments
from fairfeed.ipc.streams import StreamBoard
from fairfeed.kafka.broker import LocalBroker, free_port
from fairfeed.kafka.client import describe
from fairfeed.kafka.spool import Spool, SpoolError
from fairfeed.kafka.topics import check_topics
from fairfeed.local.catalog import local_url, prepare_local_keys
from fairfeed.providers.base import required_api_key
from fairfeed.providers.catalog import adapter_class

log = logging.getLogger("fairfeed")

TOPIC_KEYS = (
    "ticks_topic",
    "fair_topic",
    "dead_letter_topic",
    "anomalies_topic",
    "derivatives_topic",
)


def check_output_topics(cfg: Config) -> bool:
    """Create the output topics when ``kafka.create_topics``, or name each missing one with its
    key; a broker that is down is not an error: output waits in the spool and the compute
    process checks again. Returns whether the broker answered."""
    k = cfg.kafka
    keys = {getattr(k, key): f"kafka.{key}" for key in TOPIC_KEYS}
    check = check_topics(k, keys)
    if check.created:
        log.info("created topics %s (%d partitions, replication factor %s)",
                 ", ".join(check.created), k.topic_partitions,
                 k.replication_factor if k.replication_factor > 0 else "of the broker")  # fmt: skip
    if check.error:
        log.warning("kafka at %s (%s): %s; output is spooled until it answers", k.bootstrap,
                    describe(k), check.error)  # fmt: skip
    elif check.missing:
        log.error("kafka: topic(s) missing on %s: %s; kafka.create_topics is false, so output "
                  "is spooled until they exist: create them (%d partitions each, "
                  "docs/kafka-schema.md) or set kafka.create_topics = true", k.bootstrap,
                  ", ".join(f"{t} ({keys[t]})" for t in check.missing),
                  k.topic_partitions)  # fmt: skip
    return not check.error


def check_spool(path: Path, max_bytes: int) -> None:
    """Open the output spool once before forking: a bad or locked directory stops the start
    with a clear message, and leftovers of an earlier run are announced."""
    try:
        spool = Spool(path, max_bytes)
    except SpoolError as exc:
        raise ConfigError(f"kafka.spool_dir: {exc}") from None
    try:
        if spool.pending:
            log.warning("the output spool %s holds %d messages (%d bytes) of an earlier run: "
                        "they are sent first", path, spool.pending, spool.bytes)  # fmt: skip
    finally:
        spool.close()


def check_api_keys(cfg: Config) -> None:
    """Every provider whose protocol needs an API key has one (served ones got the local key):
    without it an adapter would only loop on authentication errors, so the start stops here,
    naming the environment variable."""
    for p in cfg.providers:
        service = adapter_class(p.kind).api_key_service
        if service:
            try:
                required_api_key(p, service)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


def build_registry(cfg: Config) -> Registry:
    """Ids for every subscribed instrument and every (provider, venue) source."""
    streams = cfg.streams()
    seen: dict[str, str] = {}
    for s in streams:
        if seen.setdefault(s.instrument, s.data_class) != s.data_class:
            raise ConfigError(
                f"{cfg.source}: instrument {s.instrument!r} is subscribed as "
                f"{seen[s.instrument]} and as {s.data_class}: give derivatives their own names "
                f"(e.g. {s.instrument}-PERP)"
            )
    instruments = [(inst, CLASS_CODES[dclass]) for inst, dclass in seen.items()]
    sources = [(s.provider, s.venue) for s in streams]
    try:
        return Registry.build(
            instruments, sources, cfg.daemon.max_instruments, cfg.daemon.max_sources
        )
    except RegistryError as exc:
        raise ConfigError(f"{cfg.source}: {exc.args[0]}: raise daemon.max_*") from None


def assign_subscriptions(cfg: Config, registry: Registry, workers: int) -> list[SubscriptionSet]:
    """Per ingest worker: its part of the configured subscriptions (rendezvous hashing)."""
    return SubscriptionBook(cfg, registry, workers).partition()


def sweep_stale_segments(prefix: str) -> list[str]:
    """Unlink segments left by a daemon that was killed (its pid is in the name and gone)."""
    removed = []
    for name in list_segments(f"{prefix}-"):
        parts = name.split("-")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def run(
    cfg: Config,
    *,
    live_view: bool | None = None,
    collect: Path | None = None,
    stop_when: Callable[[ControlBlock, int, list[int]], bool] | None = None,
) -> int:
    """Run the daemon until SIGTERM / SIGINT; returns the exit status.

    For ``fairfeed replay``: ``collect`` is the file the compute process writes fair prices and
    anomalies to when no broker is configured (no local broker is started then);
    ``stop_when(control, simulators_slot, ingest_slots)``, asked every supervisor tick, starts
    the graceful stop when it returns True.
    """
    configure_logging("supervisor", cfg.daemon.log_level)
    set_title("supervisor")
    service = ServiceNotifier(SdNotify.from_environment(), watchdog_interval())
    service.status("starting: loading the configuration")
    registry = build_registry(cfg)
    prepare_local_keys(cfg)
    check_api_keys(cfg)
    for name in sweep_stale_segments(cfg.daemon.shm_prefix):
        log.warning("removed shared-memory segment %s left by a dead daemon", name)
    # A first start compiles every kernel (~15 s on 2 cores); later starts load the cache.
    log.info("loading the Numba kernels (compiled and cached on a first start)")
    service.status("starting: loading the Numba kernels")
    compile_s = warm_up()
    if cfg.metrics.listen:
        warm_metrics()
    log.info("kernels ready in %.2fs", compile_s)

    broker: LocalBroker | None = None
    rings: list[Ring] = []
    doorbell: Doorbell | None = None
    blobs: list[BlobRing] = []
    control: ControlBlock | None = None
    streams: StreamBoard | None = None
    last_ids: LastIds | None = None
    pacer: Pacer | None = None
    ctl: ControlServer | None = None
    board: MetricsBoard | None = None
    http = None
    try:
        to_file = collect is not None and not cfg.kafka.bootstrap
        service.status("starting: checking Kafka")
        if not cfg.kafka.bootstrap and not to_file:
            broker = LocalBroker().start()
            cfg = dataclasses.replace(
                cfg, kafka=dataclasses.replace(cfg.kafka, bootstrap=broker.bootstrap)
            )
        kafka_answered = to_file or check_output_topics(cfg)
        served = [p for p in cfg.providers if p.serve is not None or p.replay is not None]
        ports = {p.name: free_port() for p in served}
        urls = {
            p.name: local_url(p, ports[p.name]) if p.name in ports else p.url for p in cfg.providers
        }

        n_workers = cfg.daemon.workers
        serving = bool(ports)
        n_slots = n_workers + 1 + int(serving)
        prefix = f"{cfg.daemon.shm_prefix}-{os.getpid()}"
        d = cfg.daemon
        control = ControlBlock.create(f"{prefix}-control", n_slots, d.max_instruments)
        streams = StreamBoard.create(f"{prefix}-streams", d.max_instruments, d.max_sources)
        last_ids = LastIds.create(f"{prefix}-lastids", d.max_instruments, d.max_sources)
        pacer = Pacer.create(f"{prefix}-pacer", [p.name for p in cfg.providers])
        if cfg.metrics.listen:
            board = MetricsBoard.create(f"{prefix}-metrics", d.max_instruments, d.max_sources)
        rings = [Ring.create(f"{prefix}-ring{i}", cfg.ring.capacity) for i in range(n_workers)]
        doorbell = Doorbell()  # the ingest workers wake compute with it when it sleeps
        blobs = [
            BlobRing.create(f"{prefix}-dead{i}", cfg.ring.dead_letter_bytes)
            for i in range(n_workers)
        ]

        book = SubscriptionBook(cfg, registry, n_workers)
        state_path = Path(d.state_file) if d.state_file else default_state_file()
        spool_dir = (
            Path(cfg.kafka.spool_dir) if cfg.kafka.spool_dir else state_path.parent / "spool"
        )
        if not to_file:
            check_spool(spool_dir, cfg.kafka.spool_max_bytes)
        log.info("%s", book.restore(state_path))
        try:
            book.save(state_path)  # proves the state file writable before anything starts
        except OSError as exc:
            raise ConfigError(
                f"daemon.state_file: cannot write {state_path}: {exc.strerror or exc}"
            ) from None
        parts = book.partition()
        children: list[ChildSpec] = []
        slot = 0
        if serving:
            host = SimulatorHost(slot, cfg, control, ports)
            # Local servers first, so the adapters' first connection attempts succeed.
            children.append(ChildSpec(host.name, slot, host.main, stop_phase=1, wait_ready=True))
            slot += 1
        ingest_slots = []
        workers = []
        for i in range(n_workers):
            pipe = CommandPipe()
            w = IngestWorker(
                i, slot, cfg, registry, rings[i], control, parts[i], urls, blobs[i], pipe, last_ids,
                pacer, doorbell=doorbell,
            )  # fmt: skip
            children.append(ChildSpec(w.name, slot, w.main, stop_phase=0, pipe=pipe))
            workers.append(w)
            ingest_slots.append(slot)
            slot += 1
        pipe = CommandPipe()
        comp = ComputeWorker(
            slot,
            cfg,
            registry,
            rings,
            blobs,
            control,
            streams,
            pipe,
            metrics=board,
            live=book.live,
            spool_dir=spool_dir,
            ring_prefix=prefix,
            collect=collect if to_file else None,
            doorbell=doorbell,
        )
        children.append(ChildSpec(comp.name, slot, comp.main, stop_phase=2, pipe=pipe))

        rt = Runtime(cfg, registry, book, state_path, control, rings, streams, workers, comp)
        rt.children = children
        socket_path = Path(d.control_socket) if d.control_socket else default_socket_path()
        handlers = ControlHandlers(rt)
        ctl = ControlServer(
            socket_path,
            handlers,
            group=d.control_group,
            max_clients=d.control_max_clients,
            idle_timeout=d.control_idle_timeout,
            max_output=d.control_max_output,
        )
        try:
            ctl.open()
        except ControlSocketError as exc:  # another daemon on this path, permissions, group
            key = "daemon.control_group" if "control_group" in str(exc) else "daemon.control_socket"
            raise ConfigError(f"{key}: {exc}") from None
        rt.served.append(ctl)
        rt.socket_path = str(socket_path)

        _announce(cfg, registry, urls, broker, prefix, str(socket_path))
        http = _open_metrics(rt, board, slot)
        print("  Ctrl-C stops everything.", flush=True)
        if live_view is None:
            live_view = cfg.daemon.live_view == "on" or (
                cfg.daemon.live_view == "auto" and sys.stdout.isatty()
            )
        view = LiveView(registry, ingest_slots, slot) if live_view else None
        on_tick = view
        if stop_when is not None:
            ctl_block = control

            def on_tick(sup: Supervisor) -> None:
                if view is not None:
                    view(sup)
                if not sup.stopping and stop_when(ctl_block, 0, ingest_slots):
                    log.info("replay complete: stopping")
                    sup.stopping = True
                    sup.stop_reason = "replay complete"

        rt.supervisor = Supervisor(
            cfg.daemon,
            control,
            children,
            on_tick=on_tick,
            io=[ctl] if http is None else [ctl, http],
            on_hup=handlers.reload_now,
            service=service,
        )
        service.ready_check = _ready_check(rt, slot, kafka_answered)
        service.status(f"starting: {len(children)} children")
        return rt.supervisor.run()
    finally:
        if ctl is not None:
            ctl.close()
        if http is not None:
            http.close()
        for ring in [*rings, *blobs]:
            ring.close()
            ring.unlink()
        if doorbell is not None:
            doorbell.close()
        for seg in (control, streams, board, last_ids, pacer):
            if seg is not None:
                seg.close()
                seg.unlink()
        if broker is not None:
            broker.stop()
        log.info("stopped; shared memory unlinked%s", ", broker stopped" if broker else "")
        service.notify.close()


def _ready_check(rt: Runtime, compute_slot: int, kafka_answered: bool) -> ReadyCheck:
    """systemd's readiness: what ``/readyz`` checks, and a broker that has answered once."""

    def check() -> tuple[bool, str]:
        problems = readiness_problems(rt.cfg.daemon, rt.control, rt.children, compute_slot)
        answered = kafka_answered or rt.control.get(compute_slot, Slot.KAFKA_DELIVERED) > 0
        if not answered:
            problems.append(f"kafka at {rt.cfg.kafka.bootstrap} has not answered yet")
        if problems:
            return False, "starting, not ready: " + "; ".join(problems)
        up = sum(1 for ch in rt.children if ch.pid)
        return True, f"ready: {up} children up, Kafka output delivering"

    return check


def _open_metrics(rt: Runtime, board: MetricsBoard | None, compute_slot: int):
    """The /metrics endpoint, open, or None (disabled, or its address is unusable: the data
    path matters more than its metrics, so that is an error in the log, not a stop)."""
    if not rt.cfg.metrics.listen:
        return None
    from fairfeed.daemon.metrics import build_endpoint
    from fairfeed.daemon.metrics_http import MetricsServerError

    http, _collector = build_endpoint(rt, board, compute_slot)
    try:
        http.open()
    except MetricsServerError as exc:
        log.error("%s: running without metrics", exc)
        print(f"  metrics    unavailable: {exc}", flush=True)
        return None
    print(f"  metrics    {http.url}/metrics (/healthz, /readyz)", flush=True)
    return http


def _announce(
    cfg: Config,
    registry: Registry,
    urls: dict[str, str],
    broker: LocalBroker | None,
    prefix: str,
    socket_path: str,
) -> None:
    where = "local Tansu broker started for this run" if broker else "configured"
    print(
        f"fairfeed {os.getpid()}: config {cfg.source}\n"
        f"  kafka      {cfg.kafka.bootstrap} ({where}, {describe(cfg.kafka)}); topics "
        f"{cfg.kafka.ticks_topic}, "
        f"{cfg.kafka.fair_topic}, {cfg.kafka.anomalies_topic}, {cfg.kafka.dead_letter_topic}, "
        f"{cfg.kafka.derivatives_topic}\n"
        f"  providers  "
        + ", ".join(f"{name} {url}" for name, url in urls.items())
        + f"\n  instruments {', '.join(registry.instruments)}\n"
        f"  workers    {cfg.daemon.workers} ingest + 1 compute;"
        f" shared memory {SHM_DIR}/{prefix}-*\n"
        f"  control    {socket_path} (fairfeed ctl --socket {socket_path} status)",
        flush=True,
    )
