"""Settings: read once in the entry point, validated, frozen, passed down.

Nothing else in Sluice reads ``os.environ``. Every value is checked here, and a
bad one raises :class:`ConfigError` naming the setting, so start-up fails with
one clear line instead of a traceback on the first request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from .credentials import CredentialError, CredentialSpec, from_env_value
from .credentials import from_config as credentials_from_config
from .forwarded import Network, parse_networks
from .http import HTTP_MODES, HttpMode
from .tls import TlsFileError, check_files
from .tracing.settings import TracingSettingError, TracingSettings, load_tracing

if TYPE_CHECKING:
    from .spend.rates import Rates

ProviderName = Literal["openai", "gemini", "anthropic"]
PROVIDERS: tuple[ProviderName, ...] = ("openai", "gemini", "anthropic")

DEFAULT_UPSTREAMS: Mapping[ProviderName, str] = {
    "openai": "https://api.openai.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "anthropic": "https://api.anthropic.com",
}

# The environment variables that carry each provider's server-held key, in
# order of preference. GOOGLE_API_KEY is what google-genai itself reads.
KEY_SETTINGS: Mapping[ProviderName, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "anthropic": ("ANTHROPIC_API_KEY",),
}

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
# How an idle event stream is kept alive. `comment` sends ": keepalive" (the
# SSE comment line); `blank` sends an empty line, a no-op in SSE that even a
# parser without comment support skips (google-genai 3.x chokes on comments).
HeartbeatStyle = Literal["comment", "blank", "off"]
DEFAULT_HEARTBEAT_STYLE: Mapping[str, HeartbeatStyle] = {
    "openai": "comment",
    "gemini": "blank",
    "anthropic": "comment",
}
AuthMode = Literal["auto", "on", "off"]
FailurePolicy = Literal["open", "closed"]

# The default middleware chain, outermost first. See proxy/middleware.
DEFAULT_CHAIN: tuple[str, ...] = ("access_log", "auth", "budget", "model_policy", "rate_limit")


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """The provider-neutral chat API (``/api/chat``, proxy/chat)."""

    # Seconds a generation keeps running after its last client left, so a
    # reconnect (EventSource retries by itself) finds it; then it is cancelled.
    grace: float = 10.0
    retention: float = 300.0  # seconds a finished generation's events stay resumable
    max_events: int = 10_000  # events kept per generation (the oldest go first)
    heartbeat_interval: float = 15.0  # seconds of silence before ": keepalive"; 0: off
    aliases: Mapping[str, str] = field(default_factory=dict)  # name -> "provider/model"


class ConfigError(ValueError):
    """A setting has a value Sluice cannot run with."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where one provider's requests go, and the credentials Sluice adds to them."""

    provider: ProviderName
    base_url: str  # scheme://host[:port][/prefix], no trailing slash
    credentials: tuple[CredentialSpec, ...]  # in failover order; their secrets never print
    key_setting: str  # the setting to name when there is no credential
    heartbeat: HeartbeatStyle = "comment"
    heartbeat_interval: float = 15.0  # seconds of upstream silence before a heartbeat

    @property
    def api_key(self) -> str | None:
        """The first API key, if any (the simple, single-key case)."""
        return next((c.api_key for c in self.credentials if c.kind == "api_key"), None)


