"""Prometheus metrics, in the text exposition format, added up across workers.

Recording stays a handful of dict updates in the process (one event loop per
process: no locks): each label set's cell keeps its value, and mirrors it
into a *slot*, an 8-byte double in a file the worker shares (one store per
process, ``proxy/metricfiles.py``, in ``prometheus_client``'s multiprocess
file format). A scrape on any worker merges every worker's files, so one
scrape describes the whole instance: counters and histograms summed, over
dead workers too (they never go backwards); gauges by their ``mode``. The
guarantees and the measured cost: ``proxy/metricfiles.py``, bench/README.md.
Without a shared directory (an app built in-process, as some tests do) the
slots are a scratch double and ``/metrics`` is this process's own values.

Label values are provider names, outcomes, status codes and client *key
names*: never a secret, and bounded by configuration, not by traffic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, SupportsIndex

from .context import RequestContext, Usage

LabelValues = tuple[str, ...]


class SlotStore(Protocol):
    """Where cells mirror their values, each value one double of ``view``."""

    def slots(self, kind: str, keys: list[str]) -> tuple[memoryview[float], list[int]]:
        """A view of doubles and, for each key, the index of its slot (made zero if new)."""
        ...


class LocalSlots:
    """No sharing: every slot is one scratch double, written and never read."""

    def __init__(self) -> None:
        self.scratch = memoryview(bytearray(8)).cast("d")

    def slots(self, kind: str, keys: list[str]) -> tuple[memoryview[float], list[int]]:
        return self.scratch, [0] * len(keys)


def slot_key(metric: str, sample: str, names: LabelValues, values: LabelValues, help_text: str) -> str:
    """A slot's key, as ``prometheus_client.mmap_dict.mmap_key`` writes it (json, sorted keys)."""
    labels = dict(zip(names, values, strict=True))
    return json.dumps([metric, sample, labels, help_text], sort_keys=True)


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

    __slots__ = ("index", "value", "view")

    def __init__(self, view: memoryview[float], index: SupportsIndex) -> None:
        self.value = 0.0
        # Kept boxed (a protocol type is an object to mypyc): an int field
        # would be boxed again, a new object past 256, on every store.
        self.view, self.index = view, index

    def add(self, amount: float) -> None:
        value = self.value + amount
        self.value = value
        self.view[self.index] = value  # one aligned 8-byte store: a reader never sees it torn

    def put(self, value: float) -> None:
        self.value = value
        self.view[self.index] = value


_LOCAL = LocalSlots()


