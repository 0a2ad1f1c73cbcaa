"""The dashboard in a headless Chromium: the admin token, a live stream, its numbers against /metrics.

Driven as tests/test_playground.py drives the playground (Debian's
``chromium``, Playwright; skipped without them, failed when ``CI=true``).
/metrics is read with ``prometheus_client``'s parser, not the page's, and the
page's figures are read from the ``data-value`` each one carries. The page
is also loaded through deploy/nginx.conf. The screenshot is saved as
``test-artifacts/dashboard.png``; ``docs/dashboard.png`` (the README's
picture) is written when missing or with ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.conftest import CANARY_KEYS, ROOT, SluiceFactory, SluiceProcess, upstream_env
from tests.nginx_server import free_port, start_nginx
from tests.test_deploy import adapt_nginx_conf, make_certificate
from tests.test_playground import CHROMIUM, LAUNCH_ARGS, _require_chromium, wait_state

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin-DASHBOARDtoken-0123456789"
BACKUP_OPENAI = "sk-backup-DASHBOARDbackup4567"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"parts": [{"text": "hi"}]}]}


@dataclass
class Site:
    sluice: SluiceProcess
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, sluice_factory: SluiceFactory) -> Site:
    """A Sluice with client keys, the admin token, and two OpenAI credentials."""
    keys_file = tmp_path_factory.mktemp("dashboard") / "keys.toml"
    limits = {"web-app": Limits(), "batch-jobs": Limits(), "intern": Limits(rpm=2)}
    secrets = {name: create_key(keys_file, name, lim) for name, lim in limits.items()}
    env = {**upstream_env(mock), "OPENAI_API_KEY": f"{CANARY_KEYS['OPENAI_API_KEY']},{BACKUP_OPENAI}"}
    sluice = sluice_factory(**env, SLUICE_KEYS_FILE=str(keys_file), SLUICE_ADMIN_TOKEN=ADMIN)
    return Site(sluice, secrets)


def request(secret: str, provider: str, stream: bool, **mock_headers: str) -> tuple[str, Any, dict[str, str]]:
    """Path, body and headers of a request as that provider's SDK would send it."""
    if provider == "openai":
        body: dict[str, object] = {**CHAT, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        path, auth = "/v1/chat/completions", {"authorization": f"Bearer {secret}"}
    elif provider == "anthropic":
        path, body = "/v1/messages", {**MESSAGES, "stream": stream}
        auth = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    else:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path, body, auth = f"/v1beta/models/gemini-2.5-flash:{method}", GEMINI, {"x-goog-api-key": secret}
    return path, body, {**auth, **{f"x-mock-{k.replace('_', '-')}": v for k, v in mock_headers.items()}}


def call(
    base: str, secret: str, provider: str, stream: bool = False, verify: Any = True, **mock_headers: str
) -> int:
    """One request through Sluice to the mock; its status."""
    path, body, headers = request(secret, provider, stream, **mock_headers)
    with httpx.Client(base_url=base, timeout=60, verify=verify) as client:
        return client.post(path, json=body, headers=headers).status_code


class Background:
    """A slow stream, read in a task while the test looks at the page; cancelling it hangs up."""

    def __init__(self, base: str, secret: str, provider: str, tokens: int, delay_ms: int) -> None:
        path, body, headers = request(secret, provider, True, tokens=str(tokens), delay_ms=str(delay_ms))
        self.task = asyncio.create_task(self._read(base, path, body, headers))

    @staticmethod
    async def _read(base: str, path: str, body: Any, headers: dict[str, str]) -> int:
        async with (
            httpx.AsyncClient(base_url=base, timeout=60) as client,
            client.stream("POST", path, json=body, headers=headers) as response,
        ):
            async for _ in response.aiter_raw():
                pass
            return response.status_code

    async def hang_up(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics, parsed by prometheus_client: {(sample name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == m for k, m in match.items())
    )


async def wait_for_in_flight(url: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while total(await asyncio.to_thread(scrape, url), "sluice_in_flight_requests") != n:
        assert time.monotonic() < deadline, f"/metrics never showed {n} in flight"
        await asyncio.sleep(0.05)


# --- the browser -----------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Any, url: str, **context: Any) -> Any:
    context.setdefault("viewport", {"width": 1360, "height": 900})
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    page.data_urls = []  # every data call the page makes
    page.on(
        "request",
        lambda r: page.data_urls.append(r.url) if "/dashboard/" in r.url or "/admin/" in r.url else None,
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors
    await page.goto(f"{url}/dashboard")
    return page


async def sign_in(page: Any, token: str) -> str:
    await page.fill("#token", token)
    await page.click("#open")
    return await wait_state(page, "live", "refused")


async def refresh(page: Any) -> None:
    await page.evaluate("window.sluiceDashboard.refresh()")
    assert await page.evaluate("document.body.dataset.state") == "live"


async def value(page: Any, selector: str) -> float | None:
    raw = await page.get_attribute(selector, "data-value")
    return float(raw) if raw not in (None, "") else None


async def column(page: Any, table: str, key_attr: str, col: str) -> dict[str, float]:
    """One column of a table, by row: {row's key: the cell's data-value}."""
    cell = f"""r.querySelector('[data-col="{col}"]')?.dataset.value"""
    script = f"rows => rows.map(r => [r.dataset.{key_attr}, {cell}])"
    cells = await page.eval_on_selector_all(f"#{table} tbody tr", script)
    return {k: float(v) for k, v in cells if k is not None and v not in (None, "")}


# --- off, and the token ------------------------------------------------------------


def test_off_without_an_admin_token(sluice: SluiceProcess) -> None:
    assert httpx.get(f"{sluice.url}/dashboard").status_code == 404
    got = httpx.get(f"{sluice.url}/dashboard/metrics", headers={"authorization": "Bearer anything"})
    assert got.status_code == 404


def test_the_data_are_the_metrics_and_need_the_token(site: Site) -> None:
    url = site.sluice.url
    page = httpx.get(f"{url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {ADMIN}x"},
        {"x-admin": ADMIN},
    ):
        refused = httpx.get(f"{url}/dashboard/metrics", headers=headers)
        assert refused.status_code == 401 and "sluice_" not in refused.text
    granted = httpx.get(f"{url}/dashboard/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    assert granted.status_code == 200 and granted.headers["cache-control"] == "no-store"
    assert granted.text == httpx.get(f"{url}/metrics").text  # the same endpoint; no traffic in between


async def test_the_page_shows_nothing_but_the_prompt_without_the_right_token(
    site: Site, browser: Any, mock: MockHandle
) -> None:
    assert call(site.sluice.url, site.secrets["web-app"], "openai") == 200  # some figures to hide
    page = await open_page(browser, site.sluice.url)
    assert await wait_state(page, "locked") == "locked"
    assert await page.is_visible("#token") and not await page.is_visible("#board")
    assert page.data_urls == [], "no data call without a token"
    assert await sign_in(page, "not-the-admin-token") == "refused"
    assert await page.is_visible("#login-msg") and await page.is_visible("#token")
    assert not await page.is_visible("#board")
    assert await page.evaluate("sessionStorage.length") == 0, "a refused token is not kept"
    assert await page.eval_on_selector_all("#board tbody tr", "rows => rows.length") == 0
    assert (
        await page.eval_on_selector_all("#board [data-value]:not([data-value=''])", "els => els.length") == 0
    )
    assert page.data_urls and all("token" not in u and ADMIN not in u for u in page.data_urls)
    # The right token, then signing out, leaves no figure and no token behind either.
    assert await sign_in(page, ADMIN) == "live"
    assert await value(page, "#requests") is not None
    await page.click("#signout")
    assert await wait_state(page, "locked") == "locked"
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.eval_on_selector_all("#board tbody tr", "rows => rows.length") == 0
    assert page.js_errors == []


async def test_a_live_stream_and_the_numbers_match_metrics(
    site: Site, browser: Any, mock: MockHandle
) -> None:
    url, secrets = site.sluice.url, site.secrets
    before = scrape(url)
    for provider in ("openai", "anthropic", "gemini"):
        assert call(url, secrets["web-app"], provider) == 200
    assert call(url, secrets["batch-jobs"], "openai", stream=True) == 200
    assert [call(url, secrets["intern"], "gemini") for _ in range(3)][-1] == 429  # over its rpm
    page = await open_page(browser, url)
    assert await sign_in(page, ADMIN) == "live"

    stream = Background(url, secrets["batch-jobs"], "anthropic", tokens=2000, delay_ms=40)
    await wait_for_in_flight(url, 1)
    await refresh(page)
    assert await value(page, "#live") == 1
    assert (await column(page, "providers", "provider", "live")).get("anthropic") == 1
    assert await page.is_visible("#live-sub >> text=anthropic 1")
    assert total(scrape(url), "sluice_in_flight_requests") == 1
    await stream.hang_up()  # Sluice sees the client leave, and the stream ends

    await wait_for_in_flight(url, 0)
    await refresh(page)
    metrics = scrape(url)
    assert await value(page, "#live") == 0
    assert await value(page, "#requests") == total(metrics, "sluice_requests_total")
    assert await value(page, "#tokens") == total(metrics, "sluice_tokens_total")
    assert await value(page, "#limited") == total(metrics, "sluice_rate_limited_total") >= 1
    # sluice_key_requests_total counted each key's requests of this test, by outcome.
    added = {
        (key, outcome): total(metrics, "sluice_key_requests_total", key=key, outcome=outcome)
        - total(before, "sluice_key_requests_total", key=key, outcome=outcome)
        for key in secrets
        for outcome in ("ok", "rate_limited", "client_disconnected")
    }
    assert {k: v for k, v in added.items() if v} == {
        ("web-app", "ok"): 3,
        ("batch-jobs", "ok"): 1,
        ("batch-jobs", "client_disconnected"): 1,
        ("intern", "ok"): 2,
        ("intern", "rate_limited"): 1,
    }
    by_key = await column(page, "keys", "key", "requests")
    for key in secrets:
        assert by_key[key] == total(metrics, "sluice_key_requests_total", key=key) > 0, key
    tokens_out = await column(page, "keys", "key", "tokens_out")
    for key in ("web-app", "batch-jobs"):
        assert tokens_out[key] == total(metrics, "sluice_tokens_total", key=key, direction="output") > 0
    assert (await column(page, "keys", "key", "limited"))["intern"] == total(
        metrics, "sluice_rate_limited_total", key="intern"
    )
    by_provider = await column(page, "providers", "provider", "requests")
    for provider in ("openai", "anthropic", "gemini"):
        assert by_provider[provider] == total(metrics, "sluice_requests_total", provider=provider)
    states = await page.eval_on_selector_all(
        "#credentials tbody tr", "rows => rows.map(r => r.dataset.state)"
    )
    assert states.count("ok") == len(states) == 4  # two OpenAI credentials, one each for the others
    # Every request is priced (proxy/spend): the spend per key is /metrics' sum over models.
    assert await page.is_visible("#spend-card") and await page.is_visible("#spend-tile")
    spend = await page.eval_on_selector_all(
        "#spend-table tbody tr", "rows => rows.map(r => [r.dataset.key, r.cells[3].dataset.value])"
    )
    shown: dict[str, float] = {}
    for k, v in spend:  # a row per key and model
        shown[k] = shown.get(k, 0.0) + float(v)
    expected = {k: total(metrics, "sluice_spend_usd_total", key=k) for k in shown}
    assert shown and shown == pytest.approx(expected, rel=1e-9), (shown, expected)
    assert page.js_errors == []


# --- what the page computes, on a known exposition ---------------------------------

KNOWN = """\
# TYPE sluice_requests_total counter
sluice_requests_total{{provider="openai",status="200",outcome="ok"}} {n}
sluice_requests_total{{provider="openai",status="502",outcome="upstream_error"}} 2
# TYPE sluice_time_to_first_byte_seconds histogram
sluice_time_to_first_byte_seconds_bucket{{provider="openai",le="0.1"}} 0
sluice_time_to_first_byte_seconds_bucket{{provider="openai",le="0.25"}} 16
sluice_time_to_first_byte_seconds_bucket{{provider="openai",le="1.0"}} 19
sluice_time_to_first_byte_seconds_bucket{{provider="openai",le="+Inf"}} 20
sluice_time_to_first_byte_seconds_count{{provider="openai"}} 20
# TYPE sluice_spend_usd_total counter
sluice_spend_usd_total{{key="web-app",provider="openai",model="gpt-4o"}} {usd}
sluice_spend_usd_total{{key="a \\"quoted\\" key",provider="openai",model="gpt-4o-mini"}} 0.5
"""


async def test_percentiles_rates_and_spend_from_a_known_exposition(site: Site, browser: Any) -> None:
    page = await open_page(browser, site.sluice.url)
    figures = {"n": 100, "usd": 1.25}

    async def fake(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/plain", body=KNOWN.format(**figures))

    await page.route("**/dashboard/metrics", fake)
    first = time.monotonic()
    assert await sign_in(page, ADMIN) == "live"  # the first poll: between first and signed
    signed = time.monotonic()
    # histogram_quantile: p50 is rank 10 of 20, 10/16 into (0.1, 0.25]; p90
    # is rank 18, 2/3 into (0.25, 1]; p99 (rank 19.8) falls in +Inf: the highest finite bound.
    quantiles = [float(q) for q in (await page.get_attribute("#ttfb", "data-quantiles") or "").split(",")]
    assert quantiles == pytest.approx([0.1 + 0.15 * 10 / 16, 0.25 + 0.75 * 2 / 3, 1.0])
    assert await value(page, "#rpm") is None  # one poll: no rate yet
    figures["n"], figures["usd"] = 130, 2.25
    await asyncio.sleep(1.0)
    before = time.monotonic()
    await refresh(page)
    after = time.monotonic()
    # 30 more requests between the first poll and the last, however long the page took.
    rpm = await value(page, "#rpm")
    assert rpm is not None and 30 / (after - first) * 60 <= rpm <= 30 / (before - signed) * 60
    assert await value(page, "#errors") == 2
    # A restarted Sluice counts from zero: its new count is the increase, never a negative rate.
    figures["n"] = 5
    await refresh(page)
    rpm = await value(page, "#rpm")
    assert rpm is not None and rpm > 0
    assert await value(page, "#spend") == pytest.approx(2.75)
    spend = await page.eval_on_selector_all(
        "#spend-table tbody tr", "rows => rows.map(r => [r.dataset.key, r.cells[3].dataset.value])"
    )
    assert {k: float(v) for k, v in spend} == {"web-app": 2.25, 'a "quoted" key': 0.5}
    assert await page.is_visible("#spend-card") and await page.is_visible("#spend-tile")
    assert page.js_errors == []


# --- behind nginx -------------------------------------------------------------------


async def test_the_page_and_its_data_load_through_deploy_nginx_conf(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory, browser: Any
) -> None:
    sluice = sluice_factory(
        **upstream_env(mock), SLUICE_ADMIN_TOKEN=ADMIN, SLUICE_TRUSTED_PROXIES="127.0.0.1"
    )
    cert, key = make_certificate(tmp_path)
    tls_port = free_port()
    conf = adapt_nginx_conf(tls_port, free_port(), [int(sluice.url.rsplit(":", 1)[1])], cert, key)
    nginx = start_nginx(tmp_path / "nginx", conf, tls_port)
    tls_url, tls = f"https://127.0.0.1:{tls_port}", ssl.create_default_context(cafile=str(cert))
    try:
        for provider in ("openai", "gemini"):
            assert call(tls_url, "no-keys-file", provider, verify=tls) == 200
        page = await open_page(browser, tls_url, ignore_https_errors=True)
        assert await wait_state(page, "locked") == "locked"
        assert await sign_in(page, ADMIN) == "live"
        metrics = scrape(sluice.url)
        assert await value(page, "#requests") == total(metrics, "sluice_requests_total") == 2
        assert (await column(page, "keys", "key", "requests")) == {"": 2}  # no keys file: no key name
        assert len(await page.eval_on_selector_all("#credentials tbody tr[data-state=ok]", "r => r")) == 3
        assert page.data_urls and all(u.startswith(tls_url) for u in page.data_urls)
        log = nginx.access_log()
        assert '"GET /dashboard HTTP/2.0" 200' in log
        assert (
            '"GET /dashboard/metrics HTTP/2.0" 200' in log and '"GET /admin/credentials HTTP/2.0" 200' in log
        )
        assert ADMIN not in log and ADMIN not in sluice.log()
        assert page.js_errors == []
    finally:
        nginx.stop()


# --- the README's picture ------------------------------------------------------------


async def test_screenshot_with_traffic(site: Site, browser: Any, mock: MockHandle) -> None:
    """Traffic on every provider and key, a failover, errors, refusals and two live streams."""
    url, secrets = site.sluice.url, site.secrets
    mock.state.set_key_rule(CANARY_KEYS["OPENAI_API_KEY"], 401)  # the first OpenAI credential is revoked

    sent = iter(range(1000))

    async def burst(n: int) -> None:
        calls = []
        for i in (next(sent) for _ in range(n)):
            key = ("web-app", "web-app", "batch-jobs")[i % 3]
            provider = ("openai", "anthropic", "gemini", "openai")[i % 4]
            knobs = {"headers_delay_ms": str((37 * i) % 900 + 40), "tokens": str(20 + (i * 13) % 90)}
            if i % 9 == 5:
                knobs["status"] = ("500", "503", "502")[i // 9 % 3]
            calls.append(asyncio.to_thread(call, url, secrets[key], provider, i % 2 == 0, **knobs))
        calls.append(asyncio.to_thread(call, url, secrets["intern"], "gemini"))
        await asyncio.gather(*calls)

    await burst(12)
    with pytest.raises(httpx.RemoteProtocolError):  # cut mid-stream: an upstream error
        call(url, secrets["batch-jobs"], "openai", stream=True, tokens="30", drop_after="5")
    page = await open_page(browser, url, viewport={"width": 1440, "height": 600})  # full_page grows it
    assert await sign_in(page, ADMIN) == "live"
    streams = [
        Background(url, secrets["web-app"], "anthropic", tokens=3000, delay_ms=40),
        Background(url, secrets["batch-jobs"], "gemini", tokens=3000, delay_ms=40),
    ]
    for _ in range(6):
        await burst(8)
        await refresh(page)
    await wait_for_in_flight(url, 2)
    await refresh(page)
    assert await value(page, "#live") == 2
    states = await page.eval_on_selector_all(
        "#credentials tbody tr", "rows => rows.map(r => r.dataset.state)"
    )
    assert "failed" in states
    artifact = ROOT / "test-artifacts" / "dashboard.png"
    artifact.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(artifact), full_page=True)
    readme_copy = ROOT / "docs" / "dashboard.png"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not readme_copy.exists():
        shutil.copyfile(artifact, readme_copy)
    for stream in streams:
        await stream.hang_up()
    await wait_for_in_flight(url, 0)
    httpx.post(f"{url}/admin/credentials/reset", headers={"authorization": f"Bearer {ADMIN}"})
    assert page.js_errors == []
