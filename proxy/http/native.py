"""Which of Sluice's modules run compiled, and never a stale compiled copy.

``setup.py`` has mypyc compile the modules every request runs through into C
extensions (``README.md`` beside this module); Python imports such an extension in
preference to the ``.py`` beside it. Two cases must not run it:

- ``SLUICE_PURE_PYTHON=1``: the interpreted code is wanted (debugging,
  profiling line by line, the test suite's pure-Python pass);
- in a source checkout, a ``.py`` edited after the build: the extension would
  run the old code. ``make`` rebuilds before it runs anything, but a plain
  ``python -m proxy`` or ``pytest`` after an edit would not.

In both cases the ``.py`` files are imported instead, through a finder placed
ahead of the standard ones; the second case also warns. This module is
imported first by ``proxy/http/__init__.py`` (which ``proxy/__init__.py``
imports), before any compiled module can be.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent.parent  # proxy/
# A checkout has setup.py beside the package; an installed wheel does not (its
# files' times are when pip wrote them, and say nothing about staleness).
CHECKOUT = (PACKAGE.parent / "setup.py").is_file()
# Longest first: ".so" also ends "x.cpython-311-x86_64-linux-gnu.so".
_SUFFIXES = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)


def _extensions() -> dict[str, tuple[Path, Path]]:
    """Compiled module name -> (its extension, the ``.py`` it was built from).

    One walk of the package, at every start-up of every worker. mypyc's
    runtime library (``_native__mypyc``) has no ``.py`` and is left out.
    """
    found: dict[str, tuple[Path, Path]] = {}
    for path in PACKAGE.rglob("*"):
        suffix = next((s for s in _SUFFIXES if path.name.endswith(s)), None)
        if suffix is None:
            continue
        stem = path.name[: -len(suffix)]
        source = path.with_name(stem + ".py")
        if source.is_file():
            found[".".join((*path.parent.relative_to(PACKAGE.parent).parts, stem))] = (path, source)
    return found


def _stale(modules: dict[str, tuple[Path, Path]]) -> list[str]:
    """Sources under ``proxy/`` changed since the oldest extension was built.

    Any source, not only the compiled ones': mypyc compiles against the types
    of the modules a compiled one imports.
    """
    built = min(extension.stat().st_mtime for extension, _ in modules.values())
    return sorted(
        str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if p.stat().st_mtime > built
    )


class _Interpreted(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their ``.py`` files, ahead of their extensions."""

    def __init__(self, modules: dict[str, tuple[Path, Path]]) -> None:
        self.sources = {name: source for name, (_, source) in modules.items()}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def _choose() -> bool:
    modules = _extensions()
    if not modules:
        return False
    refused = os.environ.get("SLUICE_PURE_PYTHON", "") not in ("", "0")
    stale = _stale(modules) if CHECKOUT and not refused else []
    if stale:
        warnings.warn(
            f"{', '.join(stale[:3])}{' …' if len(stale) > 3 else ''} changed since the compiled modules "
            "were built; running the .py files interpreted. `make` rebuilds them.",
            RuntimeWarning,
            stacklevel=3,
        )
    if refused or stale:
        sys.meta_path.insert(0, _Interpreted(modules))
        return False
    return True


COMPILED: bool = _choose()
"""Whether the compiled modules are in use (the start-up banner says so)."""
