"""Spend and budgets end to end: real Sluice processes, the mock, and the official SDKs.

A key with a $0.01 daily budget streams until it has spent it, then gets its
SDK's usual quota error: ``openai.RateLimitError`` (code
``insufficient_quota``), google-genai's ``ClientError`` (429
``RESOURCE_EXHAUSTED``), ``anthropic.RateLimitError``. The mock answers with
the model name it was asked for, so real model names are priced from the
genai-prices table: gpt-4o ($2.50/$10 per million tokens), gemini-2.5-pro
($1.25/$10), claude-sonnet-4-5 ($3/$15). 300 output tokens cost about $0.003.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from prometheus_client.mmap_dict import MmapedDict

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.accesslog import read_lines
from tests.conftest import SluiceFactory, SluiceProcess, clean_env, upstream_env
from tests.redis_server import start_redis

pytestmark = pytest.mark.timeout(90)

TOKENS = {"x-mock-tokens": "300"}
MESSAGES: Any = [{"role": "user", "content": "hi"}]
BUDGET = 0.01


def budget_key(tmp_path: Path, name: str = "team", usd: float = BUDGET) -> tuple[Path, str]:
    keys = tmp_path / "keys.toml"
    return keys, create_key(keys, name, Limits(), budget=(usd, "day"))


def start(factory: SluiceFactory, mock: MockHandle, keys: Path, *args: str, **env: str) -> SluiceProcess:
    log = keys.parent / "access.log"
    return factory(*args, **upstream_env(mock), SLUICE_KEYS_FILE=str(keys), SLUICE_ACCESS_LOG=str(log), **env)


def access_log(keys: Path) -> list[dict[str, Any]]:
    return read_lines(keys.parent / "access.log")


def oai(process: SluiceProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{process.url}/v1", api_key=secret, max_retries=0, timeout=20)


def stream_openai(client: openai.OpenAI, model: str = "gpt-4o", *, include_usage: bool = False) -> str:
    """A chat stream; a budgeted key's is asked for usage by Sluice, others only with ``include_usage``."""
    options: Any = {"include_usage": True} if include_usage else openai.NOT_GIVEN
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options=options, extra_headers=TOKENS
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def spend_until_refused(call: Any, exc_type: type[BaseException], limit: int = 12) -> tuple[int, Any]:
    for done in range(limit):
        try:
            call()
        except exc_type as exc:
            return done, exc
    raise AssertionError(f"still served after {limit} requests")


def total_cost(keys: Path) -> float:
    return sum(line["cost_usd"] or 0 for line in access_log(keys))


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ------------------------------------------------------------------ the SDKs
def test_openai_streams_until_spent_then_gets_insufficient_quota(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys)
    client = oai(process, secret)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, extra_headers=TOKENS
    )
    assert float(raw.headers["x-sluice-budget-remaining-usd"]) == pytest.approx(BUDGET)
    served, exc = spend_until_refused(lambda: stream_openai(client), openai.RateLimitError)
    assert isinstance(exc, openai.RateLimitError)
    assert exc.code == "insufficient_quota" and exc.status_code == 429
    assert exc.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert "day budget of $0.01" in exc.message
    assert 0 < int(exc.response.headers["retry-after"]) <= 86_400  # the UTC day's end
    assert exc.response.headers["x-sluice-budget-remaining-usd"] == "0.000000"
    wait_for(lambda: len(access_log(keys)) == served + 2)
    # One worker sees its own spend at once: it stopped at the first request past the budget.
    spent = total_cost(keys)
    assert BUDGET <= spent < BUDGET + 0.0035, (served, spent)
    # Streams were asked for their usage, so each one was priced.
    streams = [line for line in access_log(keys) if line["status"] == 200]
    assert all(line["cost_usd"] for line in streams)
    refused = access_log(keys)[-1]
    assert (refused["status"], refused["outcome"], refused["detail"]) == (429, "rate_limited", "budget")
    assert len(mock.state.records) == served + 1  # the refused request never went upstream


