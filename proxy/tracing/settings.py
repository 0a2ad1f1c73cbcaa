"""The OpenTelemetry variables Sluice reads, and what they mean to it.

Tracing is off unless an OTLP endpoint is named (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or ``OTEL_TRACES_EXPORTER=otlp``
asks for the standard default (``http://localhost:4318``). The variables that
decide *whether*, *where* and *what* are read here, from the same mapping as
every other setting (so a ``.env`` file works for them too), and passed to
the SDK explicitly. The SDK's own tuning knobs (``OTEL_BSP_*``,
``OTEL_EXPORTER_OTLP_TIMEOUT``, the TLS certificate variables, the span
limits) are left to the SDK, which reads them from the process environment
when the tracer provider is built: Sluice has no reason to second-guess
them, and repeating the SDK's parsing here would only drift from it.

This module imports nothing from OpenTelemetry: ``config.py`` imports it
whether or not tracing is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import unquote, urlsplit

SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
SAMPLERS: tuple[SamplerName, ...] = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_ENDPOINT = "http://localhost:4318"
TRACES_PATH = "/v1/traces"


class TracingSettingError(ValueError):
    """An OTEL_* variable has a value Sluice cannot trace with (``config.py`` makes it a ConfigError)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Where spans go and which are kept. Present only when tracing is on."""

    endpoint: str  # the full URL spans are POSTed to, e.g. http://collector:4318/v1/traces
    service_name: str = "sluice"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    sampler: SamplerName = "parentbased_always_on"
    sampler_arg: float = 1.0  # the ratio of the *traceidratio samplers
    # Sent with every export: often a backend's API key, so never printed.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    compression: Literal["none", "gzip"] = "none"


def _get(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to something, and its value (signal-specific names go first)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingSettingError(name, f"must be an http:// or https:// URL (got {raw!r})")
    return raw


def _pairs(name: str, raw: str) -> dict[str, str]:
    """``key=value,key2=value2``, each part percent-decoded (the W3C Baggage form the spec uses)."""
    pairs: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            # Not the value: it may be a header holding a secret.
            raise TracingSettingError(name, "must be key=value pairs separated by commas")
        pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _enabled(env: Mapping[str, str]) -> bool | None:
    """False when tracing is switched off outright, True when asked for, None: up to the endpoint."""
    disabled = _get(env, "OTEL_SDK_DISABLED")
    if disabled is not None and disabled[1].lower() == "true":
        return False
    exporter = _get(env, "OTEL_TRACES_EXPORTER")
    if exporter is None:
        return None
    if exporter[1].lower() == "none":
        return False
    if exporter[1].lower() != "otlp":
        raise TracingSettingError(exporter[0], f"Sluice exports only otlp (or none), not {exporter[1]!r}")
    return True


def load_tracing(env: Mapping[str, str]) -> TracingSettings | None:
    """The tracing settings in ``env``, or None when tracing is off."""
    enabled = _enabled(env)
    if enabled is False:
        return None
    traces = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if traces is not None:
        endpoint = _url(*traces)  # the signal's own URL is used as given
    elif base is not None:
        endpoint = _url(*base).rstrip("/") + TRACES_PATH
    elif enabled:
        endpoint = DEFAULT_ENDPOINT + TRACES_PATH
    else:
        return None
    protocol = _get(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol is not None and protocol[1] != "http/protobuf":
        problem = f"Sluice exports OTLP over http/protobuf only, not {protocol[1]!r}"
        raise TracingSettingError(protocol[0], problem)
    resource = _get(env, "OTEL_RESOURCE_ATTRIBUTES")
    attributes = _pairs(*resource) if resource is not None else {}
    service = _get(env, "OTEL_SERVICE_NAME")
    headers = _get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    compression = _get(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    if compression is not None and compression[1] not in ("none", "gzip"):
        raise TracingSettingError(compression[0], "must be gzip or none")
    sampler, ratio = _sampler(env)
    return TracingSettings(
        endpoint=endpoint,
        service_name=service[1] if service else attributes.get("service.name", "sluice"),
        resource_attributes=attributes,
        sampler=sampler,
        sampler_arg=ratio,
        headers=_pairs(*headers) if headers is not None else {},
        compression=cast(Literal["none", "gzip"], compression[1] if compression else "none"),
    )


def _sampler(env: Mapping[str, str]) -> tuple[SamplerName, float]:
    found = _get(env, "OTEL_TRACES_SAMPLER")
    name = found[1].lower() if found else "parentbased_always_on"
    if name not in SAMPLERS:
        raise TracingSettingError("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(SAMPLERS)}")
    arg = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    ratio = 1.0
    if arg is not None and name.endswith("traceidratio"):
        try:
            ratio = float(arg[1])
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingSettingError(arg[0], f"must be a ratio between 0 and 1 (got {arg[1]!r})")
    return name, ratio
