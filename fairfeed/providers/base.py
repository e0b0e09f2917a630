"""The contract between an ingest worker and a provider adapter.

An adapter owns one provider connection (reconnecting by itself with :class:`Backoff`), turns
wire frames straight into RECORD_DTYPE arrays and hands them to ``ctx.emit`` in batches — as many
records per call as the wire delivered together, never one call per message when a batch is at
hand. It never raises out of :meth:`Adapter.run` for bad input: malformed frames are counted.
``emit`` never blocks; when the worker's ring is full the worker asks every adapter to stop
reading for a while (:meth:`Adapter.pause_reading` / :meth:`Adapter.resume_reading`).
"""

from __future__ import annotations

import abc
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fairfeed.core.backoff import Backoff
from fairfeed.core.config import ProviderConfig
from fairfeed.core.counters import Counters
from fairfeed.core.options import AdapterOptions
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscription
from fairfeed.ipc.lastids import LastIds
from fairfeed.ipc.pacer import Pacer
from fairfeed.providers.redact import Redactor


class DeadLetter(Protocol):
    """Forwards one bad provider message to the dead-letter topic: ``frame`` is the message,
    or only its head when ``size`` (its real size in bytes) says it was bigger."""

    def __call__(self, error: str, frame: bytes, size: int | None = None) -> None: ...


@dataclass
class IngestContext:
    """What the worker gives an adapter.

    ``emit`` must be called from the worker's event-loop thread only: it writes to a
    single-producer ring. An adapter that runs a client in another thread hands its batches
    to the loop (``loop.call_soon_threadsafe``) instead of calling ``emit`` there.
    """

    provider: ProviderConfig
    url: str  # resolved endpoint (a served simulator's port is known only at start)
    subscriptions: tuple[Subscription, ...]  # what this adapter streams
    registry: Registry
    emit: Callable[[np.ndarray], None]  # publish a batch of records (copied before return)
    counters: Counters
    # forward a malformed message with its error to the dead-letter topic (bounded, may drop);
    # an oversized message is passed as its head with its real size (DeadLetter)
    dead_letter: DeadLetter = lambda error, frame, size=None: None
    # the source of the reconnect jitter (None: a fresh one); tests seed it to know the schedule
    rng: random.Random | None = None
    # the last id published per stream (the daemon's shared table, so a restarted worker sees
    # its predecessor's); None: the adapter keeps a private one
    last_ids: LastIds | None = None
    # the daemon's per-IP pacing of connections and subscribe messages, shared by every
    # worker; None: the adapter paces itself alone
    pacer: Pacer | None = None
    # the API keys of every configured provider, never to be logged (a provider's error may
    # echo any of them); the adapter's own key is added by :meth:`redactor`
    secrets: tuple[str, ...] = ()
    # seconds a record may wait in a connection's buffer before it is emitted (a batch of the
    # frames of several socket reads); 0: emit each read's records at once
    flush_delay: float = 0.0

    def redactor(self) -> Redactor:
        """What the adapter's error logs pass provider text through."""
        p = self.provider
        return Redactor((*self.secrets, api_key(p)))

    def backoff(self, base: float, cap: float) -> Backoff:
        """A reconnect schedule drawing its jitter from :attr:`rng`."""
        return Backoff(
            base=base, cap=cap, rng=self.rng if self.rng is not None else random.Random()
        )

    @classmethod
    def for_instruments(
        cls,
        provider: ProviderConfig,
        url: str,
        instruments: tuple[str, ...] | list[str],
        registry: Registry,
        emit: Callable[[np.ndarray], None],
        counters: Counters,
    ) -> IngestContext:
        """A context subscribing ``instruments`` at the provider's own venue and data class."""
        subs = tuple(
            Subscription.resolve(registry, provider.name, provider.venue, i, provider.data_class)
            for i in instruments
        )
        return cls(provider, url, subs, registry, emit, counters)

    @property
    def instruments(self) -> tuple[str, ...]:
        """Canonical instrument names of the subscriptions, in order, without duplicates."""
        return tuple(dict.fromkeys(s.instrument for s in self.subscriptions))


