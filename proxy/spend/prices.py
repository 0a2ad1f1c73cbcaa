"""Prices from the ``genai-prices`` table, and the operator's overrides, per (provider, model).

Guarantees:

* A model neither the overrides nor the table know is *unpriced*: its cost
  is ``None``, never a guess.
* The table is searched once per (provider, model) per process; after that a
  request's price is a dict lookup and a few multiplications
  (:class:`~proxy.spend.rates.Rates`). Models whose price changed over
  time (dated prices) are priced at the request's own time.
* The overrides win over the table (a fine-tuned or private model, or a
  negotiated price).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, TieredPrices

from ..context import Usage
from .rates import Rates, Tiered, find_override

logger = logging.getLogger("sluice.spend")

# Sluice's provider names, as the table names them.
TABLE_PROVIDERS: Final = {"openai": "openai", "gemini": "google", "anthropic": "anthropic"}
# Distinct (provider, model) pairs remembered; past this the cache starts over
# (model names come from requests and responses: their number is not ours to bound).
MAX_CACHED: Final = 4096


def _tiered(value: Any) -> Tiered | None:
    """A table price (Decimal per million tokens, or tiers of them) per token."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return ((-1, float(value) / 1e6),)
    if isinstance(value, TieredPrices):
        return ((-1, float(value.base) / 1e6), *((t.start, float(t.price) / 1e6) for t in value.tiers))
    return None


def rates_of(price: ModelPrice) -> Rates:
    """The token prices of one table entry (the units Sluice counts; others, such as audio, are 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        requests = getattr(price, "requests_kcount", None)
        return Rates(
            input=_tiered(getattr(price, "input_mtok", None)) or ((-1, 0.0),),
            output=_tiered(getattr(price, "output_mtok", None)) or ((-1, 0.0),),
            cache_read=_tiered(getattr(price, "cache_read_mtok", None)),
            cache_write=_tiered(getattr(price, "cache_write_mtok", None)),
            per_request=float(requests) / 1000 if isinstance(requests, Decimal) else 0.0,
        )


class _Dated:
    """A table model whose price depends on the date (or time of day): resolved per request."""

    __slots__ = ("info", "rates")

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.rates: dict[int, Rates] = {}  # by id of the table's ModelPrice, which the table keeps

    def at(self, wall: float) -> Rates:
        price = self.info.get_prices(datetime.fromtimestamp(wall, UTC))
        rates = self.rates.get(id(price))
        if rates is None:
            rates = self.rates[id(price)] = rates_of(price)
        return rates


class Pricer:
    """Prices requests; one per worker process."""

    def __init__(self, overrides: Mapping[tuple[str, str], Rates]) -> None:
        self.overrides = overrides
        self._snapshot = data_snapshot.get_snapshot()
        self._cache: dict[tuple[str, str], Rates | _Dated | None] = {}

    def cost(self, provider: str, model: str, usage: Usage, wall: float) -> float | None:
        """USD for ``usage`` of ``model`` at Unix time ``wall``; None when the model has no known price."""
        entry = self._cache.get((provider, model), False)
        if entry is False:
            entry = self._find(provider, model)
        if entry is None:
            return None
        if isinstance(entry, _Dated):
            return entry.at(wall).cost(usage)
        return entry.cost(usage)  # type: ignore[union-attr]

    def _find(self, provider: str, model: str) -> Rates | _Dated | None:
        entry: Rates | _Dated | None = find_override(self.overrides, provider, model)
        if entry is None:
            entry = self._from_table(provider, model)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[(provider, model)] = entry
        return entry

    def _from_table(self, provider: str, model: str) -> Rates | _Dated | None:
        table_provider = TABLE_PROVIDERS.get(provider)
        if table_provider is None:
            return None
        try:
            _provider, info = self._snapshot.find_provider_model(model, None, table_provider, None)
        except LookupError:
            return None
        if isinstance(info.prices, ModelPrice):
            return rates_of(info.prices)
        return _Dated(info)
