"""deploy/grafana/sluice.json and deploy/prometheus/alerts.yml name only metrics Sluice exports.

A running Sluice (two workers, client keys, a pooled credential) is driven
until the labelled series exist: requests, tokens, a rate-limit refusal, an
auth refusal, an upstream refusal of a credential. Every metric the
dashboard's queries and the alerts' expressions name must then be in one
``/metrics`` scrape. The alert rules also pass ``promtool check rules``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.conftest import CANARY_KEYS, SluiceFactory, upstream_env

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "sluice.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# Series Prometheus makes itself, not Sluice.
PROMETHEUS_OWN = {"up"}
# Reported only when Redis fails: its family is declared (# TYPE), with no series yet.
DECLARED_ONLY = {"sluice_limiter_errors_total"}


def _names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(sluice_[a-z_]+|up)\b", expr))
    assert names, f"no metric in {expr!r}"
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    return exprs


def _alert_exprs() -> list[str]:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert {"SluiceDown", "SluiceNotReady", "SluiceHighErrorRate", "SluiceUpstreamFailures"} <= {
        r["alert"] for r in rules
    }
    return [str(rule["expr"]) for rule in rules]


@pytest.fixture(scope="module")
def scrape(sluice_factory: SluiceFactory, mock: MockHandle, tmp_path_factory: pytest.TempPathFactory) -> str:
    keys = tmp_path_factory.mktemp("monitoring") / "keys.toml"
    team = create_key(keys, "team", Limits())
    slow = create_key(keys, "slow", Limits(rpm=1))
    env = {
        **upstream_env(mock),
        "SLUICE_KEYS_FILE": str(keys),
        "OPENAI_API_KEY": f"{CANARY_KEYS['OPENAI_API_KEY']},sk-proj-second-credential",
    }
    process = sluice_factory("--workers", "2", **env)
    mock.state.set_key_rule(CANARY_KEYS["OPENAI_API_KEY"], 401)  # the first credential is refused upstream
    try:
        with httpx.Client(base_url=process.url, timeout=30) as client:
            for secret, status in (("team", 200), ("slow", 200), ("slow", 429), ("nobody", 401)):
                token = {"team": team, "slow": slow, "nobody": "sk-nobody"}[secret]
                headers = {"authorization": f"Bearer {token}", "x-mock-tokens": "3"}
                reply = client.post("/v1/chat/completions", json=CHAT, headers=headers)
                assert reply.status_code == status, reply.text
            # The upstream cuts a stream short: an upstream failure.
            cut = {"authorization": f"Bearer {team}", "x-mock-tokens": "5", "x-mock-drop-after": "1"}
            with (
                pytest.raises(httpx.HTTPError),
                client.stream(
                    "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=cut
                ) as r,
            ):
                r.read()
            # Its worker records it as the stream ends, maybe just after the client saw the end.
            deadline = time.monotonic() + 15
            while "sluice_upstream_errors_total{" not in (text := client.get("/metrics").text):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            return text
    finally:
        mock.state.clear_key_rules()


def _exported(scrape: str) -> tuple[set[str], set[str]]:
    """Sample names with a series, and metric families declared by # TYPE."""
    series = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and line[0] != "#"}
    declared = set(re.findall(r"^# TYPE (\S+)", scrape, re.MULTILINE))
    return series, declared


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_named_is_exported(scrape: str, source: str) -> None:
    exprs = _dashboard_exprs() if source == "dashboard" else _alert_exprs()
    series, declared = _exported(scrape)
    for expr in exprs:
        for name in _names(expr) - PROMETHEUS_OWN:
            if name in DECLARED_ONLY:
                assert name in declared, name
            else:
                assert name in series, f"{source} names {name}, which /metrics has no series of"


def test_the_scrape_has_the_labelled_series_the_panels_group_by(scrape: str) -> None:
    assert 'sluice_key_requests_total{key="team",outcome="ok"} 1' in scrape
    assert 'sluice_rate_limited_total{key="slow",limit="rpm"} 1' in scrape
    failover = 'sluice_credential_failovers_total{provider="openai",label="OPENAI_API_KEY[1]",reason="401"}'
    assert f"{failover} 1" in scrape
    cooldowns = dict(
        re.findall(
            r'^sluice_credential_cooldown_until_seconds\{provider="openai",label="(\S+)"\} (\S+)$',
            scrape,
            re.M,
        )
    )
    assert cooldowns["OPENAI_API_KEY[2]"] == "0"
    assert float(cooldowns["OPENAI_API_KEY[1]"]) > 1e9  # the wall-clock time its cool-down ends
    for secret in CANARY_KEYS.values():
        assert secret not in scrape


def test_the_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool missing (Debian package prometheus; make system-deps installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
