"""What a Kaiko derivatives metrics call must give: the records implied by the messages the local
server logged (``InstrumentStats.metrics_log``), for the adapter and the daemon tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from fairfeed.core.records import KIND_FUNDING, KIND_INDEX, KIND_MARK, KIND_OPEN_INTEREST

_PRICES = {"mark_price": KIND_MARK, "index_price": KIND_INDEX}


def expected_metrics(
    log: Iterable[tuple[str, str, int]], unit: Callable[[float, float | None], float]
) -> list[tuple[int, float, float, int]]:
    """``(kind, price, size, ts_provider)`` per record, in order, of one instrument's metrics
    messages ``(commodity, value, ts_collection)``: a mark or index price each; a funding record
    per rate or predicted rate once a rate was sent (the latest of both; NaN before any
    predicted rate); open interest in base units, ``unit(contracts, latest mark)``. Other
    commodities give nothing."""
    out: list[tuple[int, float, float, int]] = []
    mark = rate = None
    predicted = math.nan
    for name, value, ts in log:
        v = float(value)
        if name in _PRICES:
            out.append((_PRICES[name], v, 0.0, ts))
            mark = v if name == "mark_price" else mark
        elif name == "open_interest":
            out.append((KIND_OPEN_INTEREST, 0.0, unit(v, mark), ts))
        elif name in ("funding_rate", "predicted_funding_rate"):
            rate, predicted = (v, predicted) if name == "funding_rate" else (rate, v)
            if rate is not None:
                out.append((KIND_FUNDING, rate, predicted, ts))
    return out
