"""Sluice's own client keys: their records, and how a running server looks them up.

A key looks like ``sk-sluice-<id>_<secret>``. The id (12 characters) finds
the record; the whole key is then hashed and compared with the stored hash in
constant time. Secrets are 256 random bits, so SHA-256 is the right hash: a
slow password hash protects guessable secrets, and these are not guessable.

The keys file is TOML (written by :mod:`proxy.keybook`). A running Sluice
notices changes within a second (it checks the file's modification time at
most once a second), so a revoked key stops working without a restart. With
``SLUICE_REDIS_URL`` and no keys file, the same records live in Redis
(:mod:`proxy.keys_redis`) and reach every instance within a second.

A key's life: it may carry an expiry (``expires``); rotating it gives it a
new secret and keeps the old one as a *retired* secret until a grace period
ends; revoking it ends every secret it has. A refused key that was once good
is told why (expired, rotated out, revoked), since its holder knew the secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import math
import secrets
import string
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final

from .config import PROVIDERS
from .limits import Limits

PREFIX = "sk-sluice-"
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_ID_LEN: Final = 12
RELOAD_INTERVAL = 1.0


class KeyFileError(ValueError):
    """The keys file cannot be read or does not have the expected shape."""


@dataclass(frozen=True, slots=True)
class RetiredSecret:
    """A secret replaced by ``sluice keys rotate``, still accepted until ``until``."""

    id: str
    hash: str
    until: str


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
    expires: str | None = None  # UTC timestamp after which it is refused
    retired: tuple[RetiredSecret, ...] = ()  # earlier secrets, each good until its grace ends
    # Model policy (proxy/modelpolicy.py): "provider/model" names, and a cap.
    force_model: str | None = None
    default_model: str | None = None
    max_output_tokens: int | None = None

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


TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


def now_text() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def timestamp(when: float) -> str:
    """A Unix time as the keys file writes times (UTC, to the second)."""
    return datetime.fromtimestamp(when, UTC).strftime(TIME_FORMAT)


def epoch(text: str) -> float:
    """The Unix time of a timestamp the keys file holds (``2027-01-31T00:00:00Z``)."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def _optional_time(entry: dict[str, Any], field: str, name: str) -> str | None:
    value = entry.get(field)
    if value is None:
        return None
    try:
        epoch(value)
    except (TypeError, ValueError):
        raise KeyFileError(f"key {name!r}: {field} must be a UTC time like 2027-01-31T00:00:00Z") from None
    return str(value)


def check_target(target: str) -> str:
    """A ``provider/model`` name as keys hold them (force_model, default_model)."""
    provider, slash, model = target.partition("/")
    if provider not in PROVIDERS or not slash or not model or any(c.isspace() for c in model):
        raise KeyFileError(f"{target!r} must be provider/model, e.g. openai/gpt-4o-mini")
    return target


def _optional_target(entry: dict[str, Any], field: str, name: str) -> str | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise KeyFileError(f"key {name!r}: {field} must be provider/model")
    try:
        return check_target(value)
    except KeyFileError as exc:
        raise KeyFileError(f"key {name!r}: {field}: {exc}") from None


