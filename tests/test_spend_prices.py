"""Pricing: Sluice's float arithmetic held to genai-prices' own calc_price, overrides, unpriced models."""

from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime

import genai_prices
import pytest
from genai_prices.data_snapshot import get_snapshot

from proxy.config import ConfigError, load_settings
from proxy.context import Usage
from proxy.spend.prices import TABLE_PROVIDERS, Pricer
from proxy.spend.rates import parse_price_overrides

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()

USAGES = [
    Usage(1000, 200),
    Usage(120_000, 5_000, cache_read_tokens=100_000),
    Usage(300_000, 1_000, cache_read_tokens=1_000, cache_write_tokens=2_000),  # past Anthropic's 200k tier
    Usage(0, 7),
    Usage(5, 0, cache_write_tokens=5),
]


def table_models() -> list[tuple[str, str]]:
    snapshot = get_snapshot()
    found = []
    for ours, theirs in TABLE_PROVIDERS.items():
        provider = next(p for p in snapshot.providers if p.id == theirs)
        found += [(ours, model.id) for model in provider.models]
    return found


def oracle(provider: str, model: str, usage: Usage) -> float | None:
    fields = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(**{k: v for k, v in fields.items() if v}),
                model,
                provider_id=TABLE_PROVIDERS[provider],
                genai_request_timestamp=datetime.fromtimestamp(NOW, UTC),
            )
        except (ValueError, LookupError):  # refused combinations; ids that match no model ("ft:gpt-4o")
            return None
    return float(calc.total_price)


def test_every_table_price_matches_genai_prices() -> None:
    pricer = Pricer({})
    models = table_models()
    assert len(models) > 100  # the table really was read
    compared = 0
    for provider, model in models:
        for usage in USAGES:
            expected = oracle(provider, model, usage)
            if expected is None:
                continue
            got = pricer.cost(provider, model, usage, NOW)
            assert got is not None, (provider, model)
            assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-15), (provider, model, usage)
            compared += 1
    assert compared > 400


def test_dated_model_names_and_vendor_spellings() -> None:
    pricer = Pricer({})
    usage = Usage(1_000_000, 1_000_000)
    # OpenAI answers with the dated snapshot's name: priced as its model.
    assert pricer.cost("openai", "gpt-4o-mini-2024-07-18", usage, NOW) == pytest.approx(0.15 + 0.6)
    assert pricer.cost("gemini", "gemini-2.5-flash", usage, NOW) == pytest.approx(0.3 + 2.5)
    assert pricer.cost("anthropic", "claude-3-5-haiku-latest", usage, NOW) == pytest.approx(0.8 + 4)


def test_unknown_models_are_unpriced_never_guessed() -> None:
    pricer = Pricer({})
    assert pricer.cost("openai", "gpt-mock", Usage(10, 10), NOW) is None
    assert pricer.cost("gemini", "gemini-mock", Usage(10, 10), NOW) is None
    assert pricer.cost("openai", "", Usage(10, 10), NOW) is None


def test_overrides_win_and_add_models() -> None:
    overrides = parse_price_overrides(
        {
            "openai/my-ft-model": {"input_per_mtok": 3, "output_per_mtok": 12, "cached_input_per_mtok": 1.5},
            "openai/gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1},
            "anthropic/claude-private-*": {"input_per_mtok": 2, "output_per_mtok": 4},
        }
    )
    pricer = Pricer(overrides)
    usage = Usage(1_000_000, 1_000_000, cache_read_tokens=500_000)
    assert pricer.cost("openai", "my-ft-model", usage, NOW) == pytest.approx(0.5 * 3 + 0.5 * 1.5 + 12)
    assert pricer.cost("openai", "gpt-4o-mini", Usage(1_000_000, 0), NOW) == pytest.approx(1.0)
    assert pricer.cost("anthropic", "claude-private-7", Usage(0, 1_000_000), NOW) == pytest.approx(4.0)
    assert pricer.cost("gemini", "my-ft-model", usage, NOW) is None  # another provider's name


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"my-model": {"input_per_mtok": 1, "output_per_mtok": 1}}, "provider/model"),
        ({"mistral/m": {"input_per_mtok": 1, "output_per_mtok": 1}}, "provider/model"),
        ({"openai/m": {"input_per_mtok": 1}}, "missing output_per_mtok"),
        ({"openai/m": {"input_per_mtok": -1, "output_per_mtok": 1}}, "negative"),
        ({"openai/m": {"input_per_mtok": "1", "output_per_mtok": 1}}, "must be a number"),
        ({"openai/m": {"input_per_mtok": 1, "output_per_mtok": 1, "inptu": 2}}, "unknown field"),
    ],
)
def test_bad_price_overrides_stop_start(tmp_path, table: dict[str, object], problem: str) -> None:
    import tomli_w

    config = tmp_path / "sluice.toml"
    config.write_text(tomli_w.dumps({"prices": table}))
    with pytest.raises(ConfigError, match=problem):
        load_settings({"SLUICE_CONFIG": str(config)})


def test_price_overrides_reach_the_settings(tmp_path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[prices."openai/my-ft-model"]\ninput_per_mtok = 3\noutput_per_mtok = 12\n')
    settings = load_settings({"SLUICE_CONFIG": str(config)})
    assert Pricer(settings.prices).cost("openai", "my-ft-model", Usage(1_000_000, 0), NOW) == pytest.approx(3)
