"""Ingest worker: one process, one asyncio loop, the provider connections of one partition."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fairfeed.daemon.child import EXIT_ERROR, EXIT_OK, Heartbeat, prepare_child
from fairfeed.daemon.config import Config
from fairfeed.daemon.counters import SlotCounters
from fairfeed.daemon.encode import encode_dead_letter
from fairfeed.daemon.registry import Registry
from fairfeed.ipc.blobring import BlobRing
from fairfeed.ipc.control import ControlBlock, Slot
from fairfeed.ipc.ring import OverflowPolicy, Ring
from fairfeed.providers.base import Adapter, IngestContext, Subscription
from fairfeed.providers.catalog import adapter_class

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
    assignments: dict[str, tuple[Subscription, ...]]  # provider -> its subscriptions here
    urls: dict[str, str]  # provider -> resolved endpoint
    dead_letters: BlobRing  # malformed frames for the dead-letter topic

    @property
    def name(self) -> str:
        return f"ingest-{self.index}"

    def main(self) -> int:
        """Child entry point (runs after fork)."""
        prepare_child(self.name, self.cfg.daemon.log_level)
        self.control.set(self.slot, Slot.PID, os.getpid())
        return asyncio.run(self._run())

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        counters = SlotCounters(self.control, self.slot)
        policy = OverflowPolicy(block_timeout=self.cfg.ring.block_timeout_ms / 1000)
        ring = self.ring

        def emit(records: np.ndarray) -> None:
            written = ring.write(records, policy)
            counters.add(Slot.RECORDS_OUT, written)
            if written < len(records):
                counters.add(Slot.RING_DROPPED, len(records) - written)

        def dead_letter_for(provider: str) -> Callable[[str, bytes], None]:
            key = provider.encode() + b"\0"

            def dead_letter(error: str, frame: bytes) -> None:
                value = encode_dead_letter(provider, error, frame, time.time_ns())
                if self.dead_letters.write(key + value):
                    counters.add(Slot.DEAD_LETTERS)
                else:
                    counters.add(Slot.DEAD_LETTERS_DROPPED)

            return dead_letter

        adapters: list[Adapter] = []
        for provider, subs in self.assignments.items():
            pcfg = self.cfg.provider(provider)
            ctx = IngestContext(
                provider=pcfg,
                url=self.urls[provider],
                subscriptions=subs,
                registry=self.registry,
                emit=emit,
                counters=counters,
                dead_letter=dead_letter_for(provider),
            )
            adapters.append(adapter_class(pcfg.kind)(ctx))
        tasks = [
            asyncio.create_task(a.run(), name=f"{self.name}:{a.ctx.provider.name}")
            for a in adapters
        ]
        heartbeat = Heartbeat(self.control, self.slot, self.cfg.daemon.heartbeat_interval)
        self.control.set(self.slot, Slot.READY, 1)
        log.info(
            "serving %s",
            ", ".join(f"{p}: {len(i)} subscriptions" for p, i in self.assignments.items())
            or "nothing",
        )
        status = EXIT_OK
        stop_wait = asyncio.create_task(stop.wait())
        while not stop.is_set():
            if not heartbeat.beat():
                log.error("supervisor is gone: stopping")
                break
            done, _ = await asyncio.wait(
                [stop_wait, *tasks],
                timeout=self.cfg.daemon.heartbeat_interval / 2,
                return_when=asyncio.FIRST_COMPLETED,
            )
            failed = [t for t in done if t is not stop_wait]
            if failed:
                for t in failed:
                    exc = t.exception() if not t.cancelled() else None
                    log.error("adapter %s ended unexpectedly: %r", t.get_name(), exc)
                status = EXIT_ERROR
                break
        for adapter in adapters:
            try:
                await asyncio.wait_for(adapter.close(), timeout=5)
            except Exception:
                log.exception("closing %s failed", adapter.ctx.provider.name)
        for t in (*tasks, stop_wait):
            t.cancel()
        await asyncio.gather(*tasks, stop_wait, return_exceptions=True)
        log.info("stopped: %d records written to the ring", counters[Slot.RECORDS_OUT])
        return status
