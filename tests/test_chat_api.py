"""The provider-neutral chat API: events, errors, resume, cancel, grace, auth (against the mock)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.chat.events import ChatEvent
from proxy.chat.request import BadChatRequest, from_json, from_query
from proxy.chat.store import EventsExpired, GenerationMeta, MemoryStore
from proxy.config import ConfigError, load_settings
from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.accesslog import read_lines
from tests.chat_helpers import MESSAGES, MODELS, Event, SseReader, assert_valid, chat_stream, kinds, text_of
from tests.conftest import CANARIES, CANARY_KEYS, SluiceFactory, SluiceProcess, upstream_env
from tests.helpers import dead_upstream_sluice, mock_input_tokens, text
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

GRACE = 0.6  # seconds; short, so the grace tests are quick
PACED = {"x-mock-tokens": "30", "x-mock-delay-ms": "40"}  # ≈ 1.2 s of tokens


def body(provider: str = "openai", **extra: object) -> dict[str, object]:
    return {"model": MODELS[provider], "messages": MESSAGES, **extra}


@pytest.fixture(scope="module")
def chat(mock: MockHandle, sluice_factory: SluiceFactory) -> SluiceProcess:
    """A Sluice with a short grace period and quick heartbeats."""
    return sluice_factory(
        **upstream_env(mock),
        SLUICE_CHAT_GRACE=str(GRACE),
        SLUICE_CHAT_HEARTBEAT_INTERVAL="0.2",
        SLUICE_CHAT_ALIASES="fast=openai/gpt-4o-mini",
    )


@pytest.fixture
async def client(chat: SluiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=chat.url, timeout=10) as c:
        yield c


# --- the stream, per provider ---------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
async def test_events_text_and_usage_per_provider(
    provider: str, client: httpx.AsyncClient, mock: MockHandle
) -> None:
    async with chat_stream(client, body=body(provider), headers={"x-mock-tokens": "15"}) as reader:
        assert reader.response.status_code == 200
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        assert reader.response.headers["x-accel-buffering"] == "no"
        events = await reader.until_end()
    assert reader.retry == [1000]
    assert_valid(events)
    assert kinds(events) == ["start", "token*", "usage", "done"]
    start, usage, done = events[0], events[-2], events[-1]
    assert start.data == {
        "generation": start.generation,
        "provider": provider,
        "model": MODELS[provider][len(provider) + 1 :],
    }
    assert reader.response.headers["x-sluice-generation"] == start.generation
    assert text_of(events) == text(15)
    assert done.data["reason"] == "stop"
    rec = mock.state.last()
    assert rec.outcome == "completed"
    inp = mock_input_tokens(rec)
    assert usage.data == {"input_tokens": inp, "output_tokens": 15, "total_tokens": inp + 15}
    # The native request: the provider's own streaming call, with the server-held key.
    if provider == "openai":
        assert rec.path == "/openai-prefix/v1/chat/completions"
        assert rec.headers["authorization"] == f"Bearer {CANARY_KEYS['OPENAI_API_KEY']}"
    elif provider == "gemini":
        assert rec.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        assert rec.query == "alt=sse"
        assert rec.headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"]
    else:
        assert rec.path == "/anthropic-prefix/v1/messages"
        assert rec.headers["x-api-key"] == CANARY_KEYS["ANTHROPIC_API_KEY"]
        assert rec.headers["anthropic-version"] == "2023-06-01"


async def test_options_pass_and_openai_usage_is_asked_for(client: httpx.AsyncClient) -> None:
    # Without stream_options.include_usage the mock (like OpenAI) sends no usage:
    # a usage event proves Sluice asked for it.
    async with chat_stream(client, body={**body("openai"), "max_tokens": 50, "temperature": 0.5}) as reader:
        events = await reader.until_end()
    assert events[-2].event == "usage" and events[-2].data["output_tokens"] == 12


async def test_get_form_for_event_source(client: httpx.AsyncClient) -> None:
    params = {"model": "fast", "prompt": "Hi", "max_tokens": "20"}
    async with chat_stream(client, "GET", params=params, headers={"x-mock-tokens": "4"}) as reader:
        events = await reader.until_end()
    assert_valid(events)
    assert events[0].data["model"] == "gpt-4o-mini"  # the alias, resolved
    assert text_of(events) == text(4)
    history = json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, *MESSAGES])
    params = {"model": MODELS["anthropic"], "messages": history, "system": "Be brief."}
    async with chat_stream(client, "GET", params=params, headers={"x-mock-tokens": "3"}) as reader:
        assert text_of(await reader.until_end()) == text(3)


async def test_heartbeats_while_the_provider_is_silent(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-tokens": "4", "x-mock-silence-after": "2", "x-mock-silence-ms": "900"}
    async with chat_stream(client, body=body("gemini"), headers=headers) as reader:
        events = await reader.until_end()
    assert text_of(events) == text(4)
    assert len(reader.comments) >= 2
    assert set(reader.comments) == {": keepalive"}


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "status", "code", "retryable"),
    [
        ("openai", 429, "rate_limited", True),
        ("anthropic", 529, "overloaded", True),
        ("gemini", 400, "bad_request", False),
        ("openai", 500, "upstream_error", True),
        ("anthropic", 401, "upstream_auth", False),
    ],
)
async def test_upstream_error_becomes_an_error_event(
    provider: str, status: int, code: str, retryable: bool, client: httpx.AsyncClient
) -> None:
    async with chat_stream(client, body=body(provider), headers={"x-mock-status": str(status)}) as reader:
        assert reader.response.status_code == 200
        events = await reader.until_end()
    assert_valid(events)
    assert kinds(events) == ["start", "error"]
    error = events[-1].data
    assert (error["code"], error["retryable"], error["status"]) == (code, retryable, status)
    for canary in CANARIES:  # a 401 body quotes the key it was given: never passed on
        assert canary not in error["message"]


async def test_upstream_cut_mid_stream_is_a_retryable_error(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-tokens": "10", "x-mock-drop-after": "3"}
    async with chat_stream(client, body=body("anthropic"), headers=headers) as reader:
        events = await reader.until_end()
    assert text_of(events) == text(3)
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "stream_cut" and events[-1].data["retryable"] is True


async def test_unreachable_upstream(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    async with httpx.AsyncClient(base_url=dead.url, timeout=10) as c, chat_stream(c, body=body()) as reader:
        events = await reader.until_end()
    assert kinds(events) == ["start", "error"]
    assert events[-1].data["code"] == "unreachable" and events[-1].data["retryable"] is True


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"messages": MESSAGES}, "model is required"),
        ({"model": "gpt-4o", "messages": MESSAGES}, "provider/model"),
        ({"model": "mistral/large", "messages": MESSAGES}, "provider/model"),
        ({"model": "gemini/../../x", "messages": MESSAGES}, "characters"),
        ({"model": "openai/gpt-4o", "messages": []}, "non-empty"),
        ({"model": "openai/gpt-4o", "messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"model": "openai/gpt-4o", "messages": MESSAGES, "max_token": 5}, "Unknown field"),
        ({"model": "openai/gpt-4o", "messages": MESSAGES, "temperature": 7}, "temperature"),
    ],
)
async def test_bad_requests_are_400_with_a_clear_message(
    payload: dict[str, object], fragment: str, client: httpx.AsyncClient, mock: MockHandle
) -> None:
    response = await client.post("/api/chat", json=payload)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert mock.state.records == []


async def test_other_routes_and_methods(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/nothing")).status_code == 404
    assert (await client.delete("/api/chat")).status_code == 405
    assert (await client.get(f"/api/chat/{'a' * 32}/cancel")).status_code == 405
    assert (await client.post(f"/api/chat/{'a' * 32}/cancel")).status_code == 404
    both = {"model": "fast", "prompt": "x", "messages": json.dumps(MESSAGES)}
    assert (await client.get("/api/chat", params=both)).status_code == 400
    schema = await client.get("/api/chat/schema")
    assert schema.status_code == 200 and schema.json()["title"] == "Sluice chat event"
    models = (await client.get("/api/chat/models")).json()
    assert (
        models["aliases"] == {"fast": "openai/gpt-4o-mini"} and "gemini/gemini-2.5-flash" in models["models"]
    )


# --- resume ---------------------------------------------------------------------------


async def read_some(reader: SseReader, count: int) -> list[Event]:
    while len(reader.events) < count:
        assert await reader.next() is not None
    return list(reader.events)


async def resume(client: httpx.AsyncClient, last: Event) -> list[Event]:
    async with chat_stream(client, "GET", headers={"last-event-id": last.id}) as reader:
        assert reader.response.status_code == 200
        return await reader.until_end()


async def test_reconnect_with_last_event_id_misses_and_repeats_nothing(
    client: httpx.AsyncClient, mock: MockHandle
) -> None:
    async with chat_stream(client, body=body("anthropic"), headers=PACED) as reader:
        first = await read_some(reader, 8)
    rest = await resume(client, first[-1])
    assert rest[0].seq == first[-1].seq + 1
    events = first + rest
    assert_valid(events)
    assert text_of(events) == text(30)
    assert kinds(events) == ["start", "token*", "usage", "done"]
    assert len(mock.state.records) == 1 and mock.state.last().outcome == "completed"


async def test_resume_after_the_end_and_of_unknown_generations(client: httpx.AsyncClient) -> None:
    async with chat_stream(client, body=body(), headers={"x-mock-tokens": "3"}) as reader:
        events = await reader.until_end()
    middle = await resume(client, events[1])
    assert [e.seq for e in middle] == [e.seq for e in events[2:]]
    # Caught up with a finished generation: 204, which stops an EventSource reconnecting.
    assert (await client.get("/api/chat", headers={"last-event-id": events[-1].id})).status_code == 204
    assert (await client.get("/api/chat", headers={"last-event-id": f"{'0' * 32}:3"})).status_code == 404
    assert (await client.get("/api/chat", headers={"last-event-id": "nonsense"})).status_code == 400
    by_query = await client.get("/api/chat", params={"last_event_id": events[-1].id})
    assert by_query.status_code == 204


# --- cancel and the grace period ------------------------------------------------------


async def test_cancel_stops_the_upstream_at_once(client: httpx.AsyncClient, mock: MockHandle) -> None:
    async with chat_stream(client, body=body("openai"), headers=PACED) as reader:
        events = await read_some(reader, 4)
        record = mock.state.last()
        asked = time.monotonic()
        response = await client.post(f"/api/chat/{events[0].generation}/cancel")
        assert response.status_code == 202 and response.json()["cancelled"] is True
        ended = await mock.state.wait_for_end(record.id, 5)
        events = await reader.until_end()
    assert ended.outcome == "client_closed"
    assert ended.ended is not None and ended.ended - asked < 0.5
    assert_valid(events)
    assert events[-1].event == "done"
    assert events[-1].data == {"reason": "cancelled", "provider_reason": None, "cancelled_by": "request"}
    assert len(text_of(events)) < len(text(30))
    again = await client.post(f"/api/chat/{events[0].generation}/cancel")
    assert again.status_code == 200 and again.json()["cancelled"] is False


async def test_a_client_that_never_returns_is_cancelled_after_the_grace(
    client: httpx.AsyncClient, mock: MockHandle
) -> None:
    headers = {"x-mock-tokens": "200", "x-mock-delay-ms": "30"}
    async with chat_stream(client, body=body("gemini"), headers=headers) as reader:
        events = await read_some(reader, 3)
        record = mock.state.last()
        # Taken before leaving the block, whose exit closes the connection:
        # taken after it, a stall during that exit made the grace look short.
        left = time.monotonic()
    ended = await mock.state.wait_for_end(record.id, 10)
    assert ended.outcome == "client_closed"
    assert ended.ended is not None
    assert GRACE - 0.05 <= ended.ended - left < GRACE + 0.6
    # What it produced stays readable, ending in done: cancelled (client_gone).
    rest = await resume(client, events[-1])
    assert rest[-1].data == {"reason": "cancelled", "provider_reason": None, "cancelled_by": "client_gone"}


async def test_a_reconnect_within_the_grace_keeps_the_generation(
    client: httpx.AsyncClient, mock: MockHandle
) -> None:
    async with chat_stream(client, body=body("openai"), headers=PACED) as reader:
        first = await read_some(reader, 3)
    await asyncio.sleep(GRACE / 2)
    rest = await resume(client, first[-1])
    assert text_of(first + rest) == text(30)
    assert mock.state.last().outcome == "completed"


# --- several instances sharing Redis --------------------------------------------------


@dataclass
class Pair:
    a: SluiceProcess
    b: SluiceProcess


@pytest.fixture(scope="module")
def pair(mock: MockHandle, sluice_factory: SluiceFactory, redis_server: RedisServer) -> Pair:
    # No client keys here (with Redis and no keys file they would live in
    # Redis, and these tests are about the shared event store).
    env = {**upstream_env(mock), "SLUICE_REDIS_URL": redis_server.url, "SLUICE_CHAT_GRACE": "2"}
    return Pair(sluice_factory(**env, SLUICE_AUTH="off"), sluice_factory(**env, SLUICE_AUTH="off"))


async def test_resume_on_another_instance(pair: Pair, mock: MockHandle) -> None:
    async with (
        httpx.AsyncClient(base_url=pair.a.url, timeout=10) as a,
        chat_stream(a, body=body("gemini"), headers=PACED) as reader,
    ):
        first = await read_some(reader, 10)
    async with httpx.AsyncClient(base_url=pair.b.url, timeout=10) as b:
        rest = await resume(b, first[-1])
        events = first + rest
        assert_valid(events)
        assert text_of(events) == text(30)
        assert kinds(events) == ["start", "token*", "usage", "done"]
        assert len(mock.state.records) == 1 and mock.state.last().outcome == "completed"
        # B can also replay the whole finished generation, from its first event.
        assert [e.seq for e in await resume(b, events[0])] == [e.seq for e in events[1:]]


async def test_cancel_reaching_another_instance(pair: Pair, mock: MockHandle) -> None:
    async with (
        httpx.AsyncClient(base_url=pair.a.url, timeout=10) as a,
        httpx.AsyncClient(base_url=pair.b.url, timeout=10) as b,
        chat_stream(a, body=body("anthropic"), headers=PACED) as reader,
    ):
        events = await read_some(reader, 4)
        record = mock.state.last()
        asked = time.monotonic()
        response = await b.post(f"/api/chat/{events[0].generation}/cancel")
        assert response.status_code == 202
        ended = await mock.state.wait_for_end(record.id, 5)
        events = await reader.until_end()
    assert ended.outcome == "client_closed"
    assert ended.ended is not None and ended.ended - asked < 0.5
    assert events[-1].data["reason"] == "cancelled"


# --- keys ---------------------------------------------------------------------------


@dataclass
class Keyed:
    sluice: SluiceProcess
    secrets: dict[str, str]
    access_log: Path

    def client(self, key: str | None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.secrets[key]}"} if key else {}
        return httpx.AsyncClient(base_url=self.sluice.url, timeout=10, headers=headers)

    def log_lines(self) -> list[dict[str, object]]:
        return read_lines(self.access_log)

    async def last_line(self, **match: object) -> dict[str, object]:
        """The last access-log line with these fields (lines are written when requests end)."""
        deadline = time.monotonic() + 5
        while True:
            for line in reversed(self.log_lines()):
                if all(line.get(k) == v for k, v in match.items()):
                    return line
            assert time.monotonic() < deadline, f"no access-log line with {match}"
            await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, sluice_factory: SluiceFactory) -> Keyed:
    base = tmp_path_factory.mktemp("chat-keys")
    keys_file, access_log = base / "keys.toml", base / "access.log"
    secrets = {
        "all": create_key(keys_file, "all", Limits()),
        "other": create_key(keys_file, "other", Limits()),
        "leaver": create_key(keys_file, "leaver", Limits(tpm=1000)),
        "gpt-only": create_key(keys_file, "gpt-only", Limits(), ("openai",), ("gpt-4o*",)),
    }
    process = sluice_factory(
        **upstream_env(mock),
        SLUICE_KEYS_FILE=str(keys_file),
        SLUICE_ACCESS_LOG=str(access_log),
        SLUICE_CHAT_GRACE="0.3",
    )
    return Keyed(process, secrets, access_log)


async def test_keys_are_required_and_checked(keyed: Keyed, mock: MockHandle) -> None:
    async with keyed.client(None) as anonymous, keyed.client("gpt-only") as limited:
        assert (await anonymous.post("/api/chat", json=body())).status_code == 401
        assert (await anonymous.get("/api/chat/schema")).status_code == 401
        wrong_model = await limited.post("/api/chat", json={**body(), "model": "openai/gpt-3.5-turbo"})
        assert wrong_model.status_code == 403 and "model" in wrong_model.json()["error"]["message"]
        assert (await limited.post("/api/chat", json=body("anthropic"))).status_code == 403
        models = (await limited.get("/api/chat/models")).json()
        assert models["models"] == ["openai/gpt-4o-mini"]
        async with chat_stream(limited, body=body("openai"), headers={"x-mock-tokens": "2"}) as reader:
            assert text_of(await reader.until_end()) == text(2)
    assert len(mock.state.records) == 1
    # ?key= works for plain EventSource users.
    async with keyed.client(None) as anonymous:
        params = {"model": MODELS["gemini"], "prompt": "hi", "key": keyed.secrets["all"]}
        async with chat_stream(anonymous, "GET", params=params, headers={"x-mock-tokens": "2"}) as reader:
            assert text_of(await reader.until_end()) == text(2)


async def test_only_the_starting_key_may_resume_or_cancel(keyed: Keyed) -> None:
    async with (
        keyed.client("all") as owner,
        keyed.client("other") as other,
        chat_stream(owner, body=body(), headers=PACED) as reader,
    ):
        events = await read_some(reader, 2)
        gen = events[0].generation
        assert (await other.post(f"/api/chat/{gen}/cancel")).status_code == 403
        assert (await other.get("/api/chat", headers={"last-event-id": events[-1].id})).status_code == 403
        assert (await owner.post(f"/api/chat/{gen}/cancel")).status_code == 202
        assert (await reader.until_end())[-1].data["reason"] == "cancelled"


async def test_access_log_and_tokens_of_a_client_that_left(keyed: Keyed) -> None:
    async with (
        keyed.client("all") as c,
        chat_stream(c, body=body("anthropic"), headers={"x-mock-tokens": "5"}) as reader,
    ):
        events = await reader.until_end()
    line = await keyed.last_line(path="/api/chat", key="all", provider="anthropic")
    assert (line["key"], line["provider"], line["model"]) == ("all", "anthropic", "claude-sonnet-4-5")
    usage = events[-2].data
    assert line["usage"] == {"input": usage["input_tokens"], "output": 5, "total": usage["total_tokens"]}
    assert line["outcome"] == "ok"
    # A client that leaves before the usage event still pays: the generation
    # accounts for its tokens itself once nobody has claimed them.
    async with keyed.client("leaver") as c:
        async with chat_stream(c, body=body(), headers={"x-mock-tokens": "3", "x-mock-delay-ms": "20"}) as r:
            await read_some(r, 1)
        left = await keyed.last_line(key="leaver")
        assert (left["outcome"], left["usage"]) == ("client_disconnected", None)
        wanted = 'sluice_tokens_total{provider="openai",key="leaver",direction="output"} 3'
        deadline = time.monotonic() + 5
        while wanted not in (await c.get("/metrics")).text:
            assert time.monotonic() < deadline, "the abandoned generation's tokens were never counted"
            await asyncio.sleep(0.1)


# --- units ------------------------------------------------------------------------------


def test_request_parsing_units() -> None:
    aliases = {"claude": "anthropic/claude-sonnet-4-5"}
    req = from_json(
        json.dumps(
            {"model": "claude", "messages": [{"role": "system", "content": "S"}, *MESSAGES], "system": "T"}
        ).encode(),
        aliases,
    )
    assert (req.provider, req.model, req.system) == ("anthropic", "claude-sonnet-4-5", "T\n\nS")
    assert len(req.messages) == 1
    with pytest.raises(BadChatRequest, match="twice"):
        from_query(b"model=claude&prompt=a&prompt=b", aliases)
    assert from_query(b"model=claude&prompt=a&key=secret", aliases).messages[0].content == "a"


async def test_memory_store_keeps_a_bounded_tail() -> None:
    store = MemoryStore(max_events=100, retention=60)
    await store.create(GenerationMeta("g" * 32, "openai", "m", None))
    for seq in range(1, 301):
        await store.append("g" * 32, ChatEvent(seq, "token", {"text": "x"}))
    with pytest.raises(EventsExpired):
        await store.read("g" * 32, 0, 0)
    tail = await store.read("g" * 32, 250, 0)
    assert [e.seq for e in tail] == list(range(251, 301))


def test_alias_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SLUICE_CHAT_ALIASES"):
        load_settings({"SLUICE_CHAT_ALIASES": "fast=mistral/large"})
    with pytest.raises(ConfigError, match="SLUICE_CHAT_GRACE"):
        load_settings({"SLUICE_CHAT_GRACE": "soon"})
    config = tmp_path / "sluice.toml"
    config.write_text(
        '[chat.aliases]\nsmart = "anthropic/claude-opus-4-1"\nfast = "gemini/gemini-2.5-flash"\n'
    )
    settings = load_settings({"SLUICE_CONFIG": str(config), "SLUICE_CHAT_ALIASES": "fast=openai/gpt-4o-mini"})
    assert dict(settings.chat.aliases) == {"smart": "anthropic/claude-opus-4-1", "fast": "openai/gpt-4o-mini"}
