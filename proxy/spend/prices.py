"""Prices from the ``genai-prices`` table, and the operator's overrides, per (provider, model).

Guarantees:

* A model neither the overrides nor the table know is *unpriced*: its cost
  is ``None``, never a guess.
* The table is searched once per (provider, model) per process (per UTC
  day for a model whose price changed over time: a request is priced at its
  own date); the tracker keeps the :class:`~proxy.spend.rates.Priced`
  answer, so a request's price is a dict lookup and a few multiplications.
* The overrides win over the table (a fine-tuned or private model, or a
  negotiated price).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, StartDateConstraint, TieredPrices

from ..context import Usage
from .rates import Priced, Rates, Tiered, find_override

logger = logging.getLogger("sluice.spend")

# Sluice's provider names, as the table names them.
TABLE_PROVIDERS: Final = {"openai": "openai", "gemini": "google", "anthropic": "anthropic"}


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


class Pricer:
    """Finds prices (the slow part, once per model and day); :class:`Priced` says how long one holds."""

    def __init__(self, overrides: Mapping[tuple[str, str], Rates]) -> None:
        self.overrides = overrides
        self._snapshot = data_snapshot.get_snapshot()

    def lookup(self, provider: str, model: str, wall: float) -> Priced:
        """The price of ``model`` at Unix time ``wall``: an override, else the table's, else none."""
        override = find_override(self.overrides, provider, model)
        if override is not None:
            return Priced(override, -math.inf, math.inf)
        info = self._model(provider, model)
        if info is None:
            return Priced(None, -math.inf, math.inf)
        if isinstance(info.prices, ModelPrice):
            return Priced(rates_of(info.prices), -math.inf, math.inf)
        # Dated prices change at the start of a UTC day (StartDateConstraint):
        # one holds for the day. Any other condition is looked up every time.
        price = info.get_prices(datetime.fromtimestamp(wall, UTC))
        if all(c.constraint is None or isinstance(c.constraint, StartDateConstraint) for c in info.prices):
            day = wall - wall % 86400
            return Priced(rates_of(price), day, day + 86400)
        return Priced(rates_of(price), wall, wall)

    def cost(self, provider: str, model: str, usage: Usage, wall: float) -> float | None:
        """USD for ``usage`` (uncached: for tests and tools; requests go through the tracker's cache)."""
        rates = self.lookup(provider, model, wall).rates
        return None if rates is None else rates.cost(usage)

    def _model(self, provider: str, model: str) -> ModelInfo | None:
        table_provider = TABLE_PROVIDERS.get(provider)
        if table_provider is None:
            return None
        try:
            _provider, info = self._snapshot.find_provider_model(model, None, table_provider, None)
        except LookupError:
            return None
        return info
