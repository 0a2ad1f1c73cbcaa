"""Where client keys are kept, and the changes `sluice keys` makes to them.

A :class:`KeyBook` holds the records by name: :class:`FileBook` is the keys
file (TOML, written atomically with mode 0600 under an exclusive lock, so two
`sluice keys` runs cannot lose an update); :class:`proxy.keys_redis.RedisBook`
is the same records in Redis. The operations below work on either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

import tomli_w

from .config import PROVIDERS
from .keys import (
    TIME_FORMAT,
    ClientKey,
    KeyFileError,
    RetiredSecret,
    check_target,
    epoch,
    hash_key,
    new_secret,
    now_text,
    read_keys,
    timestamp,
    to_entry,
)
from .limits import Limits

_HEADER: Final = "# Sluice client keys, managed with `sluice keys`. Only hashes are stored.\n\n"


def write_keys(path: Path, keys: dict[str, ClientKey]) -> None:
    """Replace the file atomically; readers see the old file or the new one, never half."""
    body = _HEADER + tomli_w.dumps({"keys": {name: to_entry(k) for name, k in keys.items()}})
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


class KeyBook(Protocol):
    """Where the key records are kept and changed: the keys file, or Redis."""

    where: str  # for messages: the file's path, or the Redis that holds them

    def locked(self) -> contextlib.AbstractContextManager[dict[str, ClientKey]]:
        """All records by name, to change in place; written back atomically at the end."""
        ...

    def read(self) -> dict[str, ClientKey]:
        """All records by name, as they are now."""
        ...


class FileBook:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def locked(self) -> contextlib.AbstractContextManager[dict[str, ClientKey]]:
        return locked(self.path)

    def read(self) -> dict[str, ClientKey]:
        return read_keys(self.path)


def _book(target: Path | KeyBook) -> KeyBook:
    return FileBook(target) if isinstance(target, Path) else target


def create_key(
    target: Path | KeyBook,
    name: str,
    limits: Limits,
    providers: tuple[str, ...] | None = None,
    models: tuple[str, ...] | None = None,
    expires: str | None = None,
    *,
    force_model: str | None = None,
    default_model: str | None = None,
    max_output_tokens: int | None = None,
) -> str:
    """Add a key and return its secret, which is shown once and never stored."""
    if not name or any(c.isspace() or c in "\"'\\" for c in name):
        raise KeyFileError("a key name must be non-empty, without spaces or quotes")
    unknown = set(providers or ()) - set(PROVIDERS)
    if unknown:
        raise KeyFileError(f"unknown provider(s): {', '.join(sorted(unknown))}")
    with _book(target).locked() as keys:
        if name in keys and keys[name].revoked is None:
            raise KeyFileError(f"a key named {name!r} exists; revoke it first")
        key_id, secret = new_secret()
        keys[name] = ClientKey(
            name,
            key_id,
            hash_key(secret),
            now_text(),
            limits,
            providers,
            models,
            expires=expires,
            force_model=check_target(force_model) if force_model else None,
            default_model=check_target(default_model) if default_model else None,
            max_output_tokens=max_output_tokens,
        )
    return secret


def revoke_key(target: Path | KeyBook, name: str) -> None:
    """End every secret of the key at once, retired ones included."""
    with _book(target).locked() as keys:
        if name not in keys:
            raise KeyFileError(f"no key named {name!r}")
        if keys[name].revoked is None:
            keys[name] = dataclasses.replace(keys[name], revoked=now_text())


def rotate_key(target: Path | KeyBook, name: str, grace: float) -> str:
    """Give the key a new secret and return it; the old one works ``grace`` seconds more.

    Limits, allowlists and expiry stay with the key. Retired secrets whose
    grace has ended are dropped from the record.
    """
    with _book(target).locked() as keys:
        old = keys.get(name)
        if old is None or old.revoked is not None:
            raise KeyFileError(f"no active key named {name!r}")
        now = time.time()
        kept = tuple(r for r in old.retired if epoch(r.until) > now)
        if grace > 0:
            kept += (RetiredSecret(old.id, old.hash, timestamp(now + grace)),)
        key_id, secret = new_secret()
        keys[name] = dataclasses.replace(old, id=key_id, hash=hash_key(secret), retired=kept)
    return secret


_SPAN: Final = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``30d``, ``2w`` → seconds."""
    match = _SPAN.match(text.strip())
    if match is None:
        raise KeyFileError(f"{text!r} is not a duration like 90s, 15m, 1h, 30d or 2w")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def parse_expiry(text: str, now: float | None = None) -> str:
    """``30d`` (from now), ``2027-01-31`` (that day's start, UTC) or ``2027-01-31T12:00:00Z``."""
    text = text.strip()
    if _SPAN.match(text):
        return timestamp((time.time() if now is None else now) + parse_duration(text))
    for layout in ("%Y-%m-%d", TIME_FORMAT):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC).strftime(TIME_FORMAT)
        except ValueError:
            continue
    raise KeyFileError(f"--expires {text!r}: give a duration (30d, 12h) or a UTC date (2027-01-31)")
