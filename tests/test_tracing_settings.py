"""Which OTEL_* variables turn tracing on, what they mean, and that off means absent."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from proxy.config import ConfigError, load_settings
from proxy.tracing.names import operation_name, route_template
from proxy.tracing.settings import TracingSettings, load_tracing
from tests.conftest import ROOT, clean_env


def test_off_without_an_endpoint() -> None:
    assert load_tracing({}) is None
    assert load_tracing({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None
    assert load_settings({}).tracing is None


def test_the_base_endpoint_gets_the_traces_path() -> None:
    tracing = load_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert tracing is not None
    assert tracing.endpoint == "http://collector:4318/v1/traces"
    assert (tracing.service_name, tracing.sampler, tracing.sampler_arg) == (
        "sluice",
        "parentbased_always_on",
        1.0,
    )


def test_the_traces_endpoint_is_used_as_given_and_wins() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/custom/path",
    }
    tracing = load_tracing(env)
    assert tracing is not None and tracing.endpoint == "https://traces.example/custom/path"


def test_otlp_exporter_alone_means_the_standard_default() -> None:
    tracing = load_tracing({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing is not None and tracing.endpoint == "http://localhost:4318/v1/traces"


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}], ids=["disabled", "none"]
)
def test_switched_off_whatever_the_endpoint(switch: dict[str, str]) -> None:
    assert load_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", **switch}) is None


def test_service_resource_headers_sampler() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,deployment.environment=prod%2Ceu",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=secret-team-key,other=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20secret-token",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    tracing = load_tracing(env)
    assert tracing is not None
    assert tracing.service_name == "from-resource"  # OTEL_SERVICE_NAME would win
    assert tracing.resource_attributes["deployment.environment"] == "prod,eu"
    assert tracing.headers == {"authorization": "Bearer secret-token"}  # the signal's own headers win
    assert (tracing.sampler, tracing.sampler_arg, tracing.compression) == (
        "parentbased_traceidratio",
        0.25,
        "gzip",
    )
    assert "secret" not in repr(tracing) and "secret" not in repr(load_settings(env))
    assert load_tracing({**env, "OTEL_SERVICE_NAME": "named"}).service_name == "named"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://x/v1/traces"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-secret"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ],
)
def test_a_bad_value_stops_start_up_naming_it(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", **env})
    assert raised.value.setting == setting
    assert "secret" not in str(raised.value)


def test_sampler_built_from_the_settings() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

    from proxy.tracing.provider import sampler

    ratio = sampler(TracingSettings("http://x/v1/traces", sampler="traceidratio", sampler_arg=0.5))
    assert isinstance(ratio, TraceIdRatioBased) and ratio.rate == 0.5
    parent = sampler(TracingSettings("http://x/v1/traces", sampler="parentbased_always_off"))
    assert isinstance(parent, ParentBased) and parent._root is ALWAYS_OFF


def test_exporter_complaints_pass_once_per_interval() -> None:
    from proxy.tracing.provider import OncePerInterval

    limit = OncePerInterval(interval=3600)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.x", logging.ERROR, __file__, 1, msg, (), None)

    passed = [limit.filter(record("Failed to export %s batch")) for _ in range(50)]
    assert passed == [True] + [False] * 49
    assert limit.filter(record("Queue full, dropping %s."))  # another kind of complaint
    limit.interval = 0  # the interval is over: the next says how many were held back
    shown = record("Failed to export %s batch")
    assert limit.filter(shown) and "49 more like it" in str(shown.msg)


def test_names() -> None:
    assert route_template("/v1beta/models/gemini-2.0-flash:streamGenerateContent") == (
        "/v1beta/models/{model}:streamGenerateContent"
    )
    assert route_template("/openai/v1/models/gpt-4o") == "/openai/v1/models/{model}"
    assert route_template("/v1/chat/completions") == "/v1/chat/completions"
    assert operation_name("/v1/chat/completions") == "chat"
    assert operation_name("/v1/messages") == "chat"
    assert operation_name("/v1/models/m:generateContent") == "generate_content"
    assert operation_name("/v1/embeddings") == "embeddings"
    assert operation_name("/v1/files") is None


def test_tracing_off_leaves_no_trace_in_the_app() -> None:
    """Off: no layer in the chain, no wrapper around the client, and the SDK is never imported."""
    script = textwrap.dedent(
        """
        import sys
        from proxy.app import create_app
        from proxy.config import load_settings

        app = create_app(load_settings({}))
        services = app.state.services
        assert services.tracing is None
        assert type(services.upstream).__name__ != "TracedClient", services.upstream
        layer = app.chain
        while layer is not None:  # Gate, access log, …, Dispatch
            assert type(layer).__name__ != "ServerSpans", layer
            layer = getattr(layer, "app", None)
        assert "opentelemetry.sdk" not in sys.modules
        assert "proxy.tracing.worker" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_tracing_on_puts_the_layer_just_inside_the_gate() -> None:
    script = textwrap.dedent(
        """
        from proxy.app import create_app
        from proxy.config import load_settings

        app = create_app(load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}))
        assert type(app.state.services.upstream).__name__ == "TracedClient"
        assert type(app.chain.app).__name__ == "ServerSpans"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr
