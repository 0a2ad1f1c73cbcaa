"""OpenTelemetry traces from a real Sluice process to a real OTLP/HTTP receiver on loopback.

The official SDKs send requests (streamed and not) carrying a W3C
``traceparent``; the receiver (tests/otlp_receiver.py) decodes what Sluice's
exporter POSTs. Both transports (the module is in conftest's BOTH_MODES):
the client span wraps either one's upstream client.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.conftest import CANARIES, SluiceFactory, SluiceProcess, upstream_env
from tests.helpers import GUARD, closed_port
from tests.otlp_receiver import (
    CLIENT,
    SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    OtlpReceiver,
    ReceivedSpan,
    start_receiver,
)

pytestmark = pytest.mark.timeout(90)

KEY_NAME = "team-alpha"
COLLECTOR_TOKEN = "collector-token-5f1e9a"  # OTEL_EXPORTER_OTLP_HEADERS: for the collector only
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Traced:
    sluice: SluiceProcess
    receiver: OtlpReceiver
    secret: str  # the client key team-alpha's secret

    def server_span(self, request_id: str) -> ReceivedSpan:
        """The one SERVER span of the request with this X-Request-ID (a second one fails)."""
        spans = self.receiver.wait_for(
            lambda s: s.kind == SERVER and s.attributes.get("sluice.request.id") == request_id
        )
        time.sleep(0.3)  # a duplicate would be in the same or the next batch
        again = [s for s in self.receiver.spans if s.attributes.get("sluice.request.id") == request_id]
        assert len(again) == 1, f"{len(again)} server spans for one request"
        return spans[0]

    def client_spans(self, server: ReceivedSpan, count: int = 1) -> list[ReceivedSpan]:
        return self.receiver.wait_for(
            lambda s: s.kind == CLIENT and s.parent_span_id == server.span_id, count=count
        )


def otel_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "sluice-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans arrive quickly (the SDK reads this one itself)
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    handle = start_receiver()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    receiver: OtlpReceiver,
) -> Iterator[Traced]:
    keys_file = tmp_path_factory.mktemp("traced") / "keys.toml"
    secret = create_key(keys_file, KEY_NAME, Limits(rpm=10_000))
    process = sluice_factory(
        **upstream_env(mock),
        **otel_env(receiver.url),
        SLUICE_KEYS_FILE=str(keys_file),
        OTEL_EXPORTER_OTLP_HEADERS=f"x-collector-token={COLLECTOR_TOKEN}",
    )
    yield Traced(process, receiver, secret)
    # Whatever the tests sent, no secret is in any span, resource or event.
    texts = [text for span in receiver.spans for text in span.strings()]
    for secret_text in (*CANARIES, secret):
        assert not any(secret_text in text for text in texts), "a secret reached a span"
    for secret_text in (*CANARIES, secret, COLLECTOR_TOKEN):
        assert secret_text not in process.log()


def new_trace() -> tuple[str, str, str]:
    """A caller's trace id, span id and the ``traceparent`` naming them (sampled)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def request_id(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}"


def assert_server_span(
    span: ReceivedSpan, *, trace_id: str, parent: str, provider: str, model: str, route: str
) -> None:
    assert span.trace_id == trace_id and span.parent_span_id == parent  # the caller's trace goes on
    attributes = span.attributes
    assert attributes["gen_ai.provider.name"] == provider
    assert attributes["gen_ai.request.model"] == model
    assert attributes["sluice.key.name"] == KEY_NAME
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == route
    assert attributes["http.response.status_code"] == 200
    assert attributes["sluice.outcome"] == "ok"
    assert span.name == f"POST {route}"
    assert span.status_code == STATUS_UNSET
    first_byte = span.event("sluice.first_byte")
    assert first_byte is not None and span.start_ns < first_byte[1] <= span.end_ns
    assert span.resource["service.name"] == "sluice-under-test"
    assert span.resource["deployment.environment"] == "test"
    assert span.scope == "sluice"


