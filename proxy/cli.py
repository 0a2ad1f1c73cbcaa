"""The ``sluice`` command: ``serve`` and ``mock``.

This is the only place that reads the process environment and ``.env``; it
turns them into one :class:`~proxy.config.Settings` and hands that down.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import PROVIDERS, ConfigError, Settings, load_settings
from .credentials import CredentialSpec
from .demo import banner, start_warnings
from .http import HTTP_MODES

if TYPE_CHECKING:
    from .keybook import KeyBook
    from .keys import ClientKey
    from .spend.ledger import KeySpend
    from .spend.store import SpendStore

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Streaming reverse proxy for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1, or SLUICE_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on; 0 picks a free one (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1, or SLUICE_WORKERS)")
    serve.add_argument(
        "--env-file", type=Path, help="read settings from this file (default: ./.env if present)"
    )
    serve.add_argument("--mock", action="store_true", help="send every provider to the built-in mock")
    serve.add_argument(
        "--mock-if-unconfigured",
        action="store_true",
        help="use the built-in mock when no provider key is configured (what `make run` does)",
    )
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--http",
        choices=HTTP_MODES,
        help="fast: Sluice's own HTTP/1.1 server and client (default); stock: uvicorn's and aiohttp's",
    )
    serve.add_argument("--ssl-certfile", type=Path, help="serve TLS with this PEM certificate (chain)")
    serve.add_argument("--ssl-keyfile", type=Path, help="the certificate's private key (PEM, unencrypted)")

    _keys_parser(sub)
    _usage_parser(sub)

    mock = sub.add_parser("mock", help="run the mock provider on its own")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000, help="0 picks a free port (default 9000)")
    mock.add_argument("--tokens", type=int, default=12, help="tokens per reply (default 12)")
    mock.add_argument("--delay-ms", type=float, default=0.0, help="pause between tokens (default 0)")
    return parser


def _keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys", help="manage client keys (in --file, SLUICE_KEYS_FILE, or else SLUICE_REDIS_URL's Redis)"
    )
    keys.add_argument("--file", type=Path, help="the keys file (default: SLUICE_KEYS_FILE)")
    keys.add_argument("--env-file", type=Path, help="read SLUICE_KEYS_FILE from this file (default: ./.env)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key and print its secret (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=_positive, help="requests per minute")
    create.add_argument("--tpm", type=_positive, help="tokens per minute")
    create.add_argument("--concurrency", type=_positive, help="requests in flight at once")
    create.add_argument(
        "--providers", nargs="+", choices=PROVIDERS, help="providers it may use (default: all)"
    )
    create.add_argument(
        "--models", nargs="+", help="models it may use; globs like 'gpt-4o*' work (default: all)"
    )
    create.add_argument(
        "--expires", help="refused after this: a duration (30d, 12h) or a UTC date (2027-01-31)"
    )
    create.add_argument("--force-model", help="provider/model every request of the key goes to")
    create.add_argument("--default-model", help="provider/model for requests that name none")
    create.add_argument(
        "--max-output-tokens", type=_positive, help="cap on the output tokens a request asks for"
    )
    _budget_options(create, actions)
    actions.add_parser("list", help="list keys (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key; running servers notice within a second")
    revoke.add_argument("name")
    rotate = actions.add_parser(
        "rotate", help="give a key a new secret (printed once); the old one lasts --grace"
    )
    rotate.add_argument("name")
    rotate.add_argument(
        "--grace", default="1h", help="how long the old secret keeps working (default 1h; 0s: none)"
    )


def _budget_options(
    create: argparse.ArgumentParser, actions: argparse._SubParsersAction[argparse.ArgumentParser]
) -> None:
    from .keys import BUDGET_PERIODS

    create.add_argument("--budget-usd", type=_dollars, help="spend allowed per --budget-period (USD)")
    create.add_argument("--budget-period", choices=BUDGET_PERIODS, help="day, week, month (UTC) or total")
    budget = actions.add_parser("budget", help="set, change or clear a key's spending budget")
    budget.add_argument("name")
    budget.add_argument("--usd", type=_dollars, help="spend allowed per period (USD)")
    budget.add_argument("--period", choices=BUDGET_PERIODS, help="day, week, month (UTC) or total")
    budget.add_argument("--clear", action="store_true", help="remove the budget")


def _usage_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = sub.add_parser("usage", help="requests, tokens and cost per key, model or day")
    usage.add_argument("--since", help="7d, 2w or YYYY-MM-DD (default: everything recorded)")
    usage.add_argument("--by", choices=["key", "model", "day"], default="key")
    usage.add_argument("--json", action="store_true", help="JSON instead of a table")
    usage.add_argument("--env-file", type=Path, help="read settings from this file (default: ./.env)")


def _dollars(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be a number of dollars, 0 or more")
    return value


def _budget_arg(usd: float | None, period: str | None, usd_flag: str, period_flag: str) -> object:
    if usd is None and period is None:
        return None
    if usd is None or period is None:
        raise ConfigError(usd_flag, f"{usd_flag} and {period_flag} go together")
    return (usd, period)


def _spend_store(env: Mapping[str, str]) -> SpendStore:
    """The store the servers record spend in: Redis if configured, else the SQLite ledger."""
    from .services import spend_db_path
    from .spend.store import SqliteStore

    settings = load_settings(env)
    if settings.redis_url:
        from .spend.redis_store import RedisStore

        return RedisStore(settings.redis_url)
    path = spend_db_path(settings)
    if path is None or not path.exists():
        raise ConfigError("SLUICE_SPEND_DB", f"no spend recorded yet ({path or 'no keys file either'})")
    return SqliteStore(path)


def _usage(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .spend.report import report
    from .spend.store import StoreUnavailable

    store = _spend_store(env)
    try:
        print(report(store, args.since, args.by, args.json))
    except ValueError as exc:
        raise ConfigError("--since", str(exc)) from None
    except StoreUnavailable as exc:
        print(f"sluice usage: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _key_book(args: argparse.Namespace, env: Mapping[str, str]) -> KeyBook:
    from .keybook import FileBook

    if args.file or env.get("SLUICE_KEYS_FILE"):
        return FileBook(args.file or Path(env["SLUICE_KEYS_FILE"]))
    if env.get("SLUICE_REDIS_URL"):
        from .keys_redis import RedisBook

        return RedisBook(env["SLUICE_REDIS_URL"])
    raise ConfigError(
        "SLUICE_KEYS_FILE", "not set; pass --file PATH, or set SLUICE_KEYS_FILE or SLUICE_REDIS_URL"
    )


def _keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .keybook import create_key, parse_duration, parse_expiry, revoke_key, rotate_key, set_budget
    from .keys import KeyFileError
    from .limits import Limits

    try:
        book = _key_book(args, env)
        if args.action == "create":
            limits = Limits(rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency)
            providers = tuple(args.providers) if args.providers else None
            models = tuple(args.models) if args.models else None
            expires = parse_expiry(args.expires) if args.expires else None
            budget = _budget_arg(args.budget_usd, args.budget_period, "--budget-usd", "--budget-period")
            secret = create_key(
                book,
                args.name,
                limits,
                providers,
                models,
                expires,
                force_model=args.force_model,
                default_model=args.default_model,
                max_output_tokens=args.max_output_tokens,
                budget=budget,  # type: ignore[arg-type]
            )
            print(secret)
            print(
                f"Key {args.name!r} created in {book.where}. The secret above is shown only now.",
                file=sys.stderr,
            )
        elif args.action == "rotate":
            grace = parse_duration(args.grace)
            secret = rotate_key(book, args.name, grace)
            print(secret)
            print(
                f"Key {args.name!r} has a new secret (above, shown only now); "
                f"the old one works for {args.grace} more.",
                file=sys.stderr,
            )
        elif args.action == "budget":
            budget = None if args.clear else _budget_arg(args.usd, args.period, "--usd", "--period")
            if budget is None and not args.clear:
                raise ConfigError("--usd", "give --usd and --period, or --clear")
            set_budget(book, args.name, budget)  # type: ignore[arg-type]
            done = "cleared" if budget is None else f"set to ${args.usd:g} per {args.period}"
            print(f"Budget of {args.name!r} {done}.", file=sys.stderr)
        elif args.action == "revoke":
            revoke_key(book, args.name)
            print(f"Key {args.name!r} revoked.", file=sys.stderr)
        else:
            _print_keys(book.read(), _spent(env))
    except KeyFileError as exc:
        print(f"sluice keys: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _spent(env: Mapping[str, str]) -> dict[str, KeySpend] | None:
    """Every key's recorded spend, or None when there is none to read (yet)."""
    import asyncio

    from .spend.periods import EPOCH_DAY
    from .spend.store import StoreUnavailable

    try:
        store = _spend_store(env)
    except ConfigError:
        return None

    async def read() -> dict[str, KeySpend]:
        try:
            return await store.read_spend(EPOCH_DAY)
        finally:
            await store.close()

    try:
        return asyncio.run(read())
    except StoreUnavailable:
        return None


