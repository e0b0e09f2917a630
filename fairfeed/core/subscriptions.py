"""The subscription model shared by every layer: one stream and its ids."""

from __future__ import annotations

from dataclasses import dataclass

from fairfeed.core.records import CLASS_CODES
from fairfeed.core.registry import Registry


@dataclass(frozen=True)
class Subscription:
    """One (provider, venue, instrument) stream, with the ids its records carry."""

    provider: str
    venue: str
    instrument: str  # canonical name, e.g. "BTC-USD"
    data_class: str  # "spot", "future", "perpetual", "option"
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
