"""Id ↔ name registry for instruments, providers, venues and sources (provider × venue).

The supervisor builds it once from the configuration before forking, so every child inherits
the same ids. Records carry only the small integer ids; names appear again only at the edges
(Kafka values, the live view, metrics labels).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fairfeed.hotpath.records import CLASS_NAMES


class RegistryError(KeyError):
    """An unknown name or id was looked up."""


@dataclass(frozen=True)
class Registry:
    """Immutable id tables. Ids are dense indexes starting at 0."""

    instruments: tuple[str, ...]
    instrument_classes: tuple[int, ...]
    providers: tuple[str, ...]
    venues: tuple[str, ...]
    sources: tuple[tuple[int, int], ...]  # source id -> (provider id, venue id)
    _instrument_ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _provider_ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _venue_ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr, names in (
            ("_instrument_ids", self.instruments),
            ("_provider_ids", self.providers),
            ("_venue_ids", self.venues),
        ):
            ids = {name: i for i, name in enumerate(names)}
            if len(ids) != len(names):
                raise ValueError(f"duplicate names in registry {attr[1:-4]}s: {names}")
            object.__setattr__(self, attr, ids)
        if len(self.instrument_classes) != len(self.instruments):
            raise ValueError("instrument_classes must have one entry per instrument")
        for code in self.instrument_classes:
            if code not in CLASS_NAMES:
                raise ValueError(f"unknown data class code {code}")

    @classmethod
    def build(
        cls,
        instruments: Iterable[tuple[str, int]],
        sources: Iterable[tuple[str, str]],
    ) -> Registry:
        """Registry from ``(instrument name, class code)`` pairs and ``(provider, venue)`` pairs.

        Provider and venue ids follow first appearance in ``sources``.
        """
        inst = list(dict.fromkeys(instruments))
        providers: dict[str, int] = {}
        venues: dict[str, int] = {}
        pairs: list[tuple[int, int]] = []
        for provider, venue in dict.fromkeys(sources):
            p = providers.setdefault(provider, len(providers))
            v = venues.setdefault(venue, len(venues))
            pairs.append((p, v))
        return cls(
            instruments=tuple(name for name, _ in inst),
            instrument_classes=tuple(code for _, code in inst),
            providers=tuple(providers),
            venues=tuple(venues),
            sources=tuple(pairs),
        )

    def instrument_id(self, name: str) -> int:
        try:
            return self._instrument_ids[name]
        except KeyError:
            raise RegistryError(f"unknown instrument {name!r}") from None

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

    def source_table(self) -> np.ndarray:
        """``table[provider, venue]`` = source id, or -1: the lookup the kernels use."""
        table = np.full((max(len(self.providers), 1), max(len(self.venues), 1)), -1, np.int32)
        for sid, (p, v) in enumerate(self.sources):
            table[p, v] = sid
        return table

    def source_name(self, source_id: int) -> str:
        p, v = self.sources[source_id]
        return f"{self.providers[p]}/{self.venues[v]}"
