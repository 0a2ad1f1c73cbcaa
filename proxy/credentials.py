"""What a server-held credential is, and where the list of them comes from.

Each provider has an ordered list of credentials. The simple case is an
environment variable holding one key or several, comma-separated
(``OPENAI_API_KEY=sk-a,sk-b``): they are labelled ``OPENAI_API_KEY[1]``,
``OPENAI_API_KEY[2]``. The config file (``SLUICE_CONFIG``) can instead give a
provider an explicit list, with labels, and for Gemini a Vertex AI service
account::

    [[providers.gemini.credentials]]
    label = "vertex-prod"
    type = "vertex"
    service_account_file = "/etc/sluice/vertex-sa.json"
    location = "us-central1"            # project: the file's project_id unless given

    [[providers.gemini.credentials]]
    label = "ai-studio"
    type = "api_key"
    api_key_env = "GEMINI_API_KEY"      # secrets stay in the environment

and a Google account's OAuth credentials for Code Assist (``cloudcode-pa``),
the way Gemini's command-line tool reaches Gemini (``proxy/code_assist.py``)::

    [[providers.gemini.credentials]]
    label = "code-assist"
    type = "code_assist"
    oauth_file = "/etc/sluice/oauth_creds.json"  # authorized_user or the CLI's oauth_creds.json
    # project = "my-project"            # discovered with loadCodeAssist unless given

Labels appear in logs, metrics and ``/readyz``; secrets never do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CredentialKind = Literal["api_key", "vertex", "code_assist"]

_LABEL = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,64}$")
_LOCATION = re.compile(r"^[a-z0-9-]{2,40}$")


class CredentialError(ValueError):
    """A credential entry is unusable; the message names the entry, never a secret."""


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    label: str
    kind: CredentialKind
    api_key: str | None = field(default=None, repr=False)
    service_account_file: Path | None = None
    project: str | None = None
    location: str | None = None
    endpoint: str | None = None  # Vertex: https://{location}-aiplatform.googleapis.com unless given
    oauth_file: Path | None = None  # code_assist: the Google account's OAuth credentials


def from_env_value(setting: str, raw: str) -> tuple[CredentialSpec, ...]:
    """``"sk-a, sk-b"`` → two API keys labelled ``SETTING[1]`` and ``SETTING[2]``."""
    keys = [part.strip() for part in raw.split(",") if part.strip()]
    if len(keys) == 1:
        return (CredentialSpec(setting, "api_key", keys[0]),)
    return tuple(CredentialSpec(f"{setting}[{i}]", "api_key", key) for i, key in enumerate(keys, 1))


def from_config(provider: str, entries: Any, env: Mapping[str, str]) -> tuple[CredentialSpec, ...]:
    """The ``[[providers.<provider>.credentials]]`` list of the config file."""
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise CredentialError(f"providers.{provider}.credentials must be a non-empty list of tables")
    specs = tuple(_entry(provider, i, entry, env) for i, entry in enumerate(entries, 1))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise CredentialError(f"providers.{provider}.credentials: labels must be unique")
    return specs


def _entry(provider: str, index: int, entry: dict[str, Any], env: Mapping[str, str]) -> CredentialSpec:
    label = entry.get("label", f"{provider}[{index}]")
    where = f"providers.{provider}.credentials[{index}] ({label})"
    if not isinstance(label, str) or not _LABEL.match(label):
        raise CredentialError(f"{where}: label must be 1-64 letters, digits or -_.:[]")
    kind = entry.get("type", "api_key")
    if kind == "api_key":
        return CredentialSpec(label, "api_key", _api_key(where, entry, env))
    if kind == "vertex":
        if provider != "gemini":
            raise CredentialError(f"{where}: type 'vertex' is for the gemini provider only")
        return _vertex(where, label, entry)
    if kind == "code_assist":
        if provider != "gemini":
            raise CredentialError(f"{where}: type 'code_assist' is for the gemini provider only")
        return _code_assist(where, label, entry)
    raise CredentialError(f"{where}: type must be 'api_key', 'vertex' or 'code_assist'")


def _api_key(where: str, entry: dict[str, Any], env: Mapping[str, str]) -> str:
    if "api_key_env" in entry:
        name = entry["api_key_env"]
        value: str = env.get(name, "").strip() if isinstance(name, str) else ""
        if not value:
            raise CredentialError(f"{where}: the environment variable {name!r} is not set")
        return value
    raw = entry.get("api_key")
    if not isinstance(raw, str) or not raw.strip():
        raise CredentialError(f"{where}: needs api_key_env (preferred) or api_key")
    return raw.strip()


def _vertex(where: str, label: str, entry: dict[str, Any]) -> CredentialSpec:
    path = entry.get("service_account_file")
    if not isinstance(path, str):
        raise CredentialError(f"{where}: needs service_account_file")
    info = read_service_account(Path(path), where)
    project = entry.get("project", info.get("project_id"))
    location = entry.get("location", "us-central1")
    if not isinstance(project, str) or not project:
        raise CredentialError(f"{where}: no project (set project, or use a file with project_id)")
    if not isinstance(location, str) or not _LOCATION.match(location):
        raise CredentialError(f"{where}: location must look like 'us-central1' or 'global'")
    endpoint = entry.get("endpoint")
    if endpoint is None:
        host = (
            "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        )
        endpoint = f"https://{host}"
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise CredentialError(f"{where}: endpoint must be an http(s) URL")
    return CredentialSpec(label, "vertex", None, Path(path), project, location, endpoint.rstrip("/"))


def _code_assist(where: str, label: str, entry: dict[str, Any]) -> CredentialSpec:
    path = entry.get("oauth_file")
    if not isinstance(path, str):
        raise CredentialError(f"{where}: needs oauth_file (a Google OAuth credentials file)")
    read_oauth_file(Path(path), where)
    project = entry.get("project")
    if project is not None and (not isinstance(project, str) or not project or project.isdigit()):
        raise CredentialError(f"{where}: project must be a project id (not a project number)")
    endpoint = entry.get("endpoint", "https://cloudcode-pa.googleapis.com")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise CredentialError(f"{where}: endpoint must be an http(s) URL")
    return CredentialSpec(
        label, "code_assist", None, None, project, None, endpoint.rstrip("/"), oauth_file=Path(path)
    )


def read_oauth_file(path: Path, where: str) -> dict[str, Any]:
    """An ``authorized_user`` file, or the command-line tool's ``oauth_creds.json``.

    Both hold a ``refresh_token``; the first also its OAuth client
    (``client_id``, ``client_secret``), the second relies on the tool's own.
    Read at start, so a wrong path fails the start, not the first request.
    """
    info = _read_json(path, where)
    if not isinstance(info, dict) or not isinstance(info.get("refresh_token"), str):
        raise CredentialError(f"{where}: {path} has no refresh_token (not an OAuth credentials file)")
    if ("client_id" in info) != ("client_secret" in info):
        raise CredentialError(f"{where}: {path} has one of client_id and client_secret, not both")
    return info


def _read_json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise CredentialError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise CredentialError(f"{where}: {path} is not JSON") from None


def read_service_account(path: Path, where: str) -> dict[str, Any]:
    """Check the key file at start, so a typo fails the start, not the first request."""
    info = _read_json(path, where)
    missing = [k for k in ("client_email", "private_key", "token_uri") if not isinstance(info.get(k), str)]
    if not isinstance(info, dict) or info.get("type") != "service_account" or missing:
        raise CredentialError(f"{where}: {path} is not a service-account key file (missing: {missing})")
    return info