def _budget_text(key: ClientKey, spent: dict[str, KeySpend] | None, now: float) -> str:
    from .spend.periods import period_start_day

    if key.budget_usd is None or key.budget_period is None:
        return "-"
    text = f"${key.budget_usd:g}/{key.budget_period}"
    if spent is not None:
        record = spent.get(key.name)
        nanos = 0 if record is None else record.since(period_start_day(key.budget_period, now))
        text += f" (${nanos / 1e9:.2f} spent)"
    return text


def _print_keys(keys: Mapping[str, ClientKey], spent: dict[str, KeySpend] | None = None) -> None:
    from .keys import key_status

    print(f"{'NAME':<20} {'ID':<14} {'CREATED':<21} {'RPM':>6} {'TPM':>9} {'CONC':>5}", end="")
    print("  PROVIDERS / MODELS  BUDGET  STATUS")
    now = time.time()
    for key in keys.values():
        lim = key.limits
        scope = f"{','.join(key.providers or ['*'])} / {','.join(key.models or ['*'])}"
        for label, value in (
            ("force", key.force_model),
            ("default", key.default_model),
            ("max out", key.max_output_tokens),
        ):
            if value is not None:
                scope += f" ({label} {value})"
        print(
            f"{key.name:<20} {key.id:<14} {key.created:<21} {lim.rpm or '-':>6} {lim.tpm or '-':>9} "
            f"{lim.concurrency or '-':>5}  {scope}  {_budget_text(key, spent, now)}  {key_status(key, now)}"
        )


