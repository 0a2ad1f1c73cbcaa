"""The tracer provider of one worker: sampler, resource, batched OTLP/HTTP export.

Guarantees:

* Export happens off the request path: a span's end only appends it to the
  :class:`BatchSpanProcessor`'s bounded queue (2,048 spans by default); the
  processor's own thread encodes and POSTs batches. A collector that is down
  or slow fills that queue, and what does not fit is dropped: requests never
  wait for it.
* The exporter's complaints about a collector that is down reach the log at
  most once a minute per kind of message (:class:`OncePerInterval`), with a
  count of what was held back, instead of a line per retry of every batch.
* A full queue drops spans without a word: the batch processor's warning
  would be built (and then filtered out) for every span dropped, ~36 µs
  each, on the request path, for as long as the collector is down. The
  exporter's own failures, logged as above, say that it is.
* Nothing here runs at import time of the request path: this module is
  imported only when tracing is on.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as sdk_version

from .settings import TracingSettings

# The loggers whose records are rate-limited: the exporter's retries and
# failures above all.
OTEL_LOGGER = "opentelemetry"
# The batch processor's: "Queue full, dropping Span." for every span dropped.
BATCH_LOGGER = "opentelemetry.sdk._shared_internal"
LOG_INTERVAL = 60.0


def sampler(settings: TracingSettings) -> Sampler:
    """OTEL_TRACES_SAMPLER's sampler, built from the settings rather than by the SDK from os.environ."""
    name = settings.sampler
    root: Sampler
    if name.endswith("traceidratio"):
        root = TraceIdRatioBased(settings.sampler_arg)
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    else:
        root = ALWAYS_ON
    return ParentBased(root) if name.startswith("parentbased_") else root


def resource(settings: TracingSettings, version: str) -> Resource:
    # Resource(...) rather than Resource.create(): the latter reads
    # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME from os.environ itself.
    attributes: dict[str, str | int] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "service.version": version,
        **settings.resource_attributes,
        "service.name": settings.service_name,
        "process.pid": os.getpid(),  # one worker among several
    }
    return Resource(attributes)


def build_provider(settings: TracingSettings, version: str) -> tuple[TracerProvider, BatchSpanProcessor]:
    """A provider exporting to ``settings.endpoint``; call in the worker process that uses it."""
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=dict(settings.headers),
        compression=Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression,
    )
    processor = BatchSpanProcessor(exporter)
    # shutdown_on_exit=False: Sluice shuts it down itself, with a bound
    # (tracing.Tracing.shutdown); the SDK's atexit hook would wait up to 30 s
    # for a collector that is down.
    provider = TracerProvider(
        sampler=sampler(settings), resource=resource(settings, version), shutdown_on_exit=False
    )
    provider.add_span_processor(processor)
    quiet_exporter_logs()
    return provider, processor


class OncePerInterval(logging.Filter):
    """Lets one record of each kind (logger and message template) through per ``interval`` seconds.

    The next one let through says how many like it were held back. Thread
    safe: the batch processor's thread logs, and so may the event loop's.
    """

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}  # kind -> (last shown, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            shown, held = self._seen.get(kind, (-self.interval, 0))
            if now - shown < self.interval:
                self._seen[kind] = (shown, held + 1)
                return False
            self._seen[kind] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval:g} s not shown)"
        return True


def quiet_exporter_logs() -> None:
    """Route the SDK's own log records through a rate-limited handler, once per process.

    A handler filter (not a logger filter) sees the records of every child
    logger (``opentelemetry.exporter.otlp…``, ``opentelemetry.sdk…``). The
    handler writes where Sluice's own log goes, in the same format.
    """
    otel = logging.getLogger(OTEL_LOGGER)
    if any(isinstance(f, OncePerInterval) for h in otel.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    for sluice_handler in logging.getLogger("sluice").handlers:
        handler.setFormatter(sluice_handler.formatter)
        if isinstance(sluice_handler, logging.StreamHandler):
            handler.setStream(sluice_handler.stream)
        break
    handler.addFilter(OncePerInterval())
    otel.addHandler(handler)
    otel.setLevel(logging.WARNING)
    otel.propagate = False
    # Its warnings are not even made (the level is checked before a record is).
    logging.getLogger(BATCH_LOGGER).setLevel(logging.ERROR)
