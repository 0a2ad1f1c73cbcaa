"""Prometheus metrics, in the text exposition format.

A few dozen lines instead of ``prometheus_client``: one event loop per
process means no locks, and recording a request is a handful of dict updates.
Values are per process; with several workers each one answers ``/metrics``
for itself (README, "Metrics and health").

Label values are provider names, outcomes, status codes and client *key
names*: never a secret, and bounded by configuration, not by traffic.
"""

from __future__ import annotations

from .context import RequestContext, Usage

LabelValues = tuple[str, ...]

# Seconds. LLM requests span milliseconds (errors, cached) to many minutes.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: LabelValues, values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


class _Value:
    """One label set of a counter or gauge.

    A cell per label set, not a float per key in a dict: an update is one
    dict lookup, where ``values[labels] += 1`` looks the tuple up twice.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: LabelValues = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.cells: dict[LabelValues, _Value] = {}

    def _cell(self, labels: LabelValues) -> _Value:
        cell = self.cells.get(labels)
        if cell is None:
            cell = self.cells[labels] = _Value()
        return cell

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        self._cell(labels).value += amount

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, labels)} {_number(cell.value)}"
            for labels, cell in sorted(self.cells.items(), key=lambda item: item[0])
        ]


class Gauge(Counter):
    kind = "gauge"

    def dec(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        self._cell(labels).value -= amount


class _Cell:
    """One label set of a histogram: a count per bucket (the +Inf bucket last), and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class Histogram:
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: LabelValues = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self.cells: dict[LabelValues, _Cell] = {}

    def observe(self, value: float, labels: LabelValues = ()) -> None:
        # A scan, not bisect: most requests end in the first buckets, and the
        # scan finds what bisect_left would (a value equal to a bound counts
        # in that bound's bucket).
        cell = self.cells.get(labels)
        if cell is None:
            cell = self.cells[labels] = _Cell(len(self.buckets) + 1)
        buckets = self.buckets
        i, n = 0, len(buckets)
        while i < n and buckets[i] < value:
            i += 1
        cell.counts[i] += 1
        cell.total += value

    def samples(self) -> list[str]:
        lines = []
        for labels, cell in sorted(self.cells.items(), key=lambda item: item[0]):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), cell.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                bucket_labels = _labels(self.label_names, labels, f'le="{le}"')
                lines.append(f"{self.name}_bucket{bucket_labels} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(cell.total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {running}")
        return lines