def assert_client_span(
    span: ReceivedSpan, server: ReceivedSpan, mock: MockHandle, sent: dict[str, str]
) -> None:
    assert span.trace_id == server.trace_id
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == mock.port
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.request.method"] == "POST"
    assert "?" not in span.attributes["url.full"]
    assert span.status_code == STATUS_UNSET
    assert server.start_ns <= span.start_ns and span.end_ns <= server.end_ns
    # The upstream heard of this span, not of the caller's.
    assert sent["traceparent"] == f"00-{server.trace_id}-{span.span_id}-01"


def test_openai_stream_is_one_server_span_with_a_client_child(traced: Traced, mock: MockHandle) -> None:
    trace_id, parent, traceparent = new_trace()
    rid = request_id("openai-stream")
    client = openai.OpenAI(
        base_url=f"{traced.sluice.url}/v1",
        api_key=traced.secret,
        max_retries=0,
        timeout=GUARD,
        default_headers={"traceparent": traceparent, "x-request-id": rid, "x-mock-tokens": "6"},
    )
    usage = None
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None
    server = traced.server_span(rid)
    assert_server_span(
        server, trace_id=trace_id, parent=parent, provider="openai", model="gpt-4o-mini",
        route="/v1/chat/completions",
    )  # fmt: skip
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens == 6
    # Priced from the same usage with genai-prices' table (gpt-4o-mini: $0.15 in, $0.60 out per Mtok).
    expected = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1e6
    assert server.attributes["sluice.cost_usd"] == pytest.approx(expected, rel=1e-6)
    (upstream,) = traced.client_spans(server)
    assert_client_span(upstream, server, mock, mock.state.last("/chat/completions").headers)
    # The exports carried the configured headers (and only the collector saw them).
    assert any(h.get("x-collector-token") == COLLECTOR_TOKEN for h in traced.receiver.headers)
    assert COLLECTOR_TOKEN not in str(mock.state.last("/chat/completions").headers)
    assert upstream.attributes["url.full"] == f"{mock.url}/openai-prefix/v1/chat/completions"


def test_openai_unstreamed(traced: Traced, mock: MockHandle) -> None:
    trace_id, parent, traceparent = new_trace()
    rid = request_id("openai-json")
    client = openai.OpenAI(
        base_url=f"{traced.sluice.url}/openai/v1",
        api_key=traced.secret,
        max_retries=0,
        timeout=GUARD,
        default_headers={"traceparent": traceparent, "x-request-id": rid, "x-mock-tokens": "4"},
    )
    reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert reply.usage is not None
    server = traced.server_span(rid)
    assert_server_span(
        server, trace_id=trace_id, parent=parent, provider="openai", model="gpt-4o",
        route="/openai/v1/chat/completions",
    )  # fmt: skip
    assert server.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens == 4
    (upstream,) = traced.client_spans(server)
    assert_client_span(upstream, server, mock, mock.state.last("/chat/completions").headers)


def gemini_client(traced: Traced, **headers: str) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=traced.sluice.url,
        headers=headers,
        timeout=int(GUARD * 1000),
        retry_options=genai_types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key=traced.secret, http_options=options)


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "json"])
def test_gemini(traced: Traced, mock: MockHandle, streamed: bool) -> None:
    trace_id, parent, traceparent = new_trace()
    rid = request_id("gemini")
    client = gemini_client(traced, traceparent=traceparent, **{"x-request-id": rid, "x-mock-tokens": "5"})
    if streamed:
        chunks = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
        usage = chunks[-1].usage_metadata
        method = "streamGenerateContent"
    else:
        usage = client.models.generate_content(model="gemini-2.0-flash", contents="hi").usage_metadata
        method = "generateContent"
    assert usage is not None
    server = traced.server_span(rid)
    route = f"/v1/models/{{model}}:{method}"
    assert_server_span(
        server, trace_id=trace_id, parent=parent, provider="gcp.gemini", model="gemini-2.0-flash", route=route
    )
    assert server.attributes["gen_ai.operation.name"] == "generate_content"
    assert server.attributes["gen_ai.usage.input_tokens"] == usage.prompt_token_count
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.candidates_token_count == 5
    (upstream,) = traced.client_spans(server)
    assert_client_span(upstream, server, mock, mock.state.last(f":{method}").headers)


