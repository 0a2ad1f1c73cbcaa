"""What machine, and what software, a benchmark ran on: the header of every report."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .paths import sluice_env

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return float("nan")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    try:
        done = subprocess.run(  # noqa: S603
            argv, capture_output=True, text=True, timeout=10, cwd=cwd, check=False, env=env
        )
    except OSError:
        return "unavailable"
    return (done.stdout + done.stderr).strip()


def _virtualised() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    return "yes (hypervisor flag set)" if " hypervisor" in flags else "no hypervisor flag"


def _sluice_compiled() -> bool | None:
    """Whether the Sluice processes will run the compiled request path.

    The check ``proxy/http/native.py`` makes at import, in the environment the
    bench gives Sluice: an edit since the last build runs the ``.py`` files,
    about twice as slow, with only a warning in the process's own log.
    """
    env = sluice_env(0, "off", None)  # the environment Sluice's processes get
    probe = "import proxy.http.native as n; print(n.COMPILED)"
    out = _run([sys.executable, "-W", "ignore", "-c", probe], env)
    return {"True": True, "False": False}.get(out.splitlines()[-1] if out else "")


def facts() -> dict[str, Any]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    dirty = _run(["git", "status", "--porcelain", "--", "proxy"])
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "nproc_is_2": os.cpu_count() == 2,
        "virtualised": _virtualised(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": _version("uvloop"),
        "aiohttp": _version("aiohttp"),
        "uvicorn": _version("uvicorn"),
        "starlette": _version("starlette"),
        "httptools": _version("httptools"),
        "nginx": _run(["nginx", "-v"]).removeprefix("nginx version: "),
        "rlimit_nofile": list(nofile),
        "sluice_commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "sluice_compiled": _sluice_compiled(),
        "sluice_proxy_uncommitted_files": len(dirty.splitlines()) if dirty != "unavailable" else None,
    }


def baseline_facts(tree: Path) -> dict[str, Any]:
    """Which commit the ``sluice@baseline`` path runs (``--baseline-tree``).

    Whether it runs compiled is checked in the started process itself
    (``paths.start_sluice``), not by importing anything here: its modules
    live at other paths than this tree's.
    """
    dirty = _run(["git", "status", "--porcelain", "--", "proxy"], cwd=tree)
    return {
        "baseline_tree": str(tree),
        "baseline_commit": _run(["git", "rev-parse", "--short", "HEAD"], cwd=tree),
        "baseline_subject": _run(["git", "log", "-1", "--format=%s"], cwd=tree),
        "baseline_proxy_uncommitted_files": len(dirty.splitlines()) if dirty != "unavailable" else None,
    }