class Counter:
    kind = "counter"
    # How a scrape combines the workers' values: the file kind of
    # prometheus_client's multiprocess mode ("counter": summed, dead workers too).
    mode = "counter"

    def __init__(self, name: str, help_text: str, labels: LabelValues = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.cells: dict[LabelValues, _Value] = {}
        self.store: SlotStore = _LOCAL

    def family(self) -> str:
        """The name prometheus_client files a sample under (a counter's without ``_total``)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def _cell(self, labels: LabelValues) -> _Value:
        cell = self.cells.get(labels)
        if cell is None:
            key = slot_key(self.family(), self.name, self.label_names, labels, self.help)
            view, (index,) = self.store.slots(self.mode, [key])
            cell = self.cells[labels] = _Value(view, index)
        return cell

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        self._cell(labels).add(amount)

    def values(self) -> dict[LabelValues, float]:
        return {labels: cell.value for labels, cell in self.cells.items()}

    def lines(self, values: dict[LabelValues, float]) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"
            for labels, value in sorted(values.items(), key=lambda item: item[0])
        ]

    def samples(self) -> list[str]:
        """This process's own series."""
        return self.lines(self.values())


class Gauge(Counter):
    """A gauge; ``mode`` says how a scrape combines the workers' values.

    ``gauge_livesum`` (the default): summed over the workers alive now; a
    dead worker's value is dropped (what it had in flight ended with it).
    ``gauge_livemax``: the largest over the workers alive now.
    ``local``: only the answering worker's own value, never shared (a value
    it sets at scrape time, such as readiness).
    """

    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, labels: LabelValues = (), mode: str = "gauge_livesum"
    ) -> None:
        super().__init__(name, help_text, labels)
        self.mode = mode

    def dec(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        self._cell(labels).add(-amount)

    def set(self, labels: LabelValues, value: float) -> None:
        self._cell(labels).put(value)


class _Cell:
    """One label set of a histogram: a count per bucket (the +Inf bucket last), and the sum."""

    __slots__ = ("counts", "indexes", "total", "view")

    def __init__(self, view: memoryview[float], indexes: list[SupportsIndex]) -> None:
        # A slot per bucket (not cumulative, as prometheus_client files them), then the sum's.
        self.view, self.indexes = view, indexes
        self.counts = [0] * (len(indexes) - 1)
        self.total = 0.0


class Histogram:
    kind = "histogram"
    mode = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: LabelValues = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self.cells: dict[LabelValues, _Cell] = {}
        self.store: SlotStore = _LOCAL

    def bounds(self) -> list[str]:
        """The ``le`` label of each bucket, the +Inf bucket last."""
        return [*(repr(b) for b in self.buckets), "+Inf"]

    def _new_cell(self, labels: LabelValues) -> _Cell:
        names = (*self.label_names, "le")
        bucket = f"{self.name}_bucket"
        keys = [slot_key(self.name, bucket, names, (*labels, le), self.help) for le in self.bounds()]
        keys.append(slot_key(self.name, f"{self.name}_sum", self.label_names, labels, self.help))
        view, indexes = self.store.slots(self.mode, keys)
        cell = self.cells[labels] = _Cell(view, list(indexes))
        return cell

    def observe(self, value: float, labels: LabelValues = ()) -> None:
        # A scan, not bisect: most requests end in the first buckets, and the
        # scan finds what bisect_left would (a value equal to a bound counts
        # in that bound's bucket).
        cell = self.cells.get(labels)
        if cell is None:
            cell = self._new_cell(labels)
        buckets = self.buckets
        i, n = 0, len(buckets)
        while i < n and buckets[i] < value:
            i += 1
        count = cell.counts[i] + 1
        cell.counts[i] = count
        total = cell.total + value
        cell.total = total
        view, indexes = cell.view, cell.indexes
        view[indexes[i]] = float(count)
        view[indexes[n + 1]] = total

    def values(self) -> dict[LabelValues, tuple[list[int], float]]:
        return {labels: (cell.counts, cell.total) for labels, cell in self.cells.items()}

    def samples(self) -> list[str]:
        """This process's own series."""
        return self.lines(self.values())

    def lines(self, values: dict[LabelValues, tuple[list[int], float]]) -> list[str]:
        lines = []
        for labels, (counts, total) in sorted(values.items(), key=lambda item: item[0]):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                bucket_labels = _labels(self.label_names, labels, f'le="{le}"')
                lines.append(f"{self.name}_bucket{bucket_labels} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {running}")
        return lines


class Metrics:
    """Every metric Sluice exports.

    ``shared_dir``: the directory every worker of this instance writes its
    slots to (``SLUICE_METRICS_DIR``, made by ``sluice serve``); None: this
    process's values alone.
    """

    def __init__(self, shared_dir: Path | None = None) -> None:
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
        self.credential_cooldown = Gauge(
            "sluice_credential_cooldown_until_seconds",
            "Unix time until which a server-held credential is out of use (0: in use); "
            "the latest over the live workers.",
            ("provider", "label"),
            mode="gauge_livemax",
        )
        self.ready = Gauge(
            "sluice_ready", "1 when /readyz of the worker answering the scrape says ready, else 0.",
            mode="local",
        )  # fmt: skip
        self._all = (
            self.requests, self.in_flight, self.ttfb, self.duration, self.tokens,
            self.upstream_errors, self.rate_limited, self.auth_rejections, self.limiter_errors,
            self.failovers, self.key_requests,
            self.sessions_open, self.sessions, self.session_messages, self.session_bytes,
            self.spend, self.unpriced, self.spend_store_errors,
            self.credential_cooldown, self.ready,
        )  # fmt: skip
        self.shared_dir = shared_dir
        if shared_dir is not None:
            from .metricfiles import WorkerFiles  # not on the request path

            store: SlotStore = WorkerFiles(shared_dir)
            for metric in self._all:
                metric.store = store

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
        """The text for ``/metrics``: every worker's values combined (or this process's alone)."""
        if self.shared_dir is not None:
            from .metricfiles import render_shared

            return render_shared(self._all, self.shared_dir)
        out: list[str] = []
        for metric in self._all:
            out.append(f"# HELP {metric.name} {metric.help}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            out.extend(metric.samples())
        return "\n".join(out) + "\n"