def test_anthropic_stream(traced: Traced, mock: MockHandle) -> None:
    trace_id, parent, traceparent = new_trace()
    rid = request_id("anthropic")
    client = anthropic.Anthropic(
        base_url=traced.sluice.url,
        api_key=traced.secret,
        max_retries=0,
        timeout=GUARD,
        default_headers={"traceparent": traceparent, "x-request-id": rid, "x-mock-tokens": "3"},
    )
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    server = traced.server_span(rid)
    assert_server_span(
        server, trace_id=trace_id, parent=parent, provider="anthropic", model="claude-sonnet-4-5",
        route="/v1/messages",
    )  # fmt: skip
    assert server.attributes["gen_ai.usage.output_tokens"] == final.usage.output_tokens == 3
    (upstream,) = traced.client_spans(server)
    assert_client_span(upstream, server, mock, mock.state.last("/messages").headers)


def test_without_traceparent_a_new_trace_starts(traced: Traced, mock: MockHandle) -> None:
    rid = request_id("root")
    with httpx.Client(base_url=traced.sluice.url, timeout=GUARD) as http:
        reply = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"authorization": f"Bearer {traced.secret}", "x-request-id": rid},
        )
    assert reply.status_code == 200
    server = traced.server_span(rid)
    assert server.parent_span_id == "" and re.fullmatch("[0-9a-f]{32}", server.trace_id)
    (upstream,) = traced.client_spans(server)
    version, trace_id, span_id, flags = mock.state.last("/chat/completions").headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", server.trace_id, upstream.span_id)
    assert int(flags, 16) & 1  # sampled (and the SDK's own trace ids are marked random: 0x02)


def test_an_unsampled_caller_gets_no_spans_and_its_decision_goes_upstream(
    traced: Traced, mock: MockHandle
) -> None:
    trace_id, parent, _ = new_trace()
    rid = request_id("unsampled")
    client = openai.OpenAI(
        base_url=f"{traced.sluice.url}/v1", api_key=traced.secret, max_retries=0, timeout=GUARD,
        default_headers={"traceparent": f"00-{trace_id}-{parent}-00", "x-request-id": rid},
    )  # fmt: skip
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    sent = mock.state.last("/chat/completions").headers["traceparent"]
    version, sent_trace, sent_span, flags = sent.split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "00") and sent_span != parent
    # A later request's spans arrive; none of this one's (parentbased_always_on follows the caller).
    later = request_id("after-unsampled")
    httpx.post(
        f"{traced.sluice.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES},
        headers={"authorization": f"Bearer {traced.secret}", "x-request-id": later}, timeout=GUARD,
    )  # fmt: skip
    traced.server_span(later)
    assert not [s for s in traced.receiver.spans if s.trace_id == trace_id]


def test_cut_stream_is_an_error_on_both_spans(traced: Traced) -> None:
    _trace_id, _parent, traceparent = new_trace()
    rid = request_id("cut")
    client = openai.OpenAI(
        base_url=f"{traced.sluice.url}/v1",
        api_key=traced.secret,
        max_retries=0,
        timeout=GUARD,
        default_headers={"traceparent": traceparent, "x-request-id": rid, "x-mock-drop-after": "3"},
    )
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _chunk in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass
    server = traced.server_span(rid)
    assert server.status_code == STATUS_ERROR
    assert server.attributes["error.type"] == "cut_mid_stream"
    assert server.attributes["sluice.outcome"] == "upstream_error"
    assert server.attributes["http.response.status_code"] == 200
    (upstream,) = traced.client_spans(server)
    assert upstream.status_code == STATUS_ERROR and upstream.attributes["error.type"] == "cut_mid_stream"


