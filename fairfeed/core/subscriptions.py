"""The subscription model every layer shares.

* :class:`Stream` — one subscribed (provider, venue, instrument) with its data class; what the
  configuration, the state file, the control socket and the commands to children speak of.
* :class:`Subscription` — a stream resolved to the registry's ids, what an adapter streams.
* :class:`SubscriptionSet` — the one shape of a live set of streams, kept by the supervisor's
  book, each ingest worker (its partition), the compute pipeline and the anomaly detector.
* :class:`Subscribe` / :class:`Unsubscribe` — the typed changes; every holder applies them with
  :meth:`SubscriptionSet.apply`, so the supervisor's copy of a worker's set and the worker's own
  change by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fairfeed.core.partition import worker_for
from fairfeed.core.records import CLASS_CODES
from fairfeed.core.registry import Registry

Key = tuple[str, str, str]  # provider, venue, instrument


@dataclass(frozen=True)
class Stream:
    """One subscribed (provider, venue, instrument) and its data class."""

    provider: str
    venue: str
    instrument: str  # canonical name, e.g. "BTC-USD"
    data_class: str  # "spot", "future", "perpetual", "option"

    @property
    def key(self) -> Key:
        return (self.provider, self.venue, self.instrument)

    def owner(self, workers: int) -> int:
        """The ingest worker that streams it (rendezvous hashing, stable across restarts)."""
        return worker_for(self.provider, f"{self.venue}:{self.instrument}", workers)


@dataclass(frozen=True)
class Subscription(Stream):
    """A stream with the ids its records carry."""

    provider_id: int
    venue_id: int
    instrument_id: int
    class_code: int

    @classmethod
    def resolve(
        cls, registry: Registry, provider: str, venue: str, instrument: str, data_class: str
    ) -> Subscription:
        return cls(
            provider,
            venue,
            instrument,
            data_class,
            registry.provider_id(provider),
            registry.venue_id(venue),
            registry.instrument_id(instrument),
            CLASS_CODES[data_class],
        )

    @classmethod
    def of(cls, registry: Registry, stream: Stream) -> Subscription:
        """``stream`` with the registry's ids (it must know them)."""
        return cls.resolve(registry, *stream.key, stream.data_class)


@dataclass(frozen=True)
class Subscribe:
    """Start streaming ``streams`` (those already in a set are left as they are)."""

    streams: tuple[Stream, ...]


@dataclass(frozen=True)
class Unsubscribe:
    """Stop streaming ``streams``; each names its data class, so a holder that never had the
    stream still knows what it was."""

    streams: tuple[Stream, ...]


SubscriptionChange = Subscribe | Unsubscribe


class SubscriptionSet:
    """Streams by key, in the order they were added."""

    def __init__(self, streams: Iterable[Stream] = ()) -> None:
        self._streams: dict[Key, Stream] = {}
        self.add(streams)

    # -- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[Stream]:
        return iter(tuple(self._streams.values()))

    def __contains__(self, item: Stream | Key) -> bool:
        key = item.key if isinstance(item, Stream) else item
        return key in self._streams

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubscriptionSet):
            return NotImplemented
        return list(self._streams.values()) == list(other._streams.values())

    def __repr__(self) -> str:
        return f"SubscriptionSet({list(self._streams.values())!r})"

    def get(self, key: Key) -> Stream | None:
        return self._streams.get(key)

    def providers(self) -> tuple[str, ...]:
        """Providers with at least one stream, in order of first appearance."""
        return tuple(dict.fromkeys(s.provider for s in self._streams.values()))

    def of_provider(self, provider: str) -> tuple[Stream, ...]:
        return tuple(s for s in self._streams.values() if s.provider == provider)

    def resolve(self, registry: Registry, provider: str) -> tuple[Subscription, ...]:
        """``provider``'s streams with their ids, for its adapter."""
        return tuple(Subscription.of(registry, s) for s in self.of_provider(provider))

    def partition(self, workers: int) -> list[SubscriptionSet]:
        """The set split over ``workers`` ingest workers by :meth:`Stream.owner`."""
        parts = [SubscriptionSet() for _ in range(workers)]
        for s in self._streams.values():
            parts[s.owner(workers)]._streams[s.key] = s
        return parts

    # -- changes -------------------------------------------------------------------------
    def add(self, streams: Iterable[Stream]) -> tuple[Stream, ...]:
        """Add ``streams``; returns those that were not there yet."""
        new = []
        for s in streams:
            if s.key not in self._streams:
                self._streams[s.key] = s
                new.append(s)
        return tuple(new)

    def remove(self, keys: Iterable[Stream | Key]) -> tuple[Stream, ...]:
        """Remove ``keys``; returns the streams that were there (with their data class)."""
        gone = []
        for k in keys:
            s = self._streams.pop(k.key if isinstance(k, Stream) else k, None)
            if s is not None:
                gone.append(s)
        return tuple(gone)

    def apply(self, change: SubscriptionChange) -> tuple[Stream, ...]:
        """Apply a change; returns the streams it actually added or removed."""
        if isinstance(change, Subscribe):
            return self.add(change.streams)
        if isinstance(change, Unsubscribe):
            return self.remove(change.streams)
        raise TypeError(f"not a subscription change: {change!r}")
