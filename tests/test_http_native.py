"""The compiled build (setup.py, proxy/http/native.py): used when built, never when stale or refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = "import proxy, proxy.routing as r; print(proxy.http.native.COMPILED, r.__file__)"


def _probe(pythonpath: Path, **env: str) -> tuple[bool, str, str]:
    """(COMPILED, where proxy.routing came from, stderr) in a fresh interpreter."""
    full = {k: v for k, v in os.environ.items() if k != "SLUICE_PURE_PYTHON"}
    full.update(PYTHONPATH=str(pythonpath), **env)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, check=True, cwd=pythonpath
    )
    compiled, origin = done.stdout.split()
    return compiled == "True", origin, done.stderr


def test_the_request_path_runs_compiled() -> None:
    compiled, origin, stderr = _probe(REPO)
    assert compiled, f"proxy/ runs interpreted ({stderr.strip() or 'no extensions built'}): run `make native`"
    assert origin.endswith(".so")


def test_sluice_pure_python_imports_the_py_files() -> None:
    compiled, origin, _ = _probe(REPO, SLUICE_PURE_PYTHON="1")
    assert not compiled
    assert origin == str(REPO / "proxy" / "routing.py")


def test_a_source_edited_after_the_build_runs_interpreted_with_a_warning(tmp_path: Path) -> None:
    # A copy of the checkout: the package with its built extensions, and setup.py.
    shutil.copytree(REPO / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "setup.py", tmp_path / "setup.py")
    newest = max(p.stat().st_mtime for p in (tmp_path / "proxy").rglob("*.so"))
    for path in (tmp_path / "proxy").rglob("*.py"):
        os.utime(path, (newest - 10, newest - 10))  # built after every source
    compiled, origin, stderr = _probe(tmp_path)
    assert compiled and origin.endswith(".so") and not stderr

    # An edit to a module that is not itself compiled still makes the build
    # stale: compiled modules were built against its types.
    edited = tmp_path / "proxy" / "config.py"
    os.utime(edited, (time.time(), time.time()))
    compiled, origin, stderr = _probe(tmp_path)
    assert not compiled
    assert origin == str(tmp_path / "proxy" / "routing.py")
    assert "proxy/config.py changed since the compiled modules were built" in stderr

    # An installed copy (no setup.py beside the package) trusts its extensions:
    # pip writes the files in any order.
    (tmp_path / "setup.py").unlink()
    compiled, origin, stderr = _probe(tmp_path)
    assert compiled and origin.endswith(".so") and not stderr