@dataclass(frozen=True, slots=True)
class Settings:
    upstreams: Mapping[ProviderName, Upstream]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    connect_timeout: float = 10.0
    # A non-streamed answer from a reasoning model arrives only when it is
    # done: the response headers may take many minutes.
    headers_timeout: float = 900.0
    # Upstream silence allowed between two body chunks. Reasoning models can
    # think for minutes before their first streamed token.
    read_timeout: float = 600.0
    stream_deadline: float | None = None  # overall cap from request start; None: no cap
    drain_timeout: float = 900.0  # on SIGTERM, how long in-flight requests may finish
    # How long an idle client connection stays open. Longer than the idle
    # timeout of a proxy in front (deploy/nginx.conf: 60 s), so that proxy
    # never reuses a connection at the moment Sluice closes it (a 502 there).
    keep_alive_timeout: int = 75
    pool_size: int = 10_000  # concurrent upstream requests per worker; beyond: 503
    failover_cooldown: float = 300.0  # a refused credential is skipped this long
    connect_retries: int = 2  # extra attempts when the upstream cannot be reached
    retry_body_limit: int = 4 * 1024 * 1024  # larger request bodies stream through, unretried
    admin_token: str | None = field(default=None, repr=False)  # enables /admin/*
    # auto: client keys are required when a keys file is configured; without
    # one Sluice serves loopback only. on: a keys file is required. off: none.
    auth: AuthMode = "auto"
    keys_file: Path | None = None
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_failure: FailurePolicy = "open"
    access_log: str = "stdout"  # stdout, stderr, off, or a file path
    access_log_flush: float = 0.05  # seconds a line may wait for its batch; 0: the loop step's end
    log_bodies: bool = False
    openai_include_usage: bool = False
    # Bodies are read whole only to check a key's model list; this bounds that.
    max_inspect_bytes: int = 32 * 1024 * 1024
    # Proxies whose X-Forwarded-For is believed (e.g. nginx on 127.0.0.1).
    trusted_proxies: tuple[Network, ...] = ()
    chain: tuple[str, ...] = DEFAULT_CHAIN
    middleware_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    log_level: LogLevel = "info"
    # Sluice's own HTTP/1.1 server and client, or uvicorn's and aiohttp's (proxy/http).
    http: HttpMode = "fast"
    # Where the workers' metric files go (proxy/metricfiles.py); `sluice serve`
    # makes a private temporary one when unset. None in a Settings: one process's metrics.
    metrics_dir: Path | None = None
    mock: bool = False
    chat: ChatSettings = field(default_factory=ChatSettings)
    # name -> "provider/model", rewritten on the passthrough (proxy/modelpolicy.py).
    model_aliases: Mapping[str, str] = field(default_factory=dict)
    # Realtime sessions (WebSockets, proxy/realtime): the largest message
    # either way, the silence after which a session is closed, and how often
    # each side is pinged (so idle sessions survive nginx and NATs).
    realtime_max_message: int = 16 * 1024 * 1024
    realtime_idle_timeout: float = 600.0
    realtime_ping_interval: float = 20.0
    # Sluice's own TLS (proxy/tls.py): both or neither.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # OpenTelemetry traces (the standard OTEL_* variables); None: off.
    tracing: TracingSettings | None = None

    # Spend and budgets (proxy/spend): the SQLite ledger (None: beside the keys
    # file, or in memory without one), the share of a budget that logs a
    # warning, and the config file's [prices."provider/model"].
    spend_db: Path | None = None
    budget_warn_at: float = 0.8
    prices: Mapping[tuple[str, str], Rates] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    @property
    def auth_enforced(self) -> bool:
        return self.auth != "off" and (self.keys_file is not None or self.redis_url is not None)

    @property
    def keys_in_redis(self) -> bool:
        """Client keys live in Redis: no keys file, and a Redis to share them through."""
        return self.auth_enforced and self.keys_file is None


T = TypeVar("T")
_NO_NETWORKS: tuple[Network, ...] = ()


