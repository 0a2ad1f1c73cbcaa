"""Sluice's own client keys: issued, stored hashed, looked up, revoked.

A key looks like ``sk-sluice-<id>_<secret>``. The id (12 characters) finds
the record; the whole key is then hashed and compared with the stored hash in
constant time. Secrets are 256 random bits, so SHA-256 is the right hash: a
slow password hash protects guessable secrets, and these are not guessable.

The keys file is TOML, written atomically with mode 0600. A running Sluice
notices changes within a second (it checks the file's modification time at
most once a second), so a revoked key stops working without a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import os
import secrets
import string
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final, Literal, get_args

import tomli_w

from .config import PROVIDERS
from .limits import Limits

PREFIX = "sk-sluice-"
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_ID_LEN: Final = 12
RELOAD_INTERVAL = 1.0


class KeyFileError(ValueError):
    """The keys file cannot be read or does not have the expected shape."""


@dataclass(frozen=True, slots=True)
class ClientKey:
    name: str
    id: str
    hash: str  # "sha256:<hex>"
    created: str
    limits: Limits = dataclasses.field(default_factory=Limits)
    providers: tuple[str, ...] | None = None  # None: every provider
    models: tuple[str, ...] | None = None  # None: every model; else exact names or globs
    revoked: str | None = None
    budget_usd: float | None = None  # spend allowed per budget_period (proxy/spend)
    budget_period: Literal["day", "week", "month", "total"] | None = None

    def allows_provider(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def allows_model(self, model: str | None) -> bool:
        if self.models is None:
            return True
        return model is not None and any(fnmatchcase(model, pattern) for pattern in self.models)


def new_secret() -> tuple[str, str]:
    """A fresh ``(id, key)`` pair."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LEN))
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def key_id_of(presented: str) -> str | None:
    if not presented.startswith(PREFIX):
        return None
    key_id, sep, _secret = presented[len(PREFIX) :].partition("_")
    return key_id if sep and len(key_id) == _ID_LEN else None


# --- the file -------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _optional_int(entry: dict[str, Any], field: str, name: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KeyFileError(f"key {name!r}: {field} must be a positive integer")
    return value


def _optional_names(entry: dict[str, Any], field: str, name: str) -> tuple[str, ...] | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise KeyFileError(f"key {name!r}: {field} must be a list of names")
    return tuple(value)


def _parse_entry(name: str, entry: Any) -> ClientKey:
    if not isinstance(entry, dict):
        raise KeyFileError(f"key {name!r} must be a table")
    for field in ("id", "hash", "created"):
        if not isinstance(entry.get(field), str):
            raise KeyFileError(f"key {name!r} has no {field}")
    limits = Limits(
        rpm=_optional_int(entry, "rpm", name),
        tpm=_optional_int(entry, "tpm", name),
        concurrency=_optional_int(entry, "concurrency", name),
    )
    revoked = entry.get("revoked")
    budget_usd, budget_period = _budget(entry, name)
    return ClientKey(
        name=name,
        id=entry["id"],
        hash=entry["hash"],
        created=entry["created"],
        limits=limits,
        providers=_optional_names(entry, "providers", name),
        models=_optional_names(entry, "models", name),
        revoked=revoked if isinstance(revoked, str) else None,
        budget_usd=budget_usd,
        budget_period=budget_period,
    )


BudgetPeriod = Literal["day", "week", "month", "total"]
BUDGET_PERIODS: Final[tuple[str, ...]] = get_args(BudgetPeriod)


def _budget(entry: dict[str, Any], name: str) -> tuple[float | None, BudgetPeriod | None]:
    usd, period = entry.get("budget_usd"), entry.get("budget_period")
    if usd is None and period is None:
        return None, None
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 <= usd < float("inf"):
        raise KeyFileError(f"key {name!r}: budget_usd must be a number of dollars, 0 or more")
    if period not in BUDGET_PERIODS:
        raise KeyFileError(f"key {name!r}: budget_period must be one of {', '.join(BUDGET_PERIODS)}")
    return float(usd), period


