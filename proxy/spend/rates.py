"""A model's prices as plain floats, and the operator's own prices from the config file.

:class:`Rates` prices one request's tokens with a few multiplications: the
request path (the end of each request) never calls into the price table.
This module does not import ``genai_prices`` (slow to import): the settings
use it to validate ``[prices."provider/model"]`` at start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

from ..context import Usage

# A price per token, by the total input tokens it applies from: ((-1, base), (start, price), ...).
Tiered = tuple[tuple[int, float], ...]
_ZERO: Final[Tiered] = ((-1, 0.0),)

# The config file's names (per million tokens) and what they price.
OVERRIDE_FIELDS: Final = {
    "input_per_mtok": "input",
    "output_per_mtok": "output",
    "cached_input_per_mtok": "cache_read",
    "cache_write_per_mtok": "cache_write",
}


def _pick(tiers: Tiered, input_total: int) -> float:
    """The price that applies: the highest tier whose start the input exceeds (genai-prices' rule)."""
    price = tiers[0][1]
    for start, tier_price in tiers[1:]:
        if input_total > start:
            price = tier_price
    return price


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token for each kind of token, and per request.

    ``cache_read``/``cache_write`` of ``None``: the model prices no cache
    apart, so those tokens stay in ``input`` at the input price.
    """

    input: Tiered = _ZERO
    output: Tiered = _ZERO
    cache_read: Tiered | None = None
    cache_write: Tiered | None = None
    per_request: float = 0.0

    def cost(self, usage: Usage) -> float:
        """The USD cost of ``usage``. ``input_tokens`` counts every input token, cached ones included."""
        total_in = usage.input_tokens or 0
        uncached = total_in
        cost = self.per_request
        read, write = usage.cache_read_tokens or 0, usage.cache_write_tokens or 0
        if read and self.cache_read is not None:
            uncached -= read
            cost += read * _pick(self.cache_read, total_in)
        if write and self.cache_write is not None:
            uncached -= write
            cost += write * _pick(self.cache_write, total_in)
        cost += max(uncached, 0) * _pick(self.input, total_in)
        cost += (usage.output_tokens or 0) * _pick(self.output, total_in)
        return cost


class Priced:
    """A model's price (None: it has none) and the Unix times it holds for, ``since <= t < until``."""

    __slots__ = ("rates", "since", "until")

    def __init__(self, rates: Rates | None, since: float, until: float) -> None:
        self.rates = rates
        self.since = since
        self.until = until


def parse_price_overrides(table: object) -> dict[tuple[str, str], Rates]:
    """``[prices."provider/model"]`` tables into Rates by (provider, model pattern).

    Raises ValueError naming the entry and the problem. ``input_per_mtok``
    and ``output_per_mtok`` are required; the model part may be a glob
    (``openai/ft:gpt-4o-mini:*``).
    """
    from ..config import PROVIDERS  # config imports this module

    if not isinstance(table, dict):
        raise ValueError('prices must be a table of "provider/model" entries')
    result: dict[tuple[str, str], Rates] = {}
    for name, entry in table.items():
        provider, slash, model = name.partition("/")
        if not slash or provider not in PROVIDERS or not model:
            choices = ", ".join(PROVIDERS)
            raise ValueError(f"prices.{name!r}: name it provider/model, the provider one of {choices}")
        if not isinstance(entry, dict):
            raise ValueError(f"prices.{name!r} must be a table")
        unknown = set(entry) - set(OVERRIDE_FIELDS)
        if unknown:
            raise ValueError(f"prices.{name!r}: unknown field(s) {', '.join(sorted(unknown))}")
        missing = {"input_per_mtok", "output_per_mtok"} - set(entry)
        if missing:
            raise ValueError(f"prices.{name!r}: missing {', '.join(sorted(missing))}")
        per_token: dict[str, Tiered] = {}
        for field, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"prices.{name!r}.{field} must be a number (USD per million tokens)")
            if value < 0:
                raise ValueError(f"prices.{name!r}.{field} must not be negative")
            per_token[OVERRIDE_FIELDS[field]] = ((-1, value / 1e6),)
        result[(provider, model)] = Rates(**per_token)  # type: ignore[arg-type]
    return result


def find_override(overrides: Mapping[tuple[str, str], Rates], provider: str, model: str) -> Rates | None:
    """The operator's price for a model: an exact name first, then the first matching glob."""
    exact = overrides.get((provider, model))
    if exact is not None:
        return exact
    for (prov, pattern), rates in overrides.items():
        if prov == provider and fnmatchcase(model, pattern):
            return rates
    return None
