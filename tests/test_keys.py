from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy import keybook
from proxy import keys as keys_module
from proxy.keybook import create_key, parse_duration, parse_expiry, revoke_key, rotate_key
from proxy.keys import (
    ClientKey,
    KeyFileError,
    KeyStore,
    hash_key,
    key_id_of,
    key_status,
    read_keys,
    timestamp,
)
from proxy.limits import Limits
from tests.conftest import SluiceFactory, clean_env


def test_created_keys_are_stored_hashed_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    secret = create_key(path, "alice", Limits(rpm=10, tpm=1000, concurrency=2), ("openai",), ("gpt-4o*",))
    assert secret.startswith("sk-sluice-")
    text = path.read_text()
    assert secret not in text
    assert hash_key(secret) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    key = read_keys(path)["alice"]
    assert key.limits == Limits(rpm=10, tpm=1000, concurrency=2)
    assert key.allows_provider("openai") and not key.allows_provider("gemini")
    assert key.allows_model("gpt-4o-mini") and not key.allows_model("o3") and not key.allows_model(None)


def test_lookup_finds_only_the_exact_active_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    secret = create_key(path, "alice", Limits())
    store = KeyStore(path)
    found = store.lookup(secret)
    assert found is not None and found.name == "alice"
    assert store.lookup(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None  # same id, wrong secret
    assert store.lookup("sk-sluice-") is None
    assert store.lookup("Bearer " + secret) is None
    assert key_id_of(secret) == found.id


def test_names_are_unique_while_active_and_reusable_after_revocation(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    create_key(path, "alice", Limits())
    with pytest.raises(KeyFileError, match="exists"):
        create_key(path, "alice", Limits())
    revoke_key(path, "alice")
    create_key(path, "alice", Limits())
    with pytest.raises(KeyFileError, match="no key named"):
        revoke_key(path, "bob")
    with pytest.raises(KeyFileError, match="provider"):
        create_key(path, "carol", Limits(), ("openai", "azure"))


def test_store_reloads_changes_and_keeps_the_last_good_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "keys.toml"
    alice = create_key(path, "alice", Limits())
    store = KeyStore(path)
    bob = create_key(path, "bob", Limits())
    assert store.lookup(bob) is not None
    revoke_key(path, "alice")
    assert store.lookup(alice) is None
    path.write_text("this is [not toml")  # a broken hand edit
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.lookup(bob) is not None, "a broken file must not lock everyone out"


def test_a_key_verified_before_is_forgotten_when_revoked_or_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression guard for the verified-key cache: a key found once must not
    # outlive its revocation, nor keep the limits it had.
    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "keys.toml"
    alice = create_key(path, "alice", Limits(rpm=5))
    store = KeyStore(path)
    assert store.lookup(alice) is store.lookup(alice) is not None  # the second from the cache
    assert store.lookup(alice[:-1] + ("A" if alice[-1] != "A" else "B")) is None
    with keybook.locked(path) as keys:
        keys["alice"] = dataclasses.replace(keys["alice"], limits=Limits(rpm=7))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    found = store.lookup(alice)
    assert found is not None and found.limits.rpm == 7
    revoke_key(path, "alice")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert store.lookup(alice) is None


def test_bad_entries_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[keys.alice]\nid = "x"\nhash = "y"\ncreated = "z"\nrpm = -1\n')
    with pytest.raises(KeyFileError, match="rpm"):
        read_keys(path)


def _sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, env=clean_env(), timeout=30
    )


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.toml")
    created = _sluice(
        "keys", "--file", path, "create", "--name", "ci", "--rpm", "30", "--providers", "gemini"
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk-sluice-") and "shown only now" in created.stderr
    listed = _sluice("keys", "--file", path, "list")
    assert "ci" in listed.stdout and "gemini" in listed.stdout and secret not in listed.stdout
    assert _sluice("keys", "--file", path, "revoke", "ci").returncode == 0
    assert "revoked" in _sluice("keys", "--file", path, "list").stdout
    missing = _sluice("keys", "--file", path, "revoke", "nobody")
    assert missing.returncode == 2 and "no key named" in missing.stderr
    no_file = _sluice("keys", "list")
    assert no_file.returncode == 2 and "SLUICE_KEYS_FILE" in no_file.stderr


def test_auth_off_is_announced_at_start(sluice_factory: SluiceFactory) -> None:
    process = sluice_factory(SLUICE_AUTH="off")
    assert "client authentication is OFF" in process.log()


def test_auth_on_without_keys_file_refuses_to_start() -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--port", "0"],
        capture_output=True, text=True, env=clean_env(SLUICE_AUTH="on"), timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2 and "SLUICE_KEYS_FILE" in refused.stderr


# --- expiry and rotation --------------------------------------------------------


def test_durations_and_expiry_dates_parse() -> None:
    assert parse_duration("90s") == 90 and parse_duration("2w") == 14 * 86400
    assert parse_expiry("30d", now=0) == "1970-01-31T00:00:00Z"
    assert parse_expiry("2027-01-31") == "2027-01-31T00:00:00Z"
    assert parse_expiry("2027-01-31T12:30:00Z") == "2027-01-31T12:30:00Z"
    for bad in ("soon", "30 days", "-1d", "2027-13-01"):
        with pytest.raises(ValueError, match=r"duration|date"):
            parse_expiry(bad)


def test_an_expired_key_is_refused_and_told_why(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    past = create_key(path, "old", Limits(), expires=timestamp(time.time() - 1))
    future = create_key(path, "new", Limits(), expires=timestamp(time.time() + 3600))
    store = KeyStore(path)
    assert store.lookup(past) is None
    reason, message = store.refusal(past)
    assert reason == "expired" and "expired at" in message
    assert store.lookup(future) is not None
    assert store.refusal("sk-sluice-nothing_here")[0] == "invalid"


def test_rotation_keeps_the_old_secret_for_its_grace_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    first = create_key(path, "app", Limits(rpm=9), ("openai",))
    second = rotate_key(path, "app", grace=3600)
    third = rotate_key(path, "app", grace=0)  # the second ends at once; the first keeps its grace
    store = KeyStore(path)
    found = [store.lookup(s) for s in (first, second, third)]
    assert [k.name if k else None for k in found] == ["app", None, "app"]
    assert all(isinstance(k, ClientKey) and k.limits.rpm == 9 for k in found if k)
    assert store.refusal(second)[0] == "invalid"  # never retired: simply gone
    assert found[2] is not None and "old secret until" in key_status(found[2], time.time())


def test_a_retired_secret_stops_at_its_grace_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.toml"
    old = create_key(path, "app", Limits())
    rotate_key(path, "app", grace=60)
    store = KeyStore(path)
    assert store.lookup(old) is not None
    assert store.lookup(old) is not None  # from the verified cache, still timed
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert store.lookup(old) is None
    reason, message = store.refusal(old)
    assert reason == "rotated" and "use the new one" in message


def test_revoking_ends_retired_secrets_too(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    old = create_key(path, "app", Limits())
    new = rotate_key(path, "app", grace=3600)
    revoke_key(path, "app")
    store = KeyStore(path)
    assert store.lookup(old) is None and store.lookup(new) is None
    assert store.refusal(old)[0] == store.refusal(new)[0] == "revoked"