def test_upstream_5xx_is_an_error(traced: Traced) -> None:
    rid = request_id("five")
    client = openai.OpenAI(
        base_url=f"{traced.sluice.url}/v1", api_key=traced.secret, max_retries=0, timeout=GUARD,
        default_headers={"x-request-id": rid, "x-mock-status": "500"},
    )  # fmt: skip
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    server = traced.server_span(rid)
    assert server.status_code == STATUS_ERROR and server.attributes["error.type"] == "500"
    (upstream,) = traced.client_spans(server)
    assert upstream.status_code == STATUS_ERROR and upstream.attributes["http.response.status_code"] == 500


def test_rejected_key_is_a_span_without_an_upstream_call(traced: Traced) -> None:
    rid = request_id("rejected")
    client = openai.OpenAI(
        base_url=f"{traced.sluice.url}/v1", api_key="sk-sluice-not-a-key", max_retries=0, timeout=GUARD,
        default_headers={"x-request-id": rid},
    )  # fmt: skip
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    server = traced.server_span(rid)
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["sluice.outcome"] == "rejected_auth"
    assert server.status_code == STATUS_UNSET  # a refusal is not the server's error
    assert "sluice.key.name" not in server.attributes
    time.sleep(0.3)
    assert not [s for s in traced.receiver.spans if s.parent_span_id == server.span_id]


def test_a_key_in_the_query_string_stays_out_of_spans(traced: Traced) -> None:
    rid = request_id("query-key")
    with httpx.Client(base_url=traced.sluice.url, timeout=GUARD) as http:
        reply = http.post(
            f"/v1beta/models/gemini-2.0-flash:generateContent?key={traced.secret}",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-request-id": rid},
        )
    assert reply.status_code == 200
    server = traced.server_span(rid)
    (upstream,) = traced.client_spans(server)
    for span in (server, upstream):
        assert not any(traced.secret in text for text in span.strings())
    # (The module's fixture scans every span received for every secret.)


@pytest.fixture(scope="module")
def dead_upstream(mock: MockHandle, sluice_factory: SluiceFactory, receiver: OtlpReceiver) -> SluiceProcess:
    dead = f"http://127.0.0.1:{closed_port()}"
    env = {**upstream_env(mock), **otel_env(receiver.url), "SLUICE_OPENAI_UPSTREAM": dead}
    env["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"] = "gzip"
    return sluice_factory(**env, SLUICE_CONNECT_RETRIES="0")


def test_unreachable_upstream_is_an_error_on_both_spans(
    dead_upstream: SluiceProcess, receiver: OtlpReceiver
) -> None:
    rid = request_id("unreachable")
    client = openai.OpenAI(
        base_url=f"{dead_upstream.url}/v1", api_key="unused", max_retries=0, timeout=GUARD,
        default_headers={"x-request-id": rid},
    )  # fmt: skip
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert raised.value.status_code == 502
    (server,) = receiver.wait_for(lambda s: s.attributes.get("sluice.request.id") == rid)
    assert server.status_code == STATUS_ERROR
    assert server.attributes["sluice.outcome"] == "upstream_error"
    assert server.attributes["error.type"] == "unreachable"
    assert server.attributes["http.response.status_code"] == 502
    (upstream,) = receiver.wait_for(lambda s: s.parent_span_id == server.span_id)
    assert upstream.kind == CLIENT and upstream.status_code == STATUS_ERROR
    assert upstream.attributes["error.type"] == "ConnectFailed"
    assert "http.response.status_code" not in upstream.attributes
    assert any(h.get("content-encoding") == "gzip" for h in receiver.headers)  # its exports


