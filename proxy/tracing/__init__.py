"""OpenTelemetry traces: a server span per request, a client span per upstream attempt.

Off unless an OTLP endpoint is configured (``settings.py``). When on, each
worker builds a :class:`~proxy.tracing.worker.Tracing` at start-up (``services.py``): its tracer
provider (``provider.py``: sampler, resource, batched OTLP/HTTP export in a
thread of its own), the server-span layer the chain puts just inside the
Gate (``layer.py``) and the wrapper around the upstream client
(``client.py``). With tracing off none of them exists: no layer in the
chain, no wrapper around the client, no OpenTelemetry import.

Attribute names and values: ``names.py``. This package's ``__init__`` imports
nothing: ``config.py`` imports ``settings.py`` whether tracing is on or not.
"""
