"""Provider kinds known to the daemon and the adapter class that speaks each."""

from __future__ import annotations

from fairfeed.providers.base import Adapter


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class for a provider ``kind`` (imported lazily: workers load what they use)."""
    if kind == "simulator":
        from fairfeed.providers.simulator.adapter import SimulatorAdapter

        return SimulatorAdapter
    raise KeyError(f"no adapter for provider kind {kind!r}")
