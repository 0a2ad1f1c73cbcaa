"""Compiles part of the request path with mypyc; everything else is in pyproject.toml.

mypyc turns the type-annotated modules below into C extensions. They are the
synchronous ones every request runs through: header rewriting, routing, the
usage tap, SSE framing, metrics, key lookup. Compiled, they cut the
instructions Sluice spends per request by about a tenth (README, "Compiled
modules"). The ``.py`` files ship beside them and are the same code:
``SLUICE_PURE_PYTHON=1`` at build time skips the compiler, and at run time
ignores the extensions (proxy/native.py).

Not compiled:

- the coroutine modules (h1server, h1client, passthrough, the middleware).
  Compiled too they cut another quarter (383 k -> 284 k), but a mypyc
  coroutine that handled an exception and then awaited uvloop's
  ``create_connection`` crashed the worker: uvloop's Cython coroutine found
  ``None`` as its saved exception and dereferenced it (README, "Compiled
  modules"). Until that is understood, no compiled coroutine runs under
  uvloop.
- ``context``: custom layers may store values of other types in a
  ``RequestContext``, which a compiled class would refuse with TypeError.
- start-up and admin code (config, cli, app, services, the mock, the chat
  API), which gains nothing.
"""

import os
from typing import Any

from setuptools import setup

NATIVE_MODULES = [
    "proxy/drain.py",
    "proxy/forwarded.py",
    "proxy/headers.py",
    "proxy/keys.py",
    "proxy/limits/headers.py",
    "proxy/metrics.py",
    "proxy/routing.py",
    "proxy/sse.py",
    "proxy/usage.py",
]


def _ext_modules() -> list[Any]:
    if os.environ.get("SLUICE_PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    # One group: the modules call each other natively and share one runtime
    # library, placed inside the package as proxy/_native__mypyc. pip builds
    # in an isolated environment without Sluice's dependencies: mypyc then
    # treats their types as Any, which compiles to the same behaviour.
    options = ["--ignore-missing-imports", "--no-warn-return-any", "--allow-subclassing-any"]
    return mypycify([*options, *NATIVE_MODULES], opt_level="3", group_name="proxy._native")


setup(ext_modules=_ext_modules())
