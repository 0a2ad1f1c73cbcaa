"""Which model a request may reach, and how many tokens it may ask for.

Three rules, applied in this order, the same for every provider:

1. **A forced model** (a key's ``force_model``, ``provider/model``): every
   request of the key goes to that model; a request to another provider's
   API is refused, since the formats differ.
2. **A default model** (a key's ``default_model``): used only when the
   request names none (OpenAI and Anthropic carry the model in the JSON body;
   Gemini always names it in the path).
3. **An alias** (``[models.aliases]`` in the config file, or
   ``SLUICE_MODEL_ALIASES``): ``fast`` becomes the model it stands for, if it
   is the API's own provider's.

The result replaces only the ``model`` member of the body, or the model
segment of a Gemini path; every other byte is the client's
(:mod:`proxy.jsonedit`). A key's ``max_output_tokens`` caps what a request
may ask for: a larger ``max_tokens`` (or ``max_completion_tokens``,
``max_output_tokens``, Gemini's ``generationConfig.maxOutputTokens``) is
refused, and a request that asks for no limit gets the cap added.
A request that breaks a rule is refused in the provider's error format,
naming the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from .jsonedit import add_member, member_spans, replace_value
from .jsonread import loads
from .keys import ClientKey

# What a request may name to ask for a maximum of output tokens, per provider.
_CAP_FIELDS: Mapping[str, tuple[str, ...]] = {
    "openai": ("max_completion_tokens", "max_tokens", "max_output_tokens"),
    "anthropic": ("max_tokens",),
}


class PolicyError(Exception):
    """A request broke a rule: the status and the message for the client."""

    def __init__(self, status: int, rule: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.rule = rule  # the access log's detail
        self.message = message


def split_target(target: str) -> tuple[str, str]:
    """``openai/gpt-4o-mini`` → ``("openai", "gpt-4o-mini")``."""
    provider, _, model = target.partition("/")
    return provider, model


def effective_model(
    requested: str | None, provider: str, key: ClientKey | None, aliases: Mapping[str, str]
) -> str | None:
    """The model the upstream is to get. Raises :class:`PolicyError`."""
    if key is not None and key.force_model is not None:
        forced_provider, forced = split_target(key.force_model)
        if forced_provider != provider:
            raise PolicyError(
                403, "forced_model", f"This key may use only {forced_provider}/{forced}; send it to that API."
            )
        return forced
    if requested is None:
        if key is not None and key.default_model is not None:
            default_provider, default = split_target(key.default_model)
            return default if default_provider == provider else None
        return None
    target = aliases.get(requested)
    if target is None:
        return requested
    alias_provider, model = target.partition("/")[::2]
    if alias_provider != provider:
        raise PolicyError(
            400,
            "alias",
            f"The model alias {requested!r} names {target}: send it to the {alias_provider} API.",
        )
    return model


def needs_body(provider: str, key: ClientKey | None, aliases: Mapping[str, str]) -> bool:
    """Whether the rules may have to read or change this request's JSON body.

    Gemini's model is in the path: only a cap needs its body.
    """
    if key is not None and key.max_output_tokens is not None:
        return True
    if provider == "gemini":
        return False
    return bool(aliases) or (
        key is not None and (key.force_model is not None or key.default_model is not None)
    )


def rewrite_body(
    body: bytes, provider: str, upstream_path: str, key: ClientKey | None, aliases: Mapping[str, str]
) -> tuple[bytes, str | None]:
    """The body the upstream is to get, and the model it names (None: Gemini, or none).

    Unchanged bytes when no rule applies. Raises :class:`PolicyError`. A
    body that is not a JSON object is left to the upstream to refuse, unless
    a cap must be enforced on it.
    """
    cap = key.max_output_tokens if key is not None else None
    try:
        document = loads(body)
    except ValueError:
        document = None
    spans = member_spans(body) if isinstance(document, dict) else None
    if spans is None or not isinstance(document, dict):
        if cap is not None:
            raise PolicyError(400, "max_output_tokens", "The request body is not a JSON object.")
        return body, None
    model = requested = None
    if provider != "gemini":
        named = document.get("model")
        requested = named if isinstance(named, str) else None
        model = effective_model(requested, provider, key, aliases)
    if cap is not None:
        body = _capped(body, spans, document, provider, upstream_path, cap)
        spans = member_spans(body) or spans
    if model is not None and model != requested:
        body = (
            replace_value(body, spans["model"], model)
            if "model" in spans
            else add_member(body, "model", model)
        )
    return body, model


def _capped(
    body: bytes,
    spans: dict[str, tuple[int, int]],
    document: dict[str, object],
    provider: str,
    upstream_path: str,
    cap: int,
) -> bytes:
    if provider == "gemini":
        return _gemini_capped(body, spans, document, cap)
    named = [name for name in _CAP_FIELDS.get(provider, ()) if name in document]
    for name in named:
        asked = document[name]
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > cap:
            raise PolicyError(
                400,
                "max_output_tokens",
                f"This key allows at most {cap} output tokens a request ({name}={asked}).",
            )
    if named:
        return body
    return add_member(body, _cap_field(provider, upstream_path), cap)


def _cap_field(provider: str, upstream_path: str) -> str:
    """The field a request without a limit gets: the one its endpoint reads."""
    if provider == "openai" and upstream_path.endswith("/chat/completions"):
        return "max_completion_tokens"
    if provider == "openai" and upstream_path.endswith("/responses"):
        return "max_output_tokens"
    return "max_tokens"


def _gemini_capped(
    body: bytes, spans: dict[str, tuple[int, int]], document: dict[str, object], cap: int
) -> bytes:
    config = document.get("generationConfig")
    if not isinstance(config, dict) or "generationConfig" not in spans:
        return add_member(body, "generationConfig", {"maxOutputTokens": cap})
    asked = config.get("maxOutputTokens")
    if asked is not None:
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > cap:
            raise PolicyError(
                400,
                "max_output_tokens",
                f"This key allows at most {cap} output tokens a request (maxOutputTokens={asked}).",
            )
        return body
    start, end = spans["generationConfig"]
    inner = add_member(body[start:end], "maxOutputTokens", cap)
    return body[:start] + inner + body[end:]


def gemini_path(upstream_path: str, model: str) -> str:
    """A Gemini path naming ``model`` instead of the one it names: ``…/models/{model}:{method}``."""
    marker = upstream_path.index("/models/") + len("/models/")
    colon = upstream_path.index(":", marker)
    return upstream_path[:marker] + quote(model, safe="") + upstream_path[colon:]