def test_requests_succeed_promptly_with_the_receiver_down(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    env = {
        **upstream_env(mock),
        **otel_env(f"http://127.0.0.1:{closed_port()}"),
        "OTEL_BSP_SCHEDULE_DELAY": "20",  # a failed export every few requests
        "OTEL_EXPORTER_OTLP_TIMEOUT": "0.2",  # the Python SDK's unit: seconds
    }
    process = sluice_factory(**env)
    client = openai.OpenAI(
        base_url=f"{process.url}/v1", api_key="unused", max_retries=0, timeout=GUARD,
        default_headers={"x-mock-tokens": "3"},
    )  # fmt: skip
    started = time.monotonic()
    for i in range(40):
        if i % 2:
            reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert reply.choices[0].message.content
        else:
            assert len(list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)))
        time.sleep(0.02)
    # Generous for a loaded machine: forty requests take well under a second here.
    assert time.monotonic() - started < 20
    time.sleep(1.0)
    export_lines = [line for line in process.log().splitlines() if "batch" in line]
    # Each kind of complaint at most once a minute, however many batches failed.
    assert 1 <= len(export_lines) <= 3, export_lines
    stopping = time.monotonic()
    process.stop()
    assert time.monotonic() - stopping < 9  # the final flush is not waited for long


def test_every_worker_exports_and_flushes_at_shutdown(
    mock: MockHandle, sluice_factory: SluiceFactory, receiver: OtlpReceiver
) -> None:
    """Each worker builds its own provider after the fork; stopping exports what waits in its queue."""
    env = {**upstream_env(mock), **otel_env(receiver.url), "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    process = sluice_factory(**env, SLUICE_WORKERS="2")
    ids = [request_id("worker") for _ in range(6)]
    for rid in ids:  # a connection each: the kernel spreads them over the workers
        reply = httpx.post(
            f"{process.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"x-request-id": rid}, timeout=GUARD,
        )  # fmt: skip
        assert reply.status_code == 200
    time.sleep(0.5)
    assert not [s for s in receiver.spans if s.attributes.get("sluice.request.id") in ids]  # still queued
    process.stop()
    servers = receiver.wait_for(lambda s: s.attributes.get("sluice.request.id") in ids, count=6)
    assert {s.attributes["sluice.request.id"] for s in servers} == set(ids)
    assert all(isinstance(s.resource["process.pid"], int) for s in servers)


def test_a_failover_is_a_client_span_per_attempt(
    mock: MockHandle, sluice_factory: SluiceFactory, receiver: OtlpReceiver
) -> None:
    primary, backup = "sk-primary-TRACEDprimary0123", "sk-backup-TRACEDbackup4567"
    env = {**upstream_env(mock), **otel_env(receiver.url), "OPENAI_API_KEY": f"{primary},{backup}"}
    process = sluice_factory(**env)
    mock.state.set_key_rule(primary, 401)
    rid = request_id("failover")
    client = openai.OpenAI(
        base_url=f"{process.url}/v1", api_key="unused", max_retries=0, timeout=GUARD,
        default_headers={"x-request-id": rid},
    )  # fmt: skip
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    (server,) = receiver.wait_for(lambda s: s.attributes.get("sluice.request.id") == rid)
    assert server.status_code == STATUS_UNSET and server.attributes["http.response.status_code"] == 200
    assert server.attributes["sluice.credential"] == "OPENAI_API_KEY[2]"
    attempts = sorted(
        receiver.wait_for(lambda s: s.parent_span_id == server.span_id, count=2), key=lambda s: s.start_ns
    )
    assert [a.attributes["http.response.status_code"] for a in attempts] == [401, 200]
    assert [a.status_code for a in attempts] == [STATUS_ERROR, STATUS_UNSET]
    texts = [text for span in (server, *attempts) for text in span.strings()]
    assert not any(primary in text or backup in text for text in texts)
