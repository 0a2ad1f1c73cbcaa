"""The playground page in a real headless Chromium: streaming, Stop, and a dropped connection.

Driven with Playwright against the Debian ``chromium`` package (Playwright's
own browser download is not used). Without Chromium the tests skip, or fail
when ``CI=true``. The finished page is saved as ``test-artifacts/playground.png``;
``docs/playground.png`` (the README's picture) is written when missing or
with ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.conftest import ROOT, SluiceFactory, SluiceProcess, upstream_env
from tests.helpers import text

pytestmark = pytest.mark.timeout(90)

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_chromium() -> None:
    missing = None
    if shutil.which("chromium") is None or not Path(CHROMIUM).exists():
        missing = "chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[test]')"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(missing)
        pytest.skip(missing)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, sluice_factory: SluiceFactory
) -> tuple[SluiceProcess, str]:
    """A Sluice enforcing client keys, and the key typed into the page."""
    keys_file = tmp_path_factory.mktemp("playground") / "keys.toml"
    secret = create_key(keys_file, "browser", Limits())
    return sluice_factory(
        **upstream_env(mock), SLUICE_KEYS_FILE=str(keys_file), SLUICE_CHAT_GRACE="5"
    ), secret


class TcpRelay:
    """A loopback TCP relay between the browser and Sluice, whose connections a test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.url = ""
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open.difference_update((writer, up_writer))

    def cut(self) -> None:
        """Reset every connection now open through the relay, both ways."""
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def relay(site: tuple[SluiceProcess, str]) -> AsyncIterator[TcpRelay]:
    relay = TcpRelay(int(site[0].url.rsplit(":", 1)[1]))
    await relay.start()
    yield relay
    await relay.close()


@pytest.fixture
async def page(site: tuple[SluiceProcess, str], relay: TcpRelay) -> AsyncIterator[Any]:
    _require_chromium()
    from playwright.async_api import async_playwright

    _sluice, secret = site
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = await browser.new_context(viewport={"width": 1200, "height": 760})
        page = await context.new_page()
        await page.goto(f"{relay.url}/playground")  # every request goes through the relay
        await page.fill("#key", secret)
        try:
            yield page
        finally:
            await browser.close()


async def start(page: Any, model: str, tokens: int, delay_ms: int) -> None:
    # The mock's pacing switches travel as request headers, which Sluice
    # passes on to the provider (x-mock-* only).
    await page.context.set_extra_http_headers(
        {"x-mock-tokens": str(tokens), "x-mock-delay-ms": str(delay_ms)}
    )
    await page.fill("#model", model)
    await page.fill("#prompt", "Write a haiku about a river at night.")
    await page.click("#send")


async def output(page: Any) -> str:
    return str(await page.text_content("#output") or "")


async def wait_state(page: Any, *states: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = await page.evaluate("document.body.dataset.state")
        if state in states:
            return str(state)
        assert time.monotonic() < deadline, f"page stayed {state!r}, wanted {states}"
        await asyncio.sleep(0.05)


async def wait_output(page: Any, at_least: int) -> None:
    deadline = time.monotonic() + 10
    while len(await output(page)) < at_least:
        assert time.monotonic() < deadline, "no text arrived"
        await asyncio.sleep(0.02)


async def test_streams_a_paced_reply_and_shows_its_numbers(page: Any, mock: MockHandle) -> None:
    await start(page, "anthropic/claude-sonnet-4-5", tokens=36, delay_ms=60)
    samples: list[int] = []
    while await page.evaluate("document.body.dataset.state") in ("connecting", "streaming"):
        samples.append(len(await output(page)))
        await asyncio.sleep(0.15)
    # The text visibly grew while streaming: many distinct, increasing lengths.
    growing = sorted(set(samples))
    assert samples == sorted(samples)
    assert len([n for n in growing if n > 0]) >= 5, samples
    assert await wait_state(page, "done") == "done"
    assert await output(page) == text(36)
    assert (await page.text_content("#finish")) == "stop"
    ttft, rate, usage = [await page.text_content(s) for s in ("#ttft", "#rate", "#usage")]
    assert ttft is not None and ttft.endswith(("ms", " s"))
    assert rate is not None and float(rate) > 0
    assert usage is not None and usage.split(" / ")[1] == "36"
    assert mock.state.last().outcome == "completed"
    artifact = ROOT / "test-artifacts" / "playground.png"
    artifact.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(artifact), full_page=True)
    # The README's copy is refreshed on request only, so a test run leaves
    # the working tree clean: UPDATE_SCREENSHOTS=1 pytest tests/test_playground.py
    readme_copy = ROOT / "docs" / "playground.png"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not readme_copy.exists():
        readme_copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(artifact, readme_copy)


async def test_stop_cancels_the_upstream(page: Any, mock: MockHandle) -> None:
    await start(page, "openai/gpt-4o-mini", tokens=300, delay_ms=40)
    await wait_output(page, 20)
    record = mock.state.last()
    clicked = time.monotonic()
    await page.click("#stop")
    ended = await mock.state.wait_for_end(record.id, 5)
    assert ended.outcome == "client_closed"
    assert ended.ended is not None and ended.ended - clicked < 1.0
    assert await wait_state(page, "stopped") == "stopped"
    assert (await page.text_content("#finish")) == "cancelled (request)"
    assert len(await output(page)) < len(text(300))


async def test_a_dropped_connection_resumes_without_losing_or_repeating_text(
    page: Any, relay: TcpRelay, mock: MockHandle
) -> None:
    await start(page, "gemini/gemini-2.5-flash", tokens=60, delay_ms=50)
    await wait_output(page, 15)
    # Cut the browser's connection to Sluice (not Sluice's to the provider):
    # first at the TCP level, as a network failure does (the relay between
    # them resets it), then by aborting the page's fetch.
    relay.cut()
    await wait_state(page, "reconnecting")
    await wait_state(page, "streaming")
    await wait_output(page, len(await output(page)) + 10)
    await page.evaluate("window.sluicePlayground.dropConnection()")
    await wait_state(page, "reconnecting")
    assert await wait_state(page, "done") == "done"
    assert await output(page) == text(60)
    assert (await page.text_content("#reconnects")) == "2"
    # One upstream call, completed: the drops never reached the provider.
    assert len(mock.state.records) == 1 and mock.state.last().outcome == "completed"
