from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import read_environment
from proxy.config import ConfigError, load_settings
from tests.conftest import clean_env


def test_defaults() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.upstreams["openai"].base_url == "https://api.openai.com"
    assert s.upstreams["gemini"].base_url == "https://generativelanguage.googleapis.com"
    assert s.upstreams["anthropic"].base_url == "https://api.anthropic.com"
    assert all(u.api_key is None for u in s.upstreams.values())


def test_keys_and_upstreams() -> None:
    s = load_settings(
        {
            "OPENAI_API_KEY": " sk-o ",
            "GOOGLE_API_KEY": "g-fallback",
            "ANTHROPIC_API_KEY": "sk-a",
            "SLUICE_OPENAI_UPSTREAM": "http://127.0.0.1:9000/openai/",
        }
    )
    assert s.upstreams["openai"].api_key == "sk-o"
    assert s.upstreams["openai"].base_url == "http://127.0.0.1:9000/openai"
    assert s.upstreams["gemini"].api_key == "g-fallback"
    assert s.upstreams["anthropic"].api_key == "sk-a"


def test_gemini_key_wins_over_google_key() -> None:
    s = load_settings({"GEMINI_API_KEY": "gem", "GOOGLE_API_KEY": "goo"})
    assert s.upstreams["gemini"].api_key == "gem"


def test_keys_never_appear_in_repr() -> None:
    s = load_settings({"OPENAI_API_KEY": "sk-secret-value"})
    assert "sk-secret-value" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLUICE_PORT", "eighty"),
        ("SLUICE_PORT", "70000"),
        ("SLUICE_WORKERS", "0"),
        ("SLUICE_CONNECT_TIMEOUT", "-1"),
        ("SLUICE_READ_TIMEOUT", "nan"),
        ("SLUICE_POOL_SIZE", "0"),
        ("SLUICE_LOG_LEVEL", "loud"),
        ("SLUICE_AUTH", "maybe"),
        ("SLUICE_HTTP", "quick"),
        ("SLUICE_OPENAI_UPSTREAM", "ftp://example.com"),
        ("SLUICE_GEMINI_UPSTREAM", "http://user:pw@example.com"),
        ("SLUICE_ANTHROPIC_UPSTREAM", "http://example.com/?x=1"),
        ("SLUICE_OPENAI_UPSTREAM", "http://example.com:99999"),
        ("SLUICE_OPENAI_UPSTREAM", "http:///nohost"),
        ("SLUICE_OPENAI_UPSTREAM", "http://example.com/a/../b"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert info.value.setting == name
    assert str(info.value).startswith(f"{name}: ")


def test_non_loopback_needs_an_explicit_decision() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SLUICE_HOST": "0.0.0.0"})
    assert info.value.setting == "SLUICE_HOST"
    assert load_settings({"SLUICE_HOST": "0.0.0.0", "SLUICE_AUTH": "off"}).host == "0.0.0.0"
    assert load_settings({}, host="::1").host == "::1"


def test_cli_flags_override_environment() -> None:
    s = load_settings({"SLUICE_PORT": "9001"}, port=9002, host=None)
    assert s.port == 9002


def test_the_transport_is_fast_unless_stock_is_asked_for() -> None:
    assert load_settings({}).http == "fast"
    assert load_settings({"SLUICE_HTTP": "Stock"}).http == "stock"
    assert load_settings({"SLUICE_HTTP": "stock"}, http="fast").http == "fast"  # --http wins
    assert load_settings({}, http=None).http == "fast"


def test_env_file_is_read_under_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "sluice.env"
    env_file.write_text("SLUICE_PORT=9100\nOPENAI_API_KEY=from-file\n")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    values = read_environment(env_file)
    assert values["SLUICE_PORT"] == "9100"
    assert values["OPENAI_API_KEY"] == "from-env"  # a variable that is set wins


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=30,
    )


def test_bad_setting_stops_startup_with_one_line_and_exit_2() -> None:
    result = _run_cli("serve", "--port", "0", SLUICE_READ_TIMEOUT="soon")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SLUICE_READ_TIMEOUT" in lines[0]


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    result = _run_cli("serve", "--env-file", str(tmp_path / "absent.env"))
    assert result.returncode == 2
    assert "--env-file" in result.stderr