@dataclass(frozen=True)
class Rate:
    """A provider's documented limit: at most ``count`` actions in any ``per`` seconds, of which
    up to ``burst`` may go at once after a quiet while.

    Paced as GCRA (:mod:`fairfeed.ipc.pacer`) with the sustained :attr:`interval` chosen so that
    no window of ``per`` seconds, ends included, can hold more than ``count``: ``burst`` at once
    and one every ``per / (count - burst)`` seconds after them. A window limit such as Binance's
    300 per 5 minutes with a burst of 20 lets a normal start open its handful of connections at
    once, and a reconnection storm still stays within the limit.
    """

    count: int
    per: float  # seconds
    burst: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 2 and self.per > 0 and 1 <= self.burst < self.count):
            raise ValueError(f"{self}: needs count >= 2, per > 0 and 1 <= burst < count")

    @property
    def interval(self) -> float:
        """Seconds between two actions of a sustained flow."""
        return self.per / (self.count - self.burst)


@dataclass(frozen=True)
class Limits:
    """What a provider documents about how fast a client may go; None where it documents none.

    ``connect`` and ``message`` are per IP address: paced across every worker of the daemon
    (new connections, and subscribe / unsubscribe messages). ``connection_messages`` is per
    connection: the least spacing of one connection's messages (its :attr:`Rate.interval`;
    ``subscribe_interval`` can only make it longer). Each adapter declares its provider's, with
    the documentation page it comes from, and its provider page lists them.
    """

    connect: Rate | None = None
    message: Rate | None = None
    connection_messages: Rate | None = None


def api_key(p: ProviderConfig) -> str:
    """The key a provider's adapter will send: the value of the environment variable its
    ``api_key_env`` names ("" when unnamed or unset)."""
    return os.environ.get(p.api_key_env, "") if p.api_key_env else ""


def required_api_key(p: ProviderConfig, service: str) -> str:
    """The API key of ``p`` from the environment variable its ``api_key_env`` names; a
    ValueError naming the variable if there is none (a provider without a key only loops on
    authentication errors: better to stop at start)."""
    if not p.api_key_env:
        raise ValueError(
            f"provider {p.name!r} ({p.kind}): set api_key_env to the name of the environment "
            f"variable holding the {service} API key"
        )
    key = api_key(p)
    if not key:
        raise ValueError(
            f"provider {p.name!r} ({p.kind}): environment variable {p.api_key_env} is not set "
            f"or empty; it must hold the {service} API key"
        )
    return key


class Adapter(abc.ABC):
    """One provider connection inside an ingest worker's asyncio loop."""

    #: The service whose API key the protocol needs ("" = none): the daemon checks at start
    #: that :func:`required_api_key` finds it.
    api_key_service = ""

    #: The provider's documented rate limits (none by default).
    limits = Limits()

    def __init__(self, ctx: IngestContext) -> None:
        """Everything an adapter is told is in ``ctx``: its provider's configuration, with the
        kind's options (``ctx.provider.options``, `[providers.options]`), and what to stream."""
        self.ctx = ctx
        options = ctx.provider.options
        if options is None:
            raise ValueError(f"provider {ctx.provider.name!r}: kind {ctx.provider.kind!r} "
                             "has no adapter")  # fmt: skip
        self.options: AdapterOptions = options

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect, subscribe, stream until cancelled; reconnect with backoff on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; after this returns no more records are emitted."""

    #: Whether :meth:`add` / :meth:`remove` change subscriptions without touching the streams
    #: of the others. When False the worker replaces the whole adapter for such a change.
    live_changes = False

    def add(self, subs: tuple[Subscription, ...]) -> None:
        """Start streaming ``subs`` too (only when :attr:`live_changes`)."""
        raise NotImplementedError

    def remove(self, subs: tuple[Subscription, ...]) -> None:
        """Stop streaming ``subs`` (only when :attr:`live_changes`)."""
        raise NotImplementedError

    #: True between :meth:`pause_reading` and :meth:`resume_reading`.
    reading_paused = False

    def pause_reading(self) -> None:
        """Stop reading from the provider: the worker's ring is full (back-pressure).

        Records already read may still be emitted; a connection opened while paused starts
        paused. Called from the loop, possibly from inside ``emit``. The default only notes it.
        """
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Read again. Must not call ``emit`` synchronously (schedule it on the loop)."""
        self.reading_paused = False