def _parse(env: Mapping[str, str], name: str, default: T, convert: Callable[[str], T]) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return convert(raw.strip())
    except ValueError as exc:
        raise ConfigError(name, f"{exc} (got {raw!r})") from None


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer between {low} and {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be an integer between {low} and {high}")
        return value

    return convert


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return convert


def validate_base_url(raw: str) -> str:
    """Accept ``http(s)://host[:port][/prefix]`` and nothing that could smuggle more."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain user:password@")
    if parts.query or parts.fragment or "?" in raw or "#" in raw:
        raise ValueError("must not have a query string or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        raise ValueError("must not contain '.' or '..' path segments")
    return raw.rstrip("/")


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _upstream(env: Mapping[str, str], provider: ProviderName) -> Upstream:
    name = provider.upper()
    base_url = _parse(env, f"SLUICE_{name}_UPSTREAM", DEFAULT_UPSTREAMS[provider], validate_base_url)
    key_names = KEY_SETTINGS[provider]
    setting = next((n for n in key_names if env.get(n, "").strip()), None)
    credentials = from_env_value(setting, env[setting]) if setting else ()
    interval = _parse(env, "SLUICE_HEARTBEAT_INTERVAL", 15.0, _non_negative_float)
    interval = _parse(env, f"SLUICE_{name}_HEARTBEAT_INTERVAL", interval, _non_negative_float)
    default_style: str = DEFAULT_HEARTBEAT_STYLE[provider]
    raw_style = _parse(env, f"SLUICE_{name}_HEARTBEAT", default_style, _choice("comment", "blank", "off"))
    style = cast(HeartbeatStyle, raw_style)
    if interval == 0:
        style = "off"
    return Upstream(provider, base_url, credentials, key_names[0], style, interval or 15.0)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(env: Mapping[str, str], **overrides: object) -> Settings:
    """Build :class:`Settings` from an environment mapping plus CLI overrides.

    ``overrides`` come from command-line flags and win over the environment;
    ``None`` means "not given on the command line".
    """
    values: dict[str, object] = {
        "upstreams": {p: _upstream(env, p) for p in PROVIDERS},
        "host": _parse(env, "SLUICE_HOST", "127.0.0.1", str),
        "port": _parse(env, "SLUICE_PORT", 8000, _int_between(0, 65535)),
        "workers": _parse(env, "SLUICE_WORKERS", 1, _int_between(1, 256)),
        "connect_timeout": _parse(env, "SLUICE_CONNECT_TIMEOUT", 10.0, _positive_float),
        "headers_timeout": _parse(env, "SLUICE_HEADERS_TIMEOUT", 900.0, _positive_float),
        "read_timeout": _parse(env, "SLUICE_READ_TIMEOUT", 600.0, _positive_float),
        "stream_deadline": _parse(env, "SLUICE_STREAM_DEADLINE", 0.0, _non_negative_float) or None,
        "drain_timeout": _parse(env, "SLUICE_DRAIN_TIMEOUT", 900.0, _non_negative_float),
        "keep_alive_timeout": _parse(env, "SLUICE_KEEP_ALIVE_TIMEOUT", 75, _int_between(1, 86_400)),
        "pool_size": _parse(env, "SLUICE_POOL_SIZE", 10_000, _int_between(1, 1_000_000)),
        "failover_cooldown": _parse(env, "SLUICE_FAILOVER_COOLDOWN", 300.0, _non_negative_float),
        "connect_retries": _parse(env, "SLUICE_CONNECT_RETRIES", 2, _int_between(0, 10)),
        "retry_body_limit": _parse(env, "SLUICE_RETRY_BODY_LIMIT", 4 * 1024 * 1024, _int_between(0, 1 << 30)),
        "admin_token": _parse(env, "SLUICE_ADMIN_TOKEN", None, str),
        "auth": _parse(env, "SLUICE_AUTH", "auto", _choice("auto", "on", "off")),
        "keys_file": _parse(env, "SLUICE_KEYS_FILE", None, Path),
        "redis_url": _parse(env, "SLUICE_REDIS_URL", None, _redis_url),
        "redis_failure": _parse(env, "SLUICE_REDIS_FAILURE", "open", _choice("open", "closed")),
        "access_log": _parse(env, "SLUICE_ACCESS_LOG", "stdout", str),
        "access_log_flush": _parse(env, "SLUICE_ACCESS_LOG_FLUSH", 0.05, _non_negative_float),
        "log_bodies": _parse(env, "SLUICE_LOG_BODIES", False, _boolean),
        "openai_include_usage": _parse(env, "SLUICE_OPENAI_INCLUDE_USAGE", False, _boolean),
        "trusted_proxies": _parse(env, "SLUICE_TRUSTED_PROXIES", _NO_NETWORKS, parse_networks),
        "max_inspect_bytes": _parse(
            env, "SLUICE_MAX_INSPECT_BYTES", 32 * 1024 * 1024, _int_between(1024, 1 << 34)
        ),
        "log_level": _parse(
            env, "SLUICE_LOG_LEVEL", "info", _choice("critical", "error", "warning", "info", "debug")
        ),
        "http": _parse(env, "SLUICE_HTTP", "fast", _choice(*HTTP_MODES)),
        "metrics_dir": _parse(env, "SLUICE_METRICS_DIR", None, Path),
        "model_aliases": _parse(env, "SLUICE_MODEL_ALIASES", _NO_ALIASES, _aliases),
        "realtime_max_message": _parse(
            env, "SLUICE_REALTIME_MAX_MESSAGE", 16 * 1024 * 1024, _int_between(1024, 1 << 30)
        ),
        "realtime_idle_timeout": _parse(env, "SLUICE_REALTIME_IDLE_TIMEOUT", 600.0, _positive_float),
        "realtime_ping_interval": _parse(env, "SLUICE_REALTIME_PING_INTERVAL", 20.0, _positive_float),
        "ssl_certfile": _parse(env, "SLUICE_SSL_CERTFILE", None, Path),
        "ssl_keyfile": _parse(env, "SLUICE_SSL_KEYFILE", None, Path),
        "spend_db": _parse(env, "SLUICE_SPEND_DB", None, Path),
        "budget_warn_at": _parse(env, "SLUICE_BUDGET_WARN_AT", 0.8, _fraction),
    }
    values["chat"] = _chat_settings(env)
    try:
        values["tracing"] = load_tracing(env)
    except TracingSettingError as exc:
        raise ConfigError(exc.setting, exc.problem) from None
    config_file = _parse(env, "SLUICE_CONFIG", None, Path)
    if config_file is not None:
        file_values = _load_config_file(config_file)
        if "chat_aliases" in file_values:  # the environment's aliases win over the file's
            chat: ChatSettings = values["chat"]  # type: ignore[assignment]
            aliases = {**file_values.pop("chat_aliases"), **chat.aliases}
            values["chat"] = dataclasses.replace(chat, aliases=aliases)
        if "model_aliases" in file_values:  # likewise
            model_aliases: dict[str, str] = values["model_aliases"]  # type: ignore[assignment]
            values["model_aliases"] = {**file_values.pop("model_aliases"), **model_aliases}
        if "providers" in file_values:
            values["upstreams"] = _configured_credentials(
                file_values.pop("providers"),
                values["upstreams"],  # type: ignore[arg-type]
                env,
            )
        values.update(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_exposure(settings)
    try:
        check_files(settings.ssl_certfile, settings.ssl_keyfile)
    except TlsFileError as exc:
        raise ConfigError(exc.setting, str(exc)) from None
    return settings


def _fraction(raw: str) -> float:
    value = float(raw.rstrip("%")) / (100 if raw.endswith("%") else 1)
    if not 0 < value <= 1:
        raise ValueError("must be a fraction above 0 and at most 1 (0.8 or 80%)")
    return value


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _chat_settings(env: Mapping[str, str]) -> ChatSettings:
    heartbeat = _parse(env, "SLUICE_HEARTBEAT_INTERVAL", 15.0, _non_negative_float)
    return ChatSettings(
        grace=_parse(env, "SLUICE_CHAT_GRACE", 10.0, _non_negative_float),
        retention=_parse(env, "SLUICE_CHAT_RETENTION", 300.0, _positive_float),
        max_events=_parse(env, "SLUICE_CHAT_MAX_EVENTS", 10_000, _int_between(100, 10_000_000)),
        heartbeat_interval=_parse(env, "SLUICE_CHAT_HEARTBEAT_INTERVAL", heartbeat, _non_negative_float),
        aliases=_parse(env, "SLUICE_CHAT_ALIASES", {}, _aliases),
    )


# A model name as the chat API accepts it (proxy.chat.request uses this too).
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ALIAS_TARGET = re.compile(rf"({'|'.join(PROVIDERS)})/{MODEL_NAME}")


def _aliases(raw: str) -> dict[str, str]:
    """``name=provider/model`` pairs, separated by commas."""
    pairs = [part.partition("=") for part in raw.split(",") if part.strip()]
    return _check_aliases({name.strip(): target.strip() for name, _, target in pairs})


def _check_aliases(aliases: Mapping[str, object]) -> dict[str, str]:
    for name, target in aliases.items():
        if not _ALIAS_NAME.fullmatch(name):
            raise ValueError(f"alias name {name!r} must be letters, digits, '.', '_' or '-'")
        if not isinstance(target, str) or not _ALIAS_TARGET.fullmatch(target):
            raise ValueError(f"alias {name!r} must name provider/model (openai, gemini or anthropic)")
    return {name: str(target) for name, target in aliases.items()}


_NO_ALIASES: dict[str, str] = {}

# A single server, or a Redis Cluster (any one node): see proxy/redisconn.py.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in REDIS_SCHEMES:
        raise ValueError("must be a redis://, rediss://, unix:// or redis+cluster:// URL")
    return raw


def _load_config_file(path: Path) -> dict[str, Any]:
    """The TOML file holds what env vars express badly: the middleware chain and its options."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("SLUICE_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("SLUICE_CONFIG", f"{path} is not valid TOML: {exc}") from None
    middleware = data.get("middleware", {})
    chat = data.get("chat", {})
    models = data.get("models", {})
    sections = {"middleware", "chat", "models", "providers", "prices"}
    unknown = set(data) - sections | set(middleware) - {"chain", "options"}
    unknown |= {f"chat.{name}" for name in set(chat) - {"aliases"}} if isinstance(chat, dict) else set()
    unknown |= {f"models.{name}" for name in set(models) - {"aliases"}} if isinstance(models, dict) else set()
    if unknown:
        raise ConfigError("SLUICE_CONFIG", f"unknown entries in {path}: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if "prices" in data:
        from .spend.rates import parse_price_overrides  # config is imported before the context it needs

        try:
            values["prices"] = parse_price_overrides(data["prices"])
        except ValueError as exc:
            raise ConfigError("SLUICE_CONFIG", str(exc)) from None
    if "providers" in data:
        values["providers"] = data["providers"]  # read with the environment, in load_settings
    if "aliases" in chat:
        if not isinstance(chat["aliases"], dict):
            raise ConfigError("SLUICE_CONFIG", "chat.aliases must map a name to a provider/model string")
        try:
            values["chat_aliases"] = _check_aliases(chat["aliases"])
        except ValueError as exc:
            raise ConfigError("SLUICE_CONFIG", f"chat.aliases: {exc}") from None
    if isinstance(models, dict) and "aliases" in models:
        if not isinstance(models["aliases"], dict):
            raise ConfigError("SLUICE_CONFIG", "models.aliases must map a name to a provider/model string")
        try:
            values["model_aliases"] = _check_aliases(models["aliases"])
        except ValueError as exc:
            raise ConfigError("SLUICE_CONFIG", f"models.aliases: {exc}") from None
    if "chain" in middleware:
        chain = middleware["chain"]
        if not isinstance(chain, list) or not all(isinstance(c, str) and c for c in chain):
            raise ConfigError("SLUICE_CONFIG", "middleware.chain must be a list of names or import paths")
        values["chain"] = tuple(chain)
    options = middleware.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError("SLUICE_CONFIG", "middleware.options must map a middleware to a table of options")
    values["middleware_options"] = options
    return values


def _configured_credentials(
    providers: Any, upstreams: Mapping[ProviderName, Upstream], env: Mapping[str, str]
) -> dict[ProviderName, Upstream]:
    """``[[providers.<name>.credentials]]`` replace that provider's credentials from the environment."""
    if not isinstance(providers, dict) or set(providers) - set(PROVIDERS):
        raise ConfigError("SLUICE_CONFIG", f"providers must be a table with any of {', '.join(PROVIDERS)}")
    result = dict(upstreams)
    for name, table in providers.items():
        if not isinstance(table, dict) or set(table) - {"credentials"}:
            raise ConfigError("SLUICE_CONFIG", f"providers.{name} may only hold a credentials list")
        try:
            specs = credentials_from_config(name, table.get("credentials"), env)
        except CredentialError as exc:
            raise ConfigError("SLUICE_CONFIG", str(exc)) from None
        result[name] = dataclasses.replace(upstreams[name], credentials=specs)
    return result


def _check_exposure(settings: Settings) -> None:
    # Without client keys, anyone who can reach Sluice spends the provider
    # keys it holds. Listening beyond loopback without them must be a decision.
    if settings.auth == "on" and not settings.auth_enforced:
        raise ConfigError(
            "SLUICE_KEYS_FILE",
            "SLUICE_AUTH=on needs a keys file or SLUICE_REDIS_URL (create keys with `sluice keys create`)",
        )
    if not is_loopback(settings.host) and settings.auth == "auto" and not settings.auth_enforced:
        raise ConfigError(
            "SLUICE_HOST",
            f"{settings.host!r} is not a loopback address and no client keys are configured; "
            "set SLUICE_KEYS_FILE, or SLUICE_AUTH=off to serve without client authentication",
        )
