"""Ingest worker: one process, one asyncio loop, the provider connections of one partition.

Its ``emit`` is a :class:`~fairfeed.daemon.backpressure.RingWriter`: a full ring never blocks the
loop; records that do not fit are held back while every adapter stops reading, for at most
``ring.block_timeout_ms``, then dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from fairfeed.core.config import MAX_BLOCK_TIMEOUT_MS, Config
from fairfeed.core.counters import Slot
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscribe, Subscription, SubscriptionSet, Unsubscribe
from fairfeed.daemon.backpressure import RingWriter
from fairfeed.daemon.child import (
    EXIT_ERROR,
    EXIT_OK,
    Heartbeat,
    enter_child,
    settle_heap,
    sigterm_event,
)
from fairfeed.daemon.commands import Command, CommandPipe, GrowRegistry, SetLogLevel
from fairfeed.ipc.blobring import BlobRing
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.counters import SlotCounters
from fairfeed.ipc.doorbell import Doorbell
from fairfeed.ipc.lastids import LastIds
from fairfeed.ipc.pacer import Pacer
from fairfeed.ipc.ring import OverflowPolicy, Ring
from fairfeed.kafka.encode import encode_dead_letter
from fairfeed.providers.base import Adapter, DeadLetter, IngestContext, api_key
from fairfeed.providers.catalog import adapter_class
from fairfeed.providers.redact import Redactor

log = logging.getLogger("fairfeed.ingest")


@dataclass
class IngestWorker:
    """Everything one ingest worker needs; built by the supervisor before fork."""

    index: int
    slot: int
    cfg: Config
    registry: Registry
    ring: Ring
    control: ControlBlock
    subs: SubscriptionSet  # this worker's partition of the live set
    urls: dict[str, str]  # provider -> resolved endpoint
    dead_letters: BlobRing  # malformed frames for the dead-letter topic
    pipe: CommandPipe | None = None  # commands from the supervisor
    last_ids: LastIds | None = None  # last id published per stream (outlives this process)
    pacer: Pacer | None = None  # per-IP pacing of connections and messages, shared by workers
    doorbell: Doorbell | None = None  # wakes compute when it sleeps on empty rings
    writer: RingWriter | None = field(default=None, init=False)  # its emit, set in the child

    @property
    def name(self) -> str:
        return f"ingest-{self.index}"

    def main(self) -> int:
        """Child entry point (runs after fork)."""
        enter_child(self.name, self.cfg.daemon.log_level, self.control, self.slot)
        return asyncio.run(self._run())

    async def _run(self) -> int:
        stop = sigterm_event()
        self.counters = counters = SlotCounters(self.control, self.slot)
        policy = OverflowPolicy(
            block_timeout=self.cfg.ring.block_timeout_ms / 1000,
            pending_records=self.cfg.ring.pending_records,
            max_pause=MAX_BLOCK_TIMEOUT_MS / 1000,  # the longest any pause may last (pings)
        )
        self.adapters: dict[str, Adapter] = {}
        self.writer = writer = RingWriter(
            self.ring,
            counters,
            policy,
            self._pause_reading,
            self._resume_reading,
            doorbell=self.doorbell,
        )
        self._emit = writer.emit
        self.tasks: dict[str, asyncio.Task] = {}
        self._ended = asyncio.Event()  # an adapter's task ended on its own
        self._pending: set[asyncio.Future] = set()
        for provider in self.subs.providers():
            self._start_adapter(provider, self.subs.resolve(self.registry, provider))
        if self.pipe is not None:
            reader = self.pipe.child_side()
            asyncio.get_running_loop().add_reader(reader.fd, lambda: self._apply_all(reader.read()))
        heartbeat = Heartbeat(self.control, self.slot, self.cfg.daemon.heartbeat_interval)
        settle_heap()
        self.control.set(self.slot, Slot.READY, 1)
        log.info(
            "serving %s",
            ", ".join(
                f"{p}: {len(self.subs.of_provider(p))} subscriptions" for p in self.subs.providers()
            )
            or "nothing",
        )
        status = EXIT_OK
        orphaned = self._beat(heartbeat, stop)
        # Nothing to do but wait: the beats are a timer, an adapter that ends wakes us.
        stop_wait = asyncio.create_task(stop.wait())
        ended_wait = asyncio.create_task(self._ended.wait())
        await asyncio.wait([stop_wait, ended_wait], return_when=asyncio.FIRST_COMPLETED)
        if orphaned.done():
            log.error("supervisor is gone: stopping")
        failed = [t for t in self.tasks.values() if t.done()]
        if failed and not stop.is_set():
            for t in failed:
                exc = t.exception() if not t.cancelled() else None
                log.error("adapter %s ended unexpectedly: %r", t.get_name(), exc)
            status = EXIT_ERROR
        ended_wait.cancel()
        for adapter in self.adapters.values():
            try:
                await asyncio.wait_for(adapter.close(), timeout=5)
            except Exception:
                log.exception("closing %s failed", adapter.ctx.provider.name)
        await writer.drain()  # the adapters' last records: bounded by block_timeout
        writer.close()
        tasks = list(self.tasks.values())
        for t in (*tasks, stop_wait):
            t.cancel()
        await asyncio.gather(*tasks, stop_wait, ended_wait, return_exceptions=True)
        log.info("stopped: %d records written to the ring", counters[Slot.RECORDS_OUT])
        return status

    def _beat(self, heartbeat: Heartbeat, stop: asyncio.Event) -> asyncio.Future:
        """Beat every heartbeat interval on a loop timer; the future is set (and ``stop``) once
        the supervisor is gone."""
        loop = asyncio.get_running_loop()
        orphaned = loop.create_future()
        every = self.cfg.daemon.heartbeat_interval

        def beat() -> None:
            if stop.is_set():
                return
            if not heartbeat.beat():
                orphaned.set_result(True)
                stop.set()
                return
            loop.call_at(max(heartbeat.due_at, loop.time() + every / 10), beat)

        beat()
        return orphaned

    def _adapter_done(self, task: asyncio.Task) -> None:
        if task in self.tasks.values():  # not one we stopped
            self._ended.set()

    # -- adapters ----------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        for adapter in self.adapters.values():
            adapter.pause_reading()

    def _resume_reading(self) -> None:
        for adapter in self.adapters.values():
            adapter.resume_reading()

    def _dead_letter_for(self, provider: str) -> DeadLetter:
        key = provider.encode() + b"\0"
        counters = self.counters
        redact = Redactor(self._secrets())  # a refused frame may echo our request, key included

        def dead_letter(error: str, frame: bytes, size: int | None = None) -> None:
            value = encode_dead_letter(
                provider, redact(error), redact.frame(bytes(frame)), time.time_ns(), size
            )
            if self.dead_letters.write(key + value):
                counters.add(Slot.DEAD_LETTERS)
            else:
                counters.add(Slot.DEAD_LETTERS_DROPPED)

        return dead_letter

    def _secrets(self) -> tuple[str, ...]:
        """Every configured provider's API key: an error of one provider may echo another's."""
        return tuple(key for p in self.cfg.providers if (key := api_key(p)))

    def _start_adapter(self, provider: str, subs: tuple[Subscription, ...]) -> None:
        pcfg = self.cfg.provider(provider)
        ctx = IngestContext(
            provider=pcfg,
            url=self.urls[provider],
            subscriptions=subs,
            registry=self.registry,
            emit=self._emit,
            counters=self.counters,
            dead_letter=self._dead_letter_for(provider),
            last_ids=self.last_ids,
            pacer=self.pacer,
            secrets=self._secrets(),
            flush_delay=self.cfg.ring.flush_delay_ms / 1000,
        )
        adapter = adapter_class(pcfg.kind)(ctx)
        if self.writer is not None and self.writer.paused:  # its connections open paused
            adapter.pause_reading()
        self.adapters[provider] = adapter
        task = asyncio.create_task(adapter.run(), name=f"{self.name}:{provider}")
        task.add_done_callback(self._adapter_done)
        self.tasks[provider] = task

    async def _stop_adapter(self, provider: str) -> None:
        adapter = self.adapters.pop(provider)
        task = self.tasks.pop(provider)
        try:
            await asyncio.wait_for(adapter.close(), timeout=5)
        except Exception:
            log.exception("closing %s failed", provider)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # -- commands from the supervisor --------------------------------------------------------
    def _apply_all(self, commands: list[Command]) -> None:
        for cmd in commands:
            try:
                self.apply(cmd)
            except Exception:
                log.exception("command %r failed", cmd)

    def apply(self, cmd: Command) -> None:
        """One supervisor command: registry growth, a subscription change, a log level."""
        if isinstance(cmd, GrowRegistry):
            self.registry.extend(cmd.snapshot)
        elif isinstance(cmd, SetLogLevel):
            logging.getLogger().setLevel(cmd.level)
        elif isinstance(cmd, Subscribe | Unsubscribe):
            changed = self.subs.apply(cmd)
            if self.last_ids is not None:
                # A stream (re)subscribed starts afresh, however long it was away; this worker
                # is the rows' only writer, and a removed stream's records are muted first.
                for s in changed:
                    self.last_ids.clear(
                        self.registry.instrument_id(s.instrument),
                        self.registry.source_id(s.provider, s.venue),
                    )
            for provider in dict.fromkeys(s.provider for s in changed):
                mine = tuple(Subscription.of(self.registry, s) for s in changed
                             if s.provider == provider)  # fmt: skip
                self._change_adapter(provider, cmd, mine)
        else:
            log.error("unknown command %r from the supervisor", cmd)

    def _change_adapter(
        self, provider: str, cmd: Subscribe | Unsubscribe, subs: tuple[Subscription, ...]
    ) -> None:
        """Bring ``provider``'s adapter to the worker's set after ``subs`` changed."""
        want = self.subs.resolve(self.registry, provider)
        adapter = self.adapters.get(provider)
        log.info("%s %s: %d streams", type(cmd).__name__.lower(), provider, len(subs))
        if adapter is None:
            if want:
                self._start_adapter(provider, want)
        elif not want:
            self._background(self._stop_adapter(provider))
        elif adapter.live_changes:
            (adapter.add if isinstance(cmd, Subscribe) else adapter.remove)(subs)
        else:  # this protocol cannot change an open session: replace this provider's alone
            self._background(self._replace_adapter(provider, want))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _replace_adapter(self, provider: str, subs: tuple[Subscription, ...]) -> None:
        if provider in self.adapters:
            await self._stop_adapter(provider)
        self._start_adapter(provider, subs)