def test_port_in_use_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run_cli("serve", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_heartbeat_settings_per_provider() -> None:
    s = load_settings({})
    assert {p: (u.heartbeat, u.heartbeat_interval) for p, u in s.upstreams.items()} == {
        "openai": ("comment", 15.0),
        "gemini": ("blank", 15.0),  # google-genai cannot parse SSE comments
        "anthropic": ("comment", 15.0),
    }
    s = load_settings(
        {
            "SLUICE_HEARTBEAT_INTERVAL": "5",
            "SLUICE_ANTHROPIC_HEARTBEAT_INTERVAL": "2",
            "SLUICE_OPENAI_HEARTBEAT": "off",
        }
    )
    assert s.upstreams["openai"].heartbeat == "off"
    assert s.upstreams["gemini"].heartbeat_interval == 5.0
    assert s.upstreams["anthropic"].heartbeat_interval == 2.0
    assert all(
        u.heartbeat == "off" for u in load_settings({"SLUICE_HEARTBEAT_INTERVAL": "0"}).upstreams.values()
    )


def test_stream_timeouts() -> None:
    s = load_settings({})
    assert (s.headers_timeout, s.read_timeout, s.stream_deadline, s.drain_timeout) == (
        900.0,
        600.0,
        None,
        900.0,
    )
    s = load_settings({"SLUICE_STREAM_DEADLINE": "3600", "SLUICE_DRAIN_TIMEOUT": "0"})
    assert (s.stream_deadline, s.drain_timeout) == (3600.0, 0.0)
    # Idle client connections outlive deploy/nginx.conf's 60 s upstream keep-alive.
    assert load_settings({}).keep_alive_timeout == 75
    assert load_settings({"SLUICE_KEEP_ALIVE_TIMEOUT": "2"}).keep_alive_timeout == 2
    with pytest.raises(ConfigError, match="SLUICE_KEEP_ALIVE_TIMEOUT"):
        load_settings({"SLUICE_KEEP_ALIVE_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="SLUICE_GEMINI_HEARTBEAT"):
        load_settings({"SLUICE_GEMINI_HEARTBEAT": "loud"})
    with pytest.raises(ConfigError, match="SLUICE_STREAM_DEADLINE"):
        load_settings({"SLUICE_STREAM_DEADLINE": "-1"})


def test_config_file_errors_name_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "sluice.toml"
    bad.write_text("[middleware]\nchain = 'auth'\n")
    with pytest.raises(ConfigError, match="SLUICE_CONFIG"):
        load_settings({"SLUICE_CONFIG": str(bad)})
    bad.write_text("[middlewares]\n")
    with pytest.raises(ConfigError, match="unknown entries"):
        load_settings({"SLUICE_CONFIG": str(bad)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"SLUICE_CONFIG": str(tmp_path / "absent.toml")})


def test_a_comma_separated_key_list_is_a_pool() -> None:
    s = load_settings({"OPENAI_API_KEY": "sk-a, sk-b,sk-c", "ANTHROPIC_API_KEY": "sk-one"})
    assert [c.label for c in s.upstreams["openai"].credentials] == [
        "OPENAI_API_KEY[1]",
        "OPENAI_API_KEY[2]",
        "OPENAI_API_KEY[3]",
    ]
    assert [c.label for c in s.upstreams["anthropic"].credentials] == ["ANTHROPIC_API_KEY"]
    assert "sk-a" not in repr(s)


def test_credentials_from_the_config_file(tmp_path: Path) -> None:
    service_account = tmp_path / "sa.json"
    service_account.write_text(
        '{"type": "service_account", "project_id": "p1", "client_email": "x@p1.iam.gserviceaccount.com",'
        ' "private_key": "-----BEGIN PRIVATE KEY-----", "token_uri": "https://oauth2.googleapis.com/token"}'
    )
    config = tmp_path / "sluice.toml"
    config.write_text(
        f"""
[[providers.gemini.credentials]]
label = "vertex-eu"
type = "vertex"
service_account_file = "{service_account}"
location = "europe-west4"

[[providers.gemini.credentials]]
label = "studio"
api_key_env = "STUDIO_KEY"
"""
    )
    s = load_settings({"SLUICE_CONFIG": str(config), "STUDIO_KEY": "g-key", "GEMINI_API_KEY": "ignored"})
    vertex, studio = s.upstreams["gemini"].credentials
    assert (vertex.kind, vertex.project, vertex.location) == ("vertex", "p1", "europe-west4")
    assert vertex.endpoint == "https://europe-west4-aiplatform.googleapis.com"
    assert (studio.label, studio.api_key) == ("studio", "g-key")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('label = "a"\napi_key_env = "NOT_SET"', "NOT_SET"),
        ('label = "a"\ntype = "vertex"\nservice_account_file = "/nonexistent.json"', "cannot read"),
        ('label = "a"\ntype = "magic"', "type must be"),
        ('label = "bad label!"\napi_key = "k"', "label"),
    ],
)
def test_bad_credential_entries_stop_the_start(tmp_path: Path, entry: str, problem: str) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(f"[[providers.gemini.credentials]]\n{entry}\n")
    with pytest.raises(ConfigError, match=problem) as info:
        load_settings({"SLUICE_CONFIG": str(config)})
    assert info.value.setting == "SLUICE_CONFIG"


def test_vertex_is_for_gemini_only(tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[[providers.openai.credentials]]\ntype = "vertex"\nservice_account_file = "x"\n')
    with pytest.raises(ConfigError, match="gemini provider only"):
        load_settings({"SLUICE_CONFIG": str(config)})


def test_every_setting_sluice_reads_is_in_the_readme() -> None:
    root = Path(__file__).resolve().parent.parent
    source = "".join(path.read_text() for path in (root / "proxy").rglob("*.py"))
    names = set(re.findall(r'"(SLUICE_[A-Z0-9_]+)"', source))
    assert "SLUICE_KEEP_ALIVE_TIMEOUT" in names  # the pattern finds what config.py reads
    readme = (root / "README.md").read_text()
    assert sorted(n for n in names if f"| `{n}` |" not in readme) == []  # a row of a settings table
