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
from fairfeed.core.registry import Registry
from fairfeed.daemon.compute import ComputeWorker
from fairfeed.daemon.ctl_protocol import ProtocolError
from fairfeed.daemon.ingest import IngestWorker
from fairfeed.daemon.subscriptions import Key, SubscriptionBook, SubscriptionError
from fairfeed.daemon.supervisor import ChildSpec, Supervisor
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.ring import Ring
from fairfeed.ipc.streams import StreamBoard

log = logging.getLogger(__name__)


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
    started: float = field(default_factory=time.monotonic)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_argument", message)


def _key_json(key: Key) -> dict[str, str]:
    return {"provider": key[0], "venue": key[1], "instrument": key[2]}


class ControlHandlers:
    """``handlers(cmd, args) -> result``; raises ProtocolError for bad arguments."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._removed_class: dict[Key, str] = {}  # data class of streams just unsubscribed

    def __call__(self, cmd: str, args: dict[str, Any]) -> Any:
        return getattr(self, "cmd_" + cmd.replace("-", "_"))(args)

    # -- argument helpers ------------------------------------------------------------------
    @staticmethod
    def _args(args: dict[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
        unknown = set(args) - allowed
        if unknown:
            raise _invalid(f"unknown argument(s) {sorted(unknown)} (allowed: {sorted(allowed)})")
        missing = required - set(args)
        if missing:
            raise _invalid(f"missing argument(s) {sorted(missing)}")

    @staticmethod
    def _str(args: dict[str, Any], name: str, default: str = "") -> str:
        value = args.get(name, default)
        if not isinstance(value, str):
            raise _invalid(f"{name!r} must be a string")
        return value

    def _keys(self, args: dict[str, Any]) -> tuple[list[Key], str]:
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
    def _broadcast(self, msg: dict[str, Any]) -> None:
        for child in self.rt.children:
            if child.pipe is not None:
                child.pipe.send(msg)

    def _send_changes(self, op: str, keys: tuple[Key, ...]) -> None:
        rt = self.rt
        if not keys:
            return
        per_worker: dict[tuple[int, str], list[list[str]]] = {}
        full: list[list[str]] = []
        for key in keys:
            dclass = rt.book.entries.get(key) or self._removed_class.get(key, "spot")
            per_worker.setdefault((rt.book.worker_of(key), key[0]), []).append(
                [key[1], key[2], dclass]
            )
            full.append([*key, dclass])
        # compute follows the live set (fair prices and anomaly detectors of what is streamed)
        comp = next(c for c in rt.children if c.slot == rt.compute.slot)
        if comp.pipe is not None:
            comp.pipe.send({"op": op, "keys": full})
        for (w, provider), subs in per_worker.items():
            worker = rt.workers[w]
            self._update_assignments(worker, op, provider, subs)
            child = next(c for c in rt.children if c.slot == worker.slot)
            if child.pipe is not None:
                child.pipe.send({"op": op, "provider": provider, "subs": subs})

    def _update_assignments(
        self, worker: IngestWorker, op: str, provider: str, subs: list[list[str]]
    ) -> None:
        """Keep the supervisor's copy current: a restarted worker forks from it."""
        rt = self.rt
        current = worker.assignments.get(provider, ())
        keys = {(v, i) for v, i, _c in subs}
        if op == "subscribe":
            have = {(s.venue, s.instrument) for s in current}
            add = tuple(
                rt.book.subscription((provider, v, i)) for v, i, _c in subs if (v, i) not in have
            )
            worker.assignments[provider] = current + add
        else:
            left = tuple(s for s in current if (s.venue, s.instrument) not in keys)
            if left:
                worker.assignments[provider] = left
            else:
                worker.assignments.pop(provider, None)

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
        keys, dclass = self._keys(args)
        rt = self.rt
        p = rt.cfg.provider(keys[0][0])
        if p.kind == "simulator" and p.serve is not None:
            missing = [k[2] for k in keys if k[2] not in p.serve.prices]
            if missing:
                raise _invalid(f"the local simulator {p.name!r} has no instrument(s) {missing}")
        before = (len(rt.registry.instruments), len(rt.registry.sources))
        try:
            change = rt.book.add(keys, dclass)
        except (ValueError, KeyError) as exc:  # registry capacity or class conflict
            raise ProtocolError("failed", str(exc)) from None
        if (len(rt.registry.instruments), len(rt.registry.sources)) != before:
            self._broadcast({"op": "registry", "snapshot": rt.registry.snapshot()})
        self._send_changes("subscribe", change.changed)
        self._save()
        log.info("ctl: subscribed %d stream(s) of %s", len(change.changed), p.name)
        return {
            "added": [_key_json(k) for k in change.changed],
            "already": [_key_json(k) for k in change.unchanged],
        }

    def cmd_unsubscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        keys, _dclass = self._keys(args)
        rt = self.rt
        classes = {k: rt.book.entries[k] for k in keys if k in rt.book.entries}
        change = rt.book.remove(keys)
        self._removed_class = classes
        self._send_changes("unsubscribe", change.changed)
        self._save()
        log.info("ctl: unsubscribed %d stream(s) of %s", len(change.changed), keys[0][0])
        return {
            "removed": [_key_json(k) for k in change.changed],
            "absent": [_key_json(k) for k in change.unchanged],
        }

    def cmd_list(self, args: dict[str, Any]) -> dict[str, Any]:
        self._args(args, {"provider"})
        only = self._str(args, "provider")
        rt = self.rt
        now = time.time_ns()
        fresh_ns = int(rt.cfg.fair.stale_after * 1e9)
        out = []
        for key, dclass in rt.book.entries.items():
            provider, venue, inst = key
            if only and provider != only:
                continue
            w = rt.book.worker_of(key)
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
            "subscriptions": len(rt.book.entries),
            "processes": procs,
            "rings": rings,
            "kafka": {
                "bootstrap": rt.cfg.kafka.bootstrap,
                "delivered": g(c, Slot.KAFKA_DELIVERED),
                "errors": g(c, Slot.KAFKA_ERRORS),
                "retries": g(c, Slot.KAFKA_RETRIES),
                "dropped": g(c, Slot.KAFKA_DROPPED),
                "queue": g(c, Slot.KAFKA_QUEUE),
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
            raise _invalid(f"unknown log level {level!r} (known: {', '.join(LOG_LEVELS)})")
        logging.getLogger().setLevel(level)
        self._broadcast({"op": "log_level", "level": level})
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
        old_keys = {(p, v, i): c for p, v, i, c in old.subscription_keys()}
        new_keys = {(p, v, i): c for p, v, i, c in new.subscription_keys()}
        gone = [k for k in old_keys if k not in new_keys]
        added: dict[str, list[Key]] = {}
        for k, c in new_keys.items():
            if k not in old_keys:
                added.setdefault(c, []).append(k)
        removed = self.rt.book.remove(gone).changed
        self._removed_class = {k: old_keys[k] for k in removed}
        self._send_changes("unsubscribe", removed)
        before = (len(rt.registry.instruments), len(rt.registry.sources))
        new_streams: list[Key] = []
        for dclass, keys in added.items():
            new_streams += rt.book.add(keys, dclass).changed
        if (len(rt.registry.instruments), len(rt.registry.sources)) != before:
            self._broadcast({"op": "registry", "snapshot": rt.registry.snapshot()})
        self._send_changes("subscribe", tuple(new_streams))
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
            "subscribed": [_key_json(k) for k in new_streams],
            "unsubscribed": [_key_json(k) for k in removed],
            "restart_required": sorted(restart),
        }