def read_keys(path: Path) -> dict[str, ClientKey]:
    """All keys in the file by name; a missing file holds no keys."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"{path} is not valid TOML: {exc}") from None
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise KeyFileError(f"{path}: [keys] must be a table")
    return {name: _parse_entry(name, entry) for name, entry in keys.items()}


def _entry(key: ClientKey) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": key.id, "hash": key.hash, "created": key.created}
    for field in ("rpm", "tpm", "concurrency"):
        value = getattr(key.limits, field)
        if value is not None:
            entry[field] = value
    if key.providers is not None:
        entry["providers"] = list(key.providers)
    if key.models is not None:
        entry["models"] = list(key.models)
    if key.revoked is not None:
        entry["revoked"] = key.revoked
    if key.budget_usd is not None and key.budget_period is not None:
        entry["budget_usd"] = key.budget_usd
        entry["budget_period"] = key.budget_period
    return entry


_HEADER: Final = "# Sluice client keys, managed with `sluice keys`. Only hashes are stored.\n\n"


def write_keys(path: Path, keys: dict[str, ClientKey]) -> None:
    """Replace the file atomically; readers see the old file or the new one, never half."""
    body = _HEADER + tomli_w.dumps({"keys": {name: _entry(k) for name, k in keys.items()}})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[dict[str, ClientKey]]:
    """Read-modify-write under an exclusive lock, so two `sluice keys` runs cannot lose an update."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = read_keys(path)
        yield keys
        write_keys(path, keys)


def create_key(
    path: Path,
    name: str,
    limits: Limits,
    providers: tuple[str, ...] | None = None,
    models: tuple[str, ...] | None = None,
    budget: tuple[float, BudgetPeriod] | None = None,
) -> str:
    """Add a key and return its secret, which is shown once and never stored."""
    if not name or any(c.isspace() or c in "\"'\\" for c in name):
        raise KeyFileError("a key name must be non-empty, without spaces or quotes")
    unknown = set(providers or ()) - set(PROVIDERS)
    if unknown:
        raise KeyFileError(f"unknown provider(s): {', '.join(sorted(unknown))}")
    with locked(path) as keys:
        if name in keys and keys[name].revoked is None:
            raise KeyFileError(f"a key named {name!r} exists; revoke it first")
        key_id, secret = new_secret()
        keys[name] = ClientKey(name, key_id, hash_key(secret), _now(), limits, providers, models)
        if budget is not None:
            keys[name] = dataclasses.replace(keys[name], budget_usd=budget[0], budget_period=budget[1])
    return secret


def set_budget(path: Path, name: str, budget: tuple[float, BudgetPeriod] | None) -> None:
    """Give an active key a budget, change it, or remove it (``None``).

    Running servers notice within a second, as they notice any change to the file.
    """
    with locked(path) as keys:
        if name not in keys or keys[name].revoked is not None:
            raise KeyFileError(f"no active key named {name!r}")
        usd, period = budget if budget is not None else (None, None)
        keys[name] = dataclasses.replace(keys[name], budget_usd=usd, budget_period=period)


def revoke_key(path: Path, name: str) -> None:
    with locked(path) as keys:
        if name not in keys:
            raise KeyFileError(f"no key named {name!r}")
        if keys[name].revoked is None:
            old = keys[name]
            keys[name] = ClientKey(
                old.name, old.id, old.hash, old.created, old.limits, old.providers, old.models, _now()
            )


# --- lookups in the running server ------------------------------------------


class KeyStore:
    """Active keys by id, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_id: dict[str, ClientKey] = {}
        self._verified: dict[str, ClientKey] = {}  # see lookup
        self._mtime: int | None = None
        self._checked = 0.0
        self.load()

    def load(self) -> None:
        """(Re)read the file. Raises :class:`KeyFileError` when it is broken."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        keys = read_keys(self.path)
        self._by_id = {k.id: k for k in keys.values() if k.revoked is None}
        self._verified = {}  # a revoked or replaced key is no longer found here
        self._mtime = mtime
        self._checked = time.monotonic()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_INTERVAL:
            return
        self._checked = now
        try:
            mtime: int | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            # A broken edit keeps the last good keys: better than locking everyone out.
            with contextlib.suppress(KeyFileError):
                self.load()

    @property
    def count(self) -> int:
        return len(self._by_id)

    def lookup(self, presented: str) -> ClientKey | None:
        self._maybe_reload()
        # A key verified once is found by its text: a dict lookup instead of a
        # SHA-256 on every request. Only keys that passed the check below are kept, so there is
        # at most one entry per active key, and a reload empties it.
        #
        # Timing: the dict compares two texts only when their 64-bit hashes
        # are equal, so a guess reaches a byte comparison with a stored key
        # about once in 2**64 tries: it cannot be learnt a byte at a time.
        # The price: a key in use stays in this process's memory as
        # presented (each request's headers hold it too) until the keys
        # file changes.
        cached = self._verified.get(presented)
        if cached is not None:
            return cached
        key_id = key_id_of(presented)
        record = self._by_id.get(key_id) if key_id else None
        # Hash and compare even when the id is unknown, so timing says nothing.
        expected = record.hash if record is not None else "sha256:" + "0" * 64
        if hmac.compare_digest(hash_key(presented), expected) and record is not None:
            self._verified[presented] = record
            return record
        return None
