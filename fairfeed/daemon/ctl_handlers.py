"""The control-socket commands, one method each, over the supervisor's live state.

Subscription changes are applied live: the supervisor updates its subscription book and
registry, tells every child about new ids first (compute must be able to name them), then sends
the change to the one ingest worker that owns each stream, which touches only that provider's
affected connection. The book is saved to the state file after every change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairfeed.core import config as config_mod
from fairfeed.core.config import LOG_LEVELS, Config
from fairfeed.core.counters import Slot
from fairfeed.core.names import shown
from fairfeed.core.options import KrakenFuturesOptions, kraken_futures_problem
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import (
    Key,
    Stream,
    Subscribe,
    SubscriptionChange,
    SubscriptionSet,
    Unsubscribe,
)
from fairfeed.daemon.commands import Command, GrowRegistry, SetLogLevel
from fairfeed.daemon.compute import ComputeWorker
from fairfeed.daemon.ctl_protocol import ProtocolError
from fairfeed.daemon.ingest import IngestWorker
from fairfeed.daemon.sockserve import LoopServer
from fairfeed.daemon.subscriptions import SubscriptionBook, SubscriptionError
from fairfeed.daemon.supervisor import ChildSpec, Supervisor
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.ring import Ring
from fairfeed.ipc.streams import StreamBoard
from fairfeed.kafka.client import describe

log = logging.getLogger(__name__)

# Characters in one string argument: every name, level and class is far shorter, and nothing
# longer is stored, sent to a child or quoted back.
MAX_ARG = 64


@dataclass
class Runtime:
    """What the control commands act on; filled in by ``fairfeed.daemon.run``."""

    cfg: Config
    registry: Registry
    book: SubscriptionBook
    state_path: Path
    control: ControlBlock
    rings: list[Ring]
    streams: StreamBoard
    workers: list[IngestWorker]
    compute: ComputeWorker
    children: list[ChildSpec] = field(default_factory=list)
    supervisor: Supervisor | None = None
    socket_path: str = ""
    served: list[LoopServer] = field(default_factory=list)  # the control socket, HTTP
    started: float = field(default_factory=time.monotonic)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_argument", message)


def _key_json(key: Key) -> dict[str, str]:
    return {"provider": key[0], "venue": key[1], "instrument": key[2]}


class ControlHandlers:
    """``handlers(cmd, args) -> result``; raises ProtocolError for bad arguments."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def __call__(self, cmd: str, args: dict[str, Any]) -> Any:
        return getattr(self, "cmd_" + cmd.replace("-", "_"))(args)

    # -- argument helpers ------------------------------------------------------------------
    @staticmethod
    def _args(args: dict[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
        unknown = set(args) - allowed
        if unknown:
            names = ", ".join(shown(u) for u in sorted(unknown)[:5])
            raise _invalid(f"unknown argument(s) {names} (allowed: {sorted(allowed)})")
        missing = required - set(args)
        if missing:
            raise _invalid(f"missing argument(s) {sorted(missing)}")

    @staticmethod
    def _str(args: dict[str, Any], name: str, default: str = "") -> str:
        value = args.get(name, default)
        if not isinstance(value, str):
            raise _invalid(f"{name!r} must be a string")
        if len(value) > MAX_ARG:
            raise _invalid(f"{name!r} is {len(value)} characters long: at most {MAX_ARG}")
        return value

    def _streams(self, args: dict[str, Any]) -> list[Stream]:
        self._args(
            args, {"provider", "instruments", "venue", "data_class"}, {"provider", "instruments"}
        )
        instruments = args["instruments"]
        if isinstance(instruments, str):
            instruments = [instruments]
        if not isinstance(instruments, list) or not all(isinstance(i, str) for i in instruments):
            raise _invalid("'instruments' must be a list of instrument names")
        if len(instruments) > 10_000:
            raise _invalid("at most 10000 instruments per request")
        try:
            return self.rt.book.resolve(
                self._str(args, "provider"),
                instruments,
                self._str(args, "venue"),
                self._str(args, "data_class"),
            )
        except SubscriptionError as exc:
            raise _invalid(str(exc)) from None

    # -- messaging children ----------------------------------------------------------------
    def _send(self, child: ChildSpec, cmd: Command) -> None:
        if child.pipe is not None:
            child.pipe.send(cmd)

    def _broadcast(self, cmd: Command) -> None:
        for child in self.rt.children:
            self._send(child, cmd)

    def _grow_registry(self, before: tuple[int, int]) -> None:
        """Tell every child about ids added since ``before`` (instrument and source counts),
        before any change can make a record carry them."""
        reg = self.rt.registry
        if (len(reg.instruments), len(reg.sources)) != before:
            self._broadcast(GrowRegistry(reg.snapshot()))

    def _send_change(self, change: SubscriptionChange) -> None:
        """Compute follows the whole live set; each ingest worker gets its own streams, and the
        supervisor's copy of its set changes by the same rule (a restarted worker forks from it).
        """
        rt = self.rt
        if not change.streams:
            return
        comp = next(c for c in rt.children if c.slot == rt.compute.slot)
        self._send(comp, change)
        per_worker: dict[int, list[Stream]] = {}
        for s in change.streams:
            per_worker.setdefault(s.owner(len(rt.workers)), []).append(s)
        for w, streams in per_worker.items():
            worker = rt.workers[w]
            part = type(change)(tuple(streams))
            worker.subs.apply(part)
            self._send(next(c for c in rt.children if c.slot == worker.slot), part)

    def _save(self) -> None:
        try:
            self.rt.book.save(self.rt.state_path)
        except OSError as exc:
            # The change is live; only its persistence failed: say so, loudly.
            log.error("cannot write the state file %s: %s", self.rt.state_path, exc)
            raise ProtocolError(
                "failed", f"applied, but the state file {self.rt.state_path} was not written: {exc}"
            ) from exc

    # -- commands --------------------------------------------------------------------------
    def cmd_subscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        streams = self._streams(args)
        rt = self.rt
        p = rt.cfg.provider(streams[0].provider)
        if p.kind == "simulator" and p.serve is not None:
            missing = [s.instrument for s in streams if s.instrument not in p.serve.prices]
            if missing:
                raise _invalid(f"the local simulator {p.name!r} has no instrument(s) {missing}")
        if isinstance(p.options, KrakenFuturesOptions):  # as checked at load
            for s in streams:
                problem = kraken_futures_problem(s.instrument, s.data_class, p.options.products)
                if problem:
                    raise _invalid(f"{problem} (provider {p.name!r})")
        before = (len(rt.registry.instruments), len(rt.registry.sources))
        try:
            change = rt.book.add(streams)
        except (ValueError, KeyError) as exc:  # registry capacity or class conflict
            raise ProtocolError("failed", str(exc)) from None
        self._grow_registry(before)
        self._send_change(Subscribe(change.changed))
        self._save()
        log.info("ctl: subscribed %d stream(s) of %s", len(change.changed), p.name)
        return {
            "added": [_key_json(s.key) for s in change.changed],
            "already": [_key_json(k) for k in change.unchanged],
        }

    def cmd_unsubscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        streams = self._streams(args)
        change = self.rt.book.remove([s.key for s in streams])
        self._send_change(Unsubscribe(change.changed))
        self._save()
        log.info("ctl: unsubscribed %d stream(s) of %s", len(change.changed), streams[0].provider)
        return {
            "removed": [_key_json(s.key) for s in change.changed],
            "absent": [_key_json(k) for k in change.unchanged],
        }

    def cmd_list(self, args: dict[str, Any]) -> dict[str, Any]:
        self._args(args, {"provider"})
        only = self._str(args, "provider")
        rt = self.rt
        now = time.time_ns()
        fresh_ns = int(rt.cfg.fair.stale_after * 1e9)
        out = []
        for s in rt.book.live:
            key, dclass = s.key, s.data_class
            provider, venue, inst = key
            if only and provider != only:
                continue
            w = s.owner(len(rt.workers))
            worker = rt.workers[w]
            count = last = 0
            try:
                i = rt.registry.instrument_id(inst)
                s = rt.registry.source_id(provider, venue)
                if i < rt.streams.count.shape[0] and s < rt.streams.count.shape[1]:
                    count = int(rt.streams.count[i, s])
                    last = int(rt.streams.last_ts[i, s])
            except KeyError:
                pass
            age = (now - last) / 1e9 if last else None
            if not count:
                state = "waiting"
            elif now - last <= fresh_ns:
                state = "streaming"
            else:
                state = "silent"
            out.append(
                {
                    **_key_json(key),
                    "data_class": dclass,
                    "worker": w,
                    "state": state,
                    "connections": rt.control.get(worker.slot, Slot.CONNECTED),
                    "messages": count,
                    "last_data_age": age,
                }
            )
        return {"subscriptions": out}

    def cmd_status(self, args: dict[str, Any]) -> dict[str, Any]:
        self._args(args, set())
        rt = self.rt
        sup = rt.supervisor
        now = time.monotonic()
        procs = []
        for child in rt.children:
            procs.append(
                {
                    "name": child.name,
                    "pid": child.pid or None,
                    "ready": bool(rt.control.get(child.slot, Slot.READY)) and bool(child.pid),
                    "heartbeat_age": round(now - child.last_beat_change, 3) if child.pid else None,
                    "restarts": child.restarts,
                    "last_exit": child.last_status or None,
                }
            )
        rings = [
            {
                "worker": i,
                "fill": r.fill(),
                "capacity": r.capacity,
                "written": r.written,
                "dropped": r.dropped,
            }
            for i, r in enumerate(rt.rings)
        ]
        c = rt.compute.slot
        g = rt.control.get
        return {
            "pid": os.getpid(),
            "uptime": round(now - rt.started, 3),
            "config": rt.cfg.source,
            "control_socket": rt.socket_path,
            "state_file": str(rt.state_path),
            "subscriptions": len(rt.book.live),
            "processes": procs,
            "rings": rings,
            "kafka": {
                "bootstrap": rt.cfg.kafka.bootstrap,
                "security": describe(rt.cfg.kafka),
                "delivered": g(c, Slot.KAFKA_DELIVERED),
                "errors": g(c, Slot.KAFKA_ERRORS),
                "retries": g(c, Slot.KAFKA_RETRIES),
                "dropped": g(c, Slot.KAFKA_DROPPED),
                "queue": g(c, Slot.KAFKA_QUEUE),
                "spool_messages": g(c, Slot.SPOOL_MESSAGES),
                "spool_bytes": g(c, Slot.SPOOL_BYTES),
                "resent": g(c, Slot.SPOOL_RESENT),
                "output_state": g(c, Slot.OUTPUT_STATE),
            },
            "stopping": bool(sup and sup.stopping),
        }

    def cmd_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        self._args(args, set())
        rt = self.rt
        per = {}
        for child in rt.children:
            row = rt.control.slots[child.slot]
            per[child.name] = {f.name.lower(): int(row[f]) for f in Slot if f is not Slot.PID}
        totals = {
            f.name.lower(): sum(v[f.name.lower()] for v in per.values())
            for f in Slot
            if f not in (Slot.PID, Slot.HEARTBEAT, Slot.READY)
        }
        return {"processes": per, "totals": totals}

    def cmd_set_log_level(self, args: dict[str, Any]) -> dict[str, Any]:
        self._args(args, {"level"}, {"level"})
        level = self._str(args, "level").upper()
        if level not in LOG_LEVELS:
            raise _invalid(f"unknown log level {shown(level)} (known: {', '.join(LOG_LEVELS)})")
        logging.getLogger().setLevel(level)
        self._broadcast(SetLogLevel(level))
        return {"level": level}

    def reload_now(self) -> None:
        """SIGHUP: the same as ``ctl reload``, reported in the log."""
        try:
            result = self.cmd_reload({})
        except ProtocolError as exc:
            raise RuntimeError(exc.message) from None
        log.info(
            "reloaded: %d subscribed, %d unsubscribed, restart required for: %s",
            len(result["subscribed"]),
            len(result["unsubscribed"]),
            ", ".join(result["restart_required"]) or "nothing",
        )

    def cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        self._args(args, set())
        rt = self.rt
        if rt.cfg.source.startswith("<"):
            raise ProtocolError("failed", "running on the embedded default: no file to reload")
        try:
            new = config_mod.load(rt.cfg.source)
        except config_mod.ConfigError as exc:
            raise _invalid(str(exc)) from None
        old = rt.cfg
        restart = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in ("subscriptions", "source", "daemon")
            and getattr(old, f.name) != getattr(new, f.name)
        ]
        if dataclasses.replace(new.daemon, log_level=old.daemon.log_level) != old.daemon:
            restart.append("daemon")
        if "providers" in restart:
            raise ProtocolError(
                "failed",
                "the providers changed: that needs a restart (nothing was applied)",
            )
        old_set, new_set = SubscriptionSet(old.streams()), SubscriptionSet(new.streams())
        gone = [s.key for s in old_set if s not in new_set]
        removed = rt.book.remove(gone).changed
        self._send_change(Unsubscribe(removed))
        before = (len(rt.registry.instruments), len(rt.registry.sources))
        new_streams = rt.book.add([s for s in new_set if s not in old_set]).changed
        self._grow_registry(before)
        self._send_change(Subscribe(new_streams))
        if new.daemon.log_level != old.daemon.log_level:
            self.cmd_set_log_level({"level": new.daemon.log_level})
        rt.cfg = dataclasses.replace(
            old, subscriptions=new.subscriptions, daemon=dataclasses.replace(
                old.daemon, log_level=new.daemon.log_level
            )
        )  # fmt: skip
        rt.book.cfg = rt.cfg
        self._save()
        return {
            "subscribed": [_key_json(s.key) for s in new_streams],
            "unsubscribed": [_key_json(s.key) for s in removed],
            "restart_required": sorted(restart),
        }
