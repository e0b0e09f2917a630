"""Canonical instrument names ↔ Coinbase product ids.

Coinbase spot products are named ``BASE-QUOTE`` in upper case (``BTC-USD``), exactly the
canonical form, so the mapping is the identity for spot; it still validates the shape so a typo
in a configuration fails at start, not as an endless stream of unknown-product parse errors.
"""

from __future__ import annotations


def _check(name: str) -> str:
    base, sep, quote = name.partition("-")
    if not sep or not base or not quote or "-" in quote or name != name.upper():
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    if not (base.isascii() and base.isalnum() and quote.isascii() and quote.isalnum()):
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    return name


def to_product_id(instrument: str) -> str:
    """Coinbase product id of a canonical spot instrument (``"BTC-USD"`` → ``"BTC-USD"``)."""
    return _check(instrument)


def from_product_id(product_id: str) -> str:
    """Canonical instrument name of a Coinbase spot product id."""
    return _check(product_id)


# Advanced Trade serves a -USDC product with the data of the matching -USD product, named so
# in every message ("-USDC product IDs other than USDT-USDC and EURC-USDC return the same data
# as the matching -USD product": the WebSocket endpoints page). The public product list agrees
# (each such product has ``"alias": "X-USD"``) and shows two more without an alias.
USDC_UNALIASED = frozenset({"USDT-USDC", "EURC-USDC", "AUDD-USDC", "TGBP-USDC"})


def advanced_data_product(product_id: str) -> str:
    """The product id whose data Advanced Trade sends for a subscription to ``product_id``
    (``"BTC-USDC"`` → ``"BTC-USD"``; every other product → itself)."""
    base, _, quote = _check(product_id).partition("-")
    if quote == "USDC" and product_id not in USDC_UNALIASED:
        return f"{base}-USD"
    return product_id