def test_gemini_gets_resource_exhausted(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys)
    options = types.HttpOptions(
        base_url=process.url, headers=TOKENS, retry_options=types.HttpRetryOptions(attempts=1)
    )
    client = genai.Client(api_key=secret, http_options=options)

    def stream() -> None:
        for _chunk in client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi"):
            pass

    served, exc = spend_until_refused(stream, genai_errors.ClientError)
    assert exc.code == 429 and exc.status == "RESOURCE_EXHAUSTED"
    assert "budget" in exc.message
    wait_for(lambda: len(access_log(keys)) == served + 1)
    assert BUDGET <= total_cost(keys) < BUDGET + 0.0035, served


def test_anthropic_gets_rate_limit_error(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys)
    client = anthropic.Anthropic(base_url=process.url, api_key=secret, max_retries=0, default_headers=TOKENS)

    def stream() -> None:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=500, messages=MESSAGES) as s:
            s.until_done()

    served, exc = spend_until_refused(stream, anthropic.RateLimitError)
    assert exc.status_code == 429 and exc.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    wait_for(lambda: len(access_log(keys)) == served + 1)
    assert BUDGET <= total_cost(keys) < BUDGET + 0.005, served


# ------------------------------------------------- running streams finish
async def test_a_stream_running_when_the_budget_is_reached_finishes(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys)
    client = openai.AsyncOpenAI(base_url=f"{process.url}/v1", api_key=secret, max_retries=0, timeout=30)

    async def slow() -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True,
            extra_headers={"x-mock-tokens": "40", "x-mock-delay-ms": "50"},
        )  # fmt: skip
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    running = asyncio.create_task(slow())
    await asyncio.sleep(0.3)  # admitted and streaming
    with pytest.raises(openai.RateLimitError):
        for _ in range(12):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=TOKENS)
    assert not running.done()  # still streaming, past the budget
    text, finish = await asyncio.wait_for(running, 30)
    assert finish == "stop" and len(text) > 40  # every token arrived
    wait_for(lambda: any(line["usage"] and line["usage"]["output"] == 40 for line in access_log(keys)))
    slow_line = next(line for line in access_log(keys) if line["usage"] and line["usage"]["output"] == 40)
    assert slow_line["outcome"] == "ok" and slow_line["cost_usd"] > 0  # and it was charged


# ------------------------------------------------- shared and persistent spend
def fresh_post(process: SluiceProcess, secret: str) -> httpx.Response:
    """One request on a new connection (so a multi-worker Sluice may hand it to any worker)."""
    with httpx.Client(timeout=20) as client:
        return client.post(
            f"{process.url}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"authorization": f"Bearer {secret}", **TOKENS},
        )


def refused_by_every_worker(process: SluiceProcess, secret: str, tries: int = 30) -> None:
    statuses = [fresh_post(process, secret).status_code for _ in range(tries)]
    assert statuses == [429] * tries


def test_two_workers_share_the_spend_through_sqlite(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path)
    metrics_dir = tmp_path / "metrics"
    process = start(sluice_factory, mock, keys, "--workers", "2", SLUICE_METRICS_DIR=str(metrics_dir))
    wait_for(lambda: process.log().count("Application startup complete") >= 2)
    statuses = [fresh_post(process, secret).status_code for _ in range(4)]
    assert statuses == [200] * 4  # $0.0121: spent, wherever each went
    time.sleep(2.5)  # a flush and a read: each worker now knows the other's spend
    refused_by_every_worker(process, secret)
    # Both workers refused requests: each worker's own metrics file counts its 429s.
    refused = refusals_by_worker(metrics_dir)
    assert len(refused) == 2 and sum(refused.values()) == 30, refused
    assert (tmp_path / "spend.db").exists()


def refusals_by_worker(directory: Path) -> dict[str, float]:
    """The budget refusals each worker counted, from its own metrics file."""
    counts: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        worker = path.name.split("_")[1]
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if '"sluice_requests_total"' in key and '"rate_limited"' in key and value:
                counts[worker] = counts.get(worker, 0.0) + value
    return counts