class Metrics:
    """Every metric Sluice exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "sluice_requests_total",
            "Requests handled, by provider, status and outcome.",
            ("provider", "status", "outcome"),
        )
        self.in_flight = Gauge(
            "sluice_in_flight_requests", "Requests (and streams) in progress.", ("provider",)
        )
        self.ttfb = Histogram(
            "sluice_time_to_first_byte_seconds",
            "From request start to the first response body byte.",
            ("provider",),
        )
        self.duration = Histogram(
            "sluice_request_duration_seconds", "From request start to its end.", ("provider",)
        )
        self.tokens = Counter(
            "sluice_tokens_total",
            "Tokens the providers reported, by provider, key and direction.",
            ("provider", "key", "direction"),
        )
        # Requests per client key: sluice_requests_total has no key label, and
        # the dashboard shows requests per key. Empty key: no client key known.
        self.key_requests = Counter(
            "sluice_key_requests_total", "Requests by client key name and outcome.", ("key", "outcome")
        )
        self.upstream_errors = Counter(
            "sluice_upstream_errors_total", "Upstream failures, by provider and kind.", ("provider", "kind")
        )
        self.rate_limited = Counter(
            "sluice_rate_limited_total", "Requests refused by a per-key limit.", ("key", "limit")
        )
        self.auth_rejections = Counter(
            "sluice_auth_rejections_total", "Requests refused by client authentication.", ("reason",)
        )
        self.failovers = Counter(
            "sluice_credential_failovers_total",
            "Server-held credentials taken out of use, by provider, label and reason (401, 403, 429, token).",
            ("provider", "label", "reason"),
        )
        self.limiter_errors = Counter(
            "sluice_limiter_errors_total", "Rate-limit backend failures, by the policy applied.", ("policy",)
        )
        # Realtime sessions (WebSockets, proxy/realtime): counted apart from
        # requests, so a session of minutes does not skew request latency.
        self.sessions_open = Gauge("sluice_realtime_sessions", "Realtime sessions open.", ("provider",))
        self.sessions = Counter(
            "sluice_realtime_sessions_total",
            "Realtime sessions ended, by provider, outcome and close code.",
            ("provider", "outcome", "close_code"),
        )
        self.session_messages = Counter(
            "sluice_realtime_messages_total",
            "Realtime messages relayed, by provider and direction (in: client to upstream).",
            ("provider", "direction"),
        )
        self.session_bytes = Counter(
            "sluice_realtime_bytes_total", "Realtime message bytes relayed.", ("provider", "direction")
        )
        # Spend (proxy/spend): priced at each request's end.
        self.spend = Counter(
            "sluice_spend_usd_total", "What requests cost, in USD, by key, provider and model.",
            ("key", "provider", "model"),
        )  # fmt: skip
        self.unpriced = Counter(
            "sluice_unpriced_requests_total",
            "Requests that reported usage for a model with no known price (cost_usd null).",
            ("provider", "model"),
        )
        self.spend_store_errors = Counter(
            "sluice_spend_store_errors_total", "Spend store failures (kept in memory, retried).", ("op",)
        )
        self._all = (
            self.requests, self.in_flight, self.ttfb, self.duration, self.tokens,
            self.upstream_errors, self.rate_limited, self.auth_rejections, self.limiter_errors,
            self.failovers, self.key_requests,
            self.sessions_open, self.sessions, self.session_messages, self.session_bytes,
            self.spend, self.unpriced, self.spend_store_errors,
        )  # fmt: skip

    def request_started(self, ctx: RequestContext) -> str:
        """Count the request in flight; returns the label to end it with.

        Sluice's own API learns the provider from the body, after this point:
        ending under the same label keeps the gauge from drifting.
        """
        label = ctx.provider or "none"
        self.in_flight.inc((label,))
        return label

    def request_ended(self, ctx: RequestContext, now: float, in_flight_label: str) -> None:
        provider = ctx.provider or "none"
        by_provider = (provider,)
        self.in_flight.dec((in_flight_label,))
        self.requests.inc((provider, str(ctx.status or 0), ctx.outcome))
        self.key_requests.inc((ctx.key_name or "", ctx.outcome))
        self.duration.observe(now - ctx.started, by_provider)
        if ctx.ttfb is not None:
            self.ttfb.observe(ctx.ttfb, by_provider)
        if ctx.outcome == "upstream_error":
            self.upstream_errors.inc((provider, ctx.detail or "unknown"))
        if ctx.usage is not None:
            self.count_tokens(provider, ctx.key_name or "", ctx.usage)

    def session_started(self, provider: str) -> None:
        self.sessions_open.inc((provider,))

    def session_ended(
        self,
        ctx: RequestContext,
        frames_in: int,
        frames_out: int,
        close_code: int | None,
        started_label: str,
    ) -> None:
        """A realtime session's end: its count, messages, bytes and tokens."""
        provider = ctx.provider or "none"
        self.sessions_open.dec((started_label,))
        self.sessions.inc((provider, ctx.outcome, str(close_code or 0)))
        if frames_in:
            self.session_messages.inc((provider, "in"), frames_in)
            self.session_bytes.inc((provider, "in"), ctx.bytes_in)
        if frames_out:
            self.session_messages.inc((provider, "out"), frames_out)
            self.session_bytes.inc((provider, "out"), ctx.bytes_out)
        if ctx.usage is not None:
            self.count_tokens(provider, ctx.key_name or "", ctx.usage)

    def count_tokens(self, provider: str, key: str, usage: Usage) -> None:
        if usage.input_tokens:
            self.tokens.inc((provider, key, "input"), usage.input_tokens)
        if usage.output_tokens:
            self.tokens.inc((provider, key, "output"), usage.output_tokens)

    def render(self) -> str:
        out: list[str] = []
        for metric in self._all:
            out.append(f"# HELP {metric.name} {metric.help}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            out.extend(metric.samples())
        return "\n".join(out) + "\n"