def _retired(entry: dict[str, Any], name: str) -> tuple[RetiredSecret, ...]:
    value = entry.get("retired", [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise KeyFileError(f"key {name!r}: retired must be a list of tables")
    secrets_ = []
    for item in value:
        if not (isinstance(item.get("id"), str) and isinstance(item.get("hash"), str)):
            raise KeyFileError(f"key {name!r}: a retired secret needs id and hash")
        until = _optional_time(item, "until", name)
        if until is None:
            raise KeyFileError(f"key {name!r}: a retired secret needs until")
        secrets_.append(RetiredSecret(item["id"], item["hash"], until))
    return tuple(secrets_)


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


def parse_entry(name: str, entry: Any) -> ClientKey:
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
    return ClientKey(
        name=name,
        id=entry["id"],
        hash=entry["hash"],
        created=entry["created"],
        limits=limits,
        providers=_optional_names(entry, "providers", name),
        models=_optional_names(entry, "models", name),
        revoked=revoked if isinstance(revoked, str) else None,
        expires=_optional_time(entry, "expires", name),
        retired=_retired(entry, name),
        force_model=_optional_target(entry, "force_model", name),
        default_model=_optional_target(entry, "default_model", name),
        max_output_tokens=_optional_int(entry, "max_output_tokens", name),
    )


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
    return {name: parse_entry(name, entry) for name, entry in keys.items()}


def to_entry(key: ClientKey) -> dict[str, Any]:
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
    if key.expires is not None:
        entry["expires"] = key.expires
    if key.retired:
        entry["retired"] = [{"id": r.id, "hash": r.hash, "until": r.until} for r in key.retired]
    for field in ("force_model", "default_model", "max_output_tokens"):
        if getattr(key, field) is not None:
            entry[field] = getattr(key, field)
    return entry


def key_status(key: ClientKey, now: float) -> str:
    """What `sluice keys list` says of a key: active, expired or revoked, and when things end."""
    if key.revoked is not None:
        return f"revoked {key.revoked}"
    status = "active"
    if key.expires is not None:
        status = f"expired {key.expires}" if epoch(key.expires) <= now else f"active, expires {key.expires}"
    graces = [r.until for r in key.retired if epoch(r.until) > now]
    if graces:
        status += f", old secret until {max(graces)}"
    return status


# --- lookups in the running server ------------------------------------------


class _Secret:
    """One secret the store can verify: the key it opens and until when."""

    __slots__ = ("hash", "key", "until", "why")

    def __init__(self, key: ClientKey, hash_: str, until: float, why: tuple[str, str]) -> None:
        self.key = key
        self.hash = hash_
        self.until = until  # Unix time; inf: no end; -inf: refused outright
        self.why = why  # (reason, message): the refusal once ``until`` has passed


def _secrets(key: ClientKey) -> list[tuple[str, _Secret]]:
    """The ids under which a key's secrets are found: its current one and its retired ones."""
    if key.revoked is not None:
        why = ("revoked", f"This Sluice key was revoked at {key.revoked}.")
        found = [(key.id, _Secret(key, key.hash, -math.inf, why))]
        return found + [(r.id, _Secret(key, r.hash, -math.inf, why)) for r in key.retired]
    expired = ("expired", f"This Sluice key expired at {key.expires}.")
    key_end = epoch(key.expires) if key.expires else math.inf
    found = [(key.id, _Secret(key, key.hash, key_end, expired))]
    for r in key.retired:
        until = epoch(r.until)
        rotated = (
            f"This Sluice key was rotated: its old secret stopped working at {r.until}; use the new one."
        )
        why = expired if key_end < until else ("rotated", rotated)
        found.append((r.id, _Secret(key, r.hash, min(until, key_end), why)))
    return found


UNKNOWN_KEY: Final = ("invalid", "Invalid API key: this Sluice key is unknown or revoked.")


class KeyStore:
    """Keys by the id of each of their secrets, reloaded when the file changes.

    With no ``path`` the records come from elsewhere (Redis, through
    :meth:`replace`), and nothing is read from disk.
    """

    def __init__(self, path: Path | None, where: str | None = None) -> None:
        self.path = path
        self.where = where or f"the keys file {path}"
        self._by_id: dict[str, _Secret] = {}
        self._verified: dict[str, _Secret] = {}  # see lookup
        self._mtime: int | None = None
        self._checked = 0.0
        self.count = 0  # active keys
        if path is not None:
            self.load()

    def load(self) -> None:
        """(Re)read the file. Raises :class:`KeyFileError` when it is broken."""
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        self.replace(read_keys(self.path))
        self._mtime = mtime
        self._checked = time.monotonic()

    def replace(self, keys: dict[str, ClientKey]) -> None:
        """Serve these records from now on; keys verified before are checked again."""
        by_id: dict[str, _Secret] = {}
        for key in keys.values():
            by_id.update(_secrets(key))
        self._by_id = by_id
        self._verified = {}  # a revoked or replaced key is no longer found here
        self.count = sum(1 for k in keys.values() if k.revoked is None)

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
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

    def _verify(self, presented: str) -> _Secret | None:
        # A key verified once is found by its text: a dict lookup instead of a
        # SHA-256 on every request. Only keys that passed the check below are kept, so there is
        # at most one entry per secret, and a reload empties it.
        #
        # Timing: the dict compares two texts only when their 64-bit hashes
        # are equal, so a guess reaches a byte comparison with a stored key
        # about once in 2**64 tries: it cannot be learnt a byte at a time.
        # The price: a key in use stays in this process's memory as
        # presented (each request's headers hold it too) until the keys
        # change.
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

    def lookup(self, presented: str) -> ClientKey | None:
        """The key this secret opens, if it is good now."""
        self._maybe_reload()
        secret = self._verify(presented)
        if secret is not None and time.time() < secret.until:
            return secret.key
        return None

    def refusal(self, presented: str) -> tuple[str, str]:
        """Why :meth:`lookup` refused this secret, for its holder (who knew it): (reason, message).

        The reason (``invalid``, ``expired``, ``rotated``, ``revoked``) goes to
        the access log and metrics; the message to the client.
        """
        secret = self._verify(presented)
        if secret is None or time.time() < secret.until:
            return UNKNOWN_KEY
        return secret.why
