"""Compiles the request path with mypyc; everything else is in pyproject.toml.

mypyc turns the type-annotated modules listed below into C extensions; the
``.py`` files ship beside them and are the same code. ``SLUICE_PURE_PYTHON=1``
at build time skips the compiler, and at run time ignores the extensions.
How the build works, what is compiled and why: proxy/http/README.md.
"""

import os
from typing import Any

from setuptools import setup

NATIVE_MODULES = [
    # The transport (proxy/http): the fast server protocol and client.
    "proxy/http/interface.py",
    "proxy/http/h1client.py",
    "proxy/http/h1server.py",
    "proxy/http/wire.py",
    # What every request runs through: the chain, the passthrough, and the
    # modules they call on each request.
    "proxy/accesslog/line.py",
    "proxy/accesslog/writer.py",
    "proxy/body.py",
    "proxy/context.py",
    "proxy/disconnect.py",
    "proxy/dispatch.py",
    "proxy/drain.py",
    "proxy/envelope.py",
    "proxy/errors.py",
    "proxy/forwarded.py",
    "proxy/gate.py",
    "proxy/headers.py",
    "proxy/jsonedit.py",
    "proxy/jsonread.py",
    "proxy/keys.py",
    "proxy/limits/base.py",
    "proxy/limits/headers.py",
    "proxy/limits/memory.py",
    "proxy/metrics.py",
    "proxy/modelpolicy.py",
    "proxy/middleware/access_log.py",
    "proxy/middleware/auth.py",
    "proxy/middleware/model_policy.py",
    "proxy/middleware/rate_limit.py",
    "proxy/passthrough.py",
    "proxy/pool.py",
    "proxy/pump.py",
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
