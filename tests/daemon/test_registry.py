import numpy as np
import pytest

from fairfeed.core import config
from fairfeed.core.records import CLASS_PERPETUAL, CLASS_SPOT
from fairfeed.core.registry import Registry, RegistryError
from fairfeed.daemon.run import build_registry


def test_ids_are_dense_and_lookups_round_trip() -> None:
    reg = Registry.build(
        [("BTC-USD", CLASS_SPOT), ("BTC-PERP", CLASS_PERPETUAL), ("BTC-USD", CLASS_SPOT)],
        [("kaiko", "CBSE"), ("kaiko", "BNCE"), ("coinbase", "CBSE")],
    )
    assert reg.instruments == ("BTC-USD", "BTC-PERP")
    assert reg.instrument_classes == (CLASS_SPOT, CLASS_PERPETUAL)
    assert reg.providers == ("kaiko", "coinbase") and reg.venues == ("CBSE", "BNCE")
    assert reg.instrument_id("BTC-PERP") == 1 and reg.provider_id("coinbase") == 1
    assert reg.venue_id("BNCE") == 1
    table = reg.source_table()
    assert table.tolist() == [[0, 1], [2, -1]] and table.dtype == np.int32
    assert reg.source_name(2) == "coinbase/CBSE"


def test_unknown_names_raise_a_clear_error() -> None:
    reg = Registry.build([("X", CLASS_SPOT)], [("p", "v")])
    with pytest.raises(RegistryError, match="unknown instrument 'Y'"):
        reg.instrument_id("Y")
    with pytest.raises(RegistryError, match="unknown provider"):
        reg.provider_id("q")


def test_registry_of_the_embedded_default() -> None:
    cfg = config.load()
    reg = build_registry(cfg)
    streams = cfg.streams()
    assert set(reg.instruments) == {s.instrument for s in streams}
    sources = {(s.provider, s.venue) for s in streams}
    assert len(reg.sources) == len(sources) and (reg.source_table() >= 0).sum() == len(sources)
    assert {reg.source_name(s) for s in range(len(sources))} == {f"{p}/{v}" for p, v in sources}


def test_growth_keeps_ids_and_a_copy_catches_up() -> None:
    owner = Registry.build([("X", CLASS_SPOT)], [("p", "v")], max_instruments=3, max_sources=2)
    child = Registry.build([("X", CLASS_SPOT)], [("p", "v")])
    assert owner.add_instrument("X", CLASS_SPOT) == 0  # idempotent
    assert owner.add_instrument("Y-PERP", CLASS_PERPETUAL) == 1
    assert owner.add_source("q", "v") == 1
    with pytest.raises(ValueError, match="is perpetual, not spot"):
        owner.add_instrument("Y-PERP", CLASS_SPOT)
    child.extend(owner.snapshot())
    assert child.instruments == owner.instruments and child.sources == owner.sources
    assert child.source_id("q", "v") == 1
    owner.add_instrument("Z", CLASS_SPOT)
    with pytest.raises(RegistryError, match="3 instruments"):
        owner.add_instrument("W", CLASS_SPOT)
    with pytest.raises(RegistryError, match="2 sources"):
        owner.add_source("r", "v")