def test_spend_survives_a_restart(tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    keys, secret = budget_key(tmp_path)
    first = start(sluice_factory, mock, keys)
    client = oai(first, secret)
    spend_until_refused(lambda: stream_openai(client), openai.RateLimitError)
    first.stop()  # the last batch is written at shutdown
    assert "could not be written" not in first.log()
    again = start(sluice_factory, mock, keys)
    with pytest.raises(openai.RateLimitError) as info:
        stream_openai(oai(again, secret))
    assert info.value.code == "insufficient_quota"


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_two_instances_share_the_spend_through_redis(
    kind: str, tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory, request: pytest.FixtureRequest
) -> None:
    redis: Any
    if kind == "cluster":  # a real three-master Redis Cluster (tests/redis_cluster.py)
        redis = request.getfixturevalue("redis_cluster")
        redis.flush()
    else:
        redis = start_redis(tmp_path / "redis")
    try:
        keys, secret = budget_key(tmp_path)
        a = start(sluice_factory, mock, keys, SLUICE_REDIS_URL=redis.url)
        b = start(sluice_factory, mock, keys, SLUICE_REDIS_URL=redis.url)
        spend_until_refused(lambda: stream_openai(oai(a, secret)), openai.RateLimitError)
        time.sleep(2.5)
        with pytest.raises(openai.RateLimitError):
            stream_openai(oai(b, secret))
        assert not (tmp_path / "spend.db").exists()  # Redis is the store
        env = {"SLUICE_KEYS_FILE": str(keys), "SLUICE_REDIS_URL": redis.url}
        (row,) = json.loads(run_cli("usage", "--json", **env))["rows"]
        served = [line for line in access_log(keys) if line["status"] == 200]
        assert (row["key"], row["requests"]) == ("team", len(served))
        assert row["cost_usd"] == pytest.approx(sum(line["cost_usd"] for line in served), abs=1e-8)
        listed = run_cli("keys", "list", **env)  # the budget, and what the period has spent
        assert f"$0.01/day (${row['cost_usd']:.2f} spent)" in listed
    finally:
        if kind == "server":
            redis.stop()


def test_a_budget_set_while_running_applies(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys = tmp_path / "keys.toml"
    secret = create_key(keys, "team", Limits())
    process = start(sluice_factory, mock, keys)
    client = oai(process, secret)
    for _ in range(2):
        stream_openai(client, include_usage=True)  # $0.006, no budget yet
    run_cli("keys", "--file", str(keys), "budget", "team", "--usd", "0.005", "--period", "day")
    time.sleep(1.5)  # the keys file is reloaded within a second
    with pytest.raises(openai.RateLimitError):
        stream_openai(client)
    run_cli("keys", "--file", str(keys), "budget", "team", "--clear")
    time.sleep(1.5)
    stream_openai(client)


# ------------------------------------------------------------ costs and usage
def run_cli(*args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_usage_sums_to_the_access_log_to_the_cent(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path, usd=100)
    other = create_key(keys, "other", Limits())
    process = start(sluice_factory, mock, keys)
    for key, model, n in [(secret, "gpt-4o", 3), (other, "gpt-4o-mini", 2), (other, "gpt-mock", 1)]:
        for _ in range(n):
            stream_openai(oai(process, key), model, include_usage=True)
    client = anthropic.Anthropic(base_url=process.url, api_key=secret, max_retries=0, default_headers=TOKENS)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=MESSAGES)
    process.stop()  # the last batch is written at shutdown
    lines = access_log(keys)
    assert len(lines) == 7
    report = json.loads(run_cli("usage", "--json", "--since", "1d", SLUICE_KEYS_FILE=str(keys)))
    by_key = {row["key"]: row for row in report["rows"]}
    for name in ("team", "other"):
        logged = sum(line["cost_usd"] or 0 for line in lines if line["key"] == name)
        assert round(by_key[name]["cost_usd"], 2) == round(logged, 2)
        assert by_key[name]["cost_usd"] == pytest.approx(logged, abs=1e-8)
        assert by_key[name]["requests"] == sum(1 for line in lines if line["key"] == name)
    assert by_key["other"]["unpriced_requests"] == 1
    by_model = json.loads(run_cli("usage", "--json", "--by", "model", SLUICE_KEYS_FILE=str(keys)))
    models = {row["model"] for row in by_model["rows"]}
    assert models == {"openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-mock", "anthropic/claude-sonnet-4-5"}
    table = run_cli("usage", "--by", "day", SLUICE_KEYS_FILE=str(keys))
    assert "TOTAL" in table and f"{sum(line['cost_usd'] or 0 for line in lines):.6f}" in table


def test_unpriced_model_is_null_and_counted(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys)
    stream_openai(oai(process, secret), "gpt-mock")
    metrics = httpx.get(f"{process.url}/metrics").text
    assert 'sluice_unpriced_requests_total{provider="openai",model="gpt-mock"} 1' in metrics
    wait_for(lambda: len(access_log(keys)) == 1)
    (line,) = access_log(keys)
    assert line["usage"]["output"] == 300 and line["cost_usd"] is None


def test_a_price_from_the_config_file_is_used(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[prices."openai/my-ft-model"]\ninput_per_mtok = 1000\noutput_per_mtok = 2000\n')
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys, SLUICE_CONFIG=str(config))
    stream_openai(oai(process, secret), "my-ft-model")
    wait_for(lambda: len(access_log(keys)) == 1)
    (line,) = access_log(keys)
    usage = line["usage"]
    assert line["cost_usd"] == pytest.approx((usage["input"] * 1000 + usage["output"] * 2000) / 1e6)
    metrics = httpx.get(f"{process.url}/metrics").text
    assert 'sluice_spend_usd_total{key="team",provider="openai",model="my-ft-model"} 0.6' in metrics


def test_a_bad_price_in_the_config_file_stops_start(tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[prices."openai/my-ft-model"]\ninput_per_mtok = -1\noutput_per_mtok = 2\n')
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--port", "0"],
        capture_output=True, text=True, env=clean_env(SLUICE_CONFIG=str(config)), timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "input_per_mtok must not be negative" in result.stderr


@pytest.mark.parametrize(("policy", "expected"), [("open", 200), ("closed", 503)])
def test_redis_down_follows_the_failure_policy_for_budgeted_keys(
    policy: str, expected: int, tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    redis = start_redis(tmp_path / "redis")
    keys, secret = budget_key(tmp_path, usd=100)
    plain = create_key(keys, "plain", Limits())
    process = start(sluice_factory, mock, keys, SLUICE_REDIS_URL=redis.url, SLUICE_REDIS_FAILURE=policy)
    assert fresh_post(process, secret).status_code == 200
    redis.kill()
    time.sleep(6.5)  # past the 5 s a budget may run on the last spend read
    response = fresh_post(process, secret)
    assert response.status_code == expected
    if policy == "closed":
        assert response.headers["retry-after"] == "1"
        assert "spend store is unreachable" in response.json()["error"]["message"]
    assert fresh_post(process, plain).status_code == 200  # a key without a budget is not held up
    metrics = httpx.get(f"{process.url}/metrics").text
    assert 'sluice_spend_store_errors_total{op="read"}' in metrics


def test_a_budgeted_stream_cannot_hide_its_usage(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    """A stream request spelling "stream" with a JSON escape is still asked for its usage, and charged."""
    keys, secret = budget_key(tmp_path)
    process = start(sluice_factory, mock, keys)
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"\\u0073tream":true}'
    with httpx.Client(timeout=20) as client:
        response = client.post(
            f"{process.url}/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {secret}", "content-type": "application/json", **TOKENS},
        )
    assert response.status_code == 200 and response.text.count("data:") > 300
    wait_for(lambda: len(access_log(keys)) == 1)
    assert access_log(keys)[0]["cost_usd"] == pytest.approx(0.003, rel=0.1)