def read_environment(env_file: Path | None) -> dict[str, str]:
    """``.env`` values under the real environment: a variable that is set wins, as with python-dotenv."""
    from dotenv import dotenv_values  # only needed here, where an env file is read

    path = env_file if env_file is not None else Path(".env")
    if env_file is not None and not env_file.is_file():
        raise ConfigError("--env-file", f"no such file: {env_file}")
    values: dict[str, str] = {}
    if path.is_file():
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    values.update(os.environ)
    return values


def _with_mock(settings: Settings, mock_url: str) -> Settings:
    mock_key = (CredentialSpec("mock", "api_key", "sluice-mock-key"),)
    upstreams = {
        p: dataclasses.replace(u, base_url=mock_url, credentials=mock_key)
        for p, u in settings.upstreams.items()
    }
    return dataclasses.replace(settings, upstreams=upstreams, mock=True)


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .server import serve

    settings = load_settings(
        env,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        http=args.http,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    no_keys = all(not settings.upstreams[p].credentials for p in PROVIDERS)
    if args.mock or (args.mock_if_unconfigured and no_keys):
        from .mock import start_mock_in_thread

        settings = _with_mock(settings, start_mock_in_thread(default_delay_ms=60.0).url)

    def on_listening(url: str) -> None:
        print(banner(settings, url), flush=True)
        for warning in start_warnings(settings):
            print(f"WARNING:  {warning}", file=sys.stderr, flush=True)

    serve(settings, on_listening)
    return 0


def _mock(args: argparse.Namespace) -> int:
    from .mock import serve_mock

    def ready(url: str) -> None:
        print(f"Sluice mock provider listening on {url}", flush=True)

    serve_mock(args.host, args.port, default_tokens=args.tokens, default_delay_ms=args.delay_ms, ready=ready)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "mock":
            return _mock(args)
        if args.command == "keys":
            return _keys(args, read_environment(args.env_file))
        if args.command == "usage":
            return _usage(args, read_environment(args.env_file))
        return _serve(args, read_environment(args.env_file))
    except ConfigError as exc:
        print(f"sluice: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        # Typically the port is taken: say so in one line.
        print(f"sluice: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
