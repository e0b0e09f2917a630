"""Id ↔ name registry for instruments, providers, venues and sources (provider × venue).

The supervisor owns it: it builds it from the configuration before forking, so every child
inherits the same ids, and it alone adds entries while running (a live subscription to a new
instrument or venue), telling the children which ids it added before any record can carry them.
Ids are dense and never reused or removed, so a child's copy is always a prefix of the
supervisor's. Records carry only the small integer ids; names appear again only at the edges
(Kafka values, the live view, metrics labels).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fairfeed.core.records import CLASS_NAMES


class RegistryError(KeyError):
    """An unknown name or id was looked up, or a capacity was exceeded."""


class Registry:
    """Dense id tables; ``instruments[i]`` is the name of instrument id ``i`` and so on.

    ``max_instruments`` / ``max_sources`` bound growth so the compute process can size its
    state arrays once.
    """

    def __init__(self, max_instruments: int = 1 << 20, max_sources: int = 1 << 12) -> None:
        self.max_instruments = max_instruments
        self.max_sources = max_sources
        self.instruments: tuple[str, ...] = ()
        self.instrument_classes: tuple[int, ...] = ()
        self.providers: tuple[str, ...] = ()
        self.venues: tuple[str, ...] = ()
        self.sources: tuple[tuple[int, int], ...] = ()  # source id -> (provider id, venue id)
        self._instrument_ids: dict[str, int] = {}
        self._provider_ids: dict[str, int] = {}
        self._venue_ids: dict[str, int] = {}
        self._source_ids: dict[tuple[int, int], int] = {}

    @classmethod
    def build(
        cls,
        instruments: Iterable[tuple[str, int]],
        sources: Iterable[tuple[str, str]],
        max_instruments: int = 1 << 20,
        max_sources: int = 1 << 12,
    ) -> Registry:
        """Registry from ``(instrument name, class code)`` and ``(provider, venue)`` pairs.

        Provider and venue ids follow first appearance in ``sources``.
        """
        reg = cls(max_instruments, max_sources)
        for name, code in dict.fromkeys(instruments):
            reg.add_instrument(name, code)
        for provider, venue in dict.fromkeys(sources):
            reg.add_source(provider, venue)
        return reg

    # -- growth (supervisor) -------------------------------------------------------------
    def add_instrument(self, name: str, class_code: int) -> int:
        """Id of instrument ``name``, added if new. A name has one data class for ever."""
        if class_code not in CLASS_NAMES:
            raise ValueError(f"unknown data class code {class_code}")
        i = self._instrument_ids.get(name)
        if i is not None:
            if self.instrument_classes[i] != class_code:
                raise ValueError(
                    f"instrument {name!r} is {CLASS_NAMES[self.instrument_classes[i]]}, "
                    f"not {CLASS_NAMES[class_code]}: give it another name"
                )
            return i
        if len(self.instruments) >= self.max_instruments:
            raise RegistryError(f"registry full: {self.max_instruments} instruments")
        i = len(self.instruments)
        self._instrument_ids[name] = i
        self.instruments += (name,)
        self.instrument_classes += (class_code,)
        return i

    def add_source(self, provider: str, venue: str) -> int:
        """Id of source (``provider``, ``venue``), adding the provider, venue and source."""
        p = self._provider_ids.get(provider)
        if p is None:
            p = self._provider_ids[provider] = len(self.providers)
            self.providers += (provider,)
        v = self._venue_ids.get(venue)
        if v is None:
            v = self._venue_ids[venue] = len(self.venues)
            self.venues += (venue,)
        s = self._source_ids.get((p, v))
        if s is None:
            if len(self.sources) >= self.max_sources:
                raise RegistryError(f"registry full: {self.max_sources} sources")
            s = self._source_ids[(p, v)] = len(self.sources)
            self.sources += ((p, v),)
        return s

    def snapshot(self) -> dict:
        """Everything needed to bring another process's copy up to date (see :meth:`extend`)."""
        return {
            "instruments": list(zip(self.instruments, self.instrument_classes, strict=True)),
            "sources": [(self.providers[p], self.venues[v]) for p, v in self.sources],
        }

    def extend(self, snapshot: dict) -> None:
        """Add what ``snapshot`` (from the owner) has and this copy lacks; ids stay identical."""
        for name, code in snapshot["instruments"]:
            self.add_instrument(name, code)
        for provider, venue in snapshot["sources"]:
            self.add_source(provider, venue)

    # -- lookups -------------------------------------------------------------------------
    def instrument_id(self, name: str) -> int:
        try:
            return self._instrument_ids[name]
        except KeyError:
            raise RegistryError(f"unknown instrument {name!r}") from None

    def class_of(self, name: str) -> int | None:
        """Data class code of instrument ``name``, or None if it is unknown."""
        i = self._instrument_ids.get(name)
        return None if i is None else self.instrument_classes[i]

    def provider_id(self, name: str) -> int:
        try:
            return self._provider_ids[name]
        except KeyError:
            raise RegistryError(f"unknown provider {name!r}") from None

    def venue_id(self, name: str) -> int:
        try:
            return self._venue_ids[name]
        except KeyError:
            raise RegistryError(f"unknown venue {name!r}") from None

    def source_id(self, provider: str, venue: str) -> int:
        try:
            return self._source_ids[(self.provider_id(provider), self.venue_id(venue))]
        except KeyError:
            raise RegistryError(f"unknown source {provider}/{venue}") from None

    def source_table(self) -> np.ndarray:
        """``table[provider, venue]`` = source id, or -1: the lookup the kernels use."""
        table = np.full((max(len(self.providers), 1), max(len(self.venues), 1)), -1, np.int32)
        for sid, (p, v) in enumerate(self.sources):
            table[p, v] = sid
        return table

    def source_name(self, source_id: int) -> str:
        p, v = self.sources[source_id]
        return f"{self.providers[p]}/{self.venues[v]}"
