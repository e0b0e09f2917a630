"""Canonical instrument names ↔ Kraken Futures product ids, and what one contract is.

==============================  =====================  ==========  ===================
canonical (ours)                product id             class       one contract
==============================  =====================  ==========  ===================
``BTC-USD-PERP``                ``PF_XBTUSD``          perpetual   1 BTC (linear)
``BTC-USD-250328``              ``FF_XBTUSD_250328``   future      1 BTC (linear)
by ``products`` only            ``PI_XBTUSD``          perpetual   1 USD (inverse)
by ``products`` only            ``FI_XBTUSD_250328``   future      1 USD (inverse)
==============================  =====================  ==========  ===================

The rule (:func:`product_id`) gives the linear multi-collateral contracts, Kraken's current
ones; the inverse contracts (and any other naming) are mapped in the provider's ``products``
option, checked at load. Kraken writes BTC as ``XBT``. The data class follows from the prefix
(``P``: perpetual, ``F``: dated future).

Sizes: Kraken counts contracts. A linear contract is ``contractSize`` base units; an inverse
contract is ``contractSize`` quote units (USD), so its base size is contracts × size / price.
Contract sizes come from Kraken's instrument list (``/derivatives/api/v3/instruments``) through
the ``contracts`` option (:func:`contracts_from_instruments` turns the REST answer into its
entries); without an entry a product has its family's size, 1 (what the list gives for every
PF_, PI_, FI_ and FF_ product).
"""

from __future__ import annotations

from collections.abc import Mapping

from fairfeed.core.options import amount_unit, kraken_futures_class, kraken_futures_product

__all__ = ["contract", "contracts_from_instruments", "data_class", "from_product", "product_id"]

_ASSETS = {"XBT": "BTC"}  # Kraken's code -> canonical asset
_QUOTES = ("USDT", "USDC", "USD", "EUR", "GBP")  # quote currencies, longest first


def product_id(instrument: str, products: Mapping[str, str] | None = None) -> str:
    """``"BTC-USD-PERP"`` → ``"PF_XBTUSD"`` (or the ``products`` entry); ValueError if none."""
    return kraken_futures_product(instrument, dict(products or {}))


def data_class(product: str) -> str:
    """``"perpetual"`` or ``"future"`` from the product id's prefix."""
    return kraken_futures_class(product)


def is_inverse(product: str) -> bool:
    """PI_ / FI_ contracts are inverse (one contract is worth quote currency)."""
    return product.upper()[1] == "I"


def contract(
    product: str, contracts: Mapping[str, str | float] | None = None
) -> tuple[bool, float]:
    """``(inverse, contract size)`` of a product: the size in base units of a linear contract,
    in quote units of an inverse one."""
    product = product.upper()
    data_class(product)  # a product id, or ValueError
    inverse = is_inverse(product)
    spec = (contracts or {}).get(product)
    if spec is None:
        return inverse, 1.0
    unit, size = amount_unit(spec)
    if (unit == "quote") != inverse:
        raise ValueError(
            f"{product} is {'an inverse' if inverse else 'a linear'} contract: its size is in "
            f"{'quote' if inverse else 'base'} units, not {spec!r}"
        )
    return inverse, size


def from_product(product: str) -> str:
    """``"PF_XBTUSD"`` → ``"BTC-USD-PERP"``, ``"FI_ETHUSD_210924"`` → ``"ETH-USD-210924"`` (the
    rule's name, for either family)."""
    p = product.upper()
    data_class(p)
    parts = p.split("_")
    pair = parts[1]
    for q in _QUOTES:
        if pair.endswith(q) and len(pair) > len(q):
            base, quote = pair[: -len(q)], q
            break
    else:
        raise ValueError(f"{product!r}: unknown quote currency")
    suffix = "PERP" if p[0] == "P" else parts[2]
    return f"{_ASSETS.get(base, base)}-{quote}-{suffix}"


def contracts_from_instruments(answer: Mapping) -> dict[str, str]:
    """The ``contracts`` option from Kraken's REST instrument list (its decoded JSON): one
    ``"N base"`` / ``"N quote"`` entry per tradeable PF_ / PI_ / FF_ / FI_ product."""
    out = {}
    for ins in answer.get("instruments", ()):
        sym = str(ins.get("symbol", "")).upper()
        try:
            data_class(sym)
        except ValueError:
            continue  # indices (in_, rr_), other families
        if not ins.get("tradeable", True):
            continue
        size = float(ins["contractSize"])
        typ = str(ins.get("type", ""))
        inverse = "inverse" in typ
        if inverse != is_inverse(sym):
            raise ValueError(f"{sym}: type {typ!r} contradicts its prefix")
        out[sym] = f"{size:g} {'quote' if inverse else 'base'}"
    return out
