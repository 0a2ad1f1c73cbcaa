"""Compiles the request path with mypyc; everything else is in pyproject.toml.

mypyc turns the type-annotated modules below into C extensions: the server
and upstream protocols, the passthrough, the middleware and the helpers they
call. Compiled, with the changes that compiling made worth finding, they
halve the instructions Sluice spends per request (README, "Compiled
modules"). The ``.py`` files ship beside them and are the same code:
``SLUICE_PURE_PYTHON=1`` at build time skips the compiler, and at run time
ignores the extensions (proxy/native.py).

Compiled coroutines need Sluice's event loop (proxy/eventloop.py): they
hand an exception thrown into them down the await chain as one being
handled, and a uvloop coroutine started meanwhile could crash on Python 3.11.

``context`` is compiled too: every layer reads and writes the request's
``RequestContext``, and a compiled module reads an interpreted class's
field through a generic attribute lookup (~190 instructions). Its fields
are then typed at run time: a custom layer that stores a value of another
type gets a TypeError at that line.

Not compiled:

- ``credentials``: its frozen dataclasses are pickled to worker processes,
  which mypyc's cannot be.
- ``eventloop``: it subclasses uvloop's loop, which mypyc cannot.
- start-up and admin code (config, cli, app, services, vertex, the mock, the
  chat API), which gains nothing.
"""

import os
from typing import Any

from setuptools import setup

NATIVE_MODULES = [
    "proxy/accesslog/line.py",
    "proxy/accesslog/writer.py",
    "proxy/body.py",
    "proxy/context.py",
    "proxy/dispatch.py",
    "proxy/drain.py",
    "proxy/errors.py",
    "proxy/forwarded.py",
    "proxy/gate.py",
    "proxy/h1client.py",
    "proxy/h1server.py",
    "proxy/headers.py",
    "proxy/jsonread.py",
    "proxy/keys.py",
    "proxy/limits/base.py",
    "proxy/limits/headers.py",
    "proxy/limits/memory.py",
    "proxy/metrics.py",
    "proxy/middleware/access_log.py",
    "proxy/middleware/auth.py",
    "proxy/middleware/rate_limit.py",
    "proxy/passthrough.py",
    "proxy/pool.py",
    "proxy/pump.py",
    "proxy/routing.py",
    "proxy/sse.py",
    "proxy/upstream.py",
    "proxy/usage.py",
]


def _ext_modules() -> list[Any]:
    if os.environ.get("SLUICE_PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    # One group: the modules call each other natively and share one runtime
    # library, placed inside the package as proxy/_native__mypyc. pip builds
    # in an isolated environment without Sluice's dependencies: mypyc then
    # treats their types as Any, which compiles to the same behaviour (and
    # leaves some of the type checker's `ignore`s unused).
    options = [
        "--ignore-missing-imports",
        "--no-warn-return-any",
        "--allow-subclassing-any",
        "--no-warn-unused-ignores",
    ]
    return mypycify([*options, *NATIVE_MODULES], opt_level="3", group_name="proxy._native")


setup(ext_modules=_ext_modules())
