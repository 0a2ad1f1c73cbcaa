"""Run a script of tests/js with node and the official JavaScript SDKs.

Each script reads its inputs from the environment (``SLUICE_URL``,
``SLUICE_KEY`` and whatever else it names) and prints one JSON document on
stdout: what the SDK yielded. The test compares that with what the mock
scripted. The SDKs are installed by ``make test`` (``npm ci`` in tests/js,
pinned by its package-lock.json); in CI a missing node is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).parent / "js"


def require_node() -> str:
    node = shutil.which("node")
    installed = (JS_DIR / "node_modules" / ".installed").exists() or (JS_DIR / "node_modules").is_dir()
    if node and installed:
        return node
    reason = "node or tests/js/node_modules missing (make test installs them)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run_node(script: str, timeout: float = 30.0, **env: str) -> Any:
    """Run ``tests/js/<script>`` and return the JSON it printed; its stderr is the failure message."""
    node = require_node()
    done = subprocess.run(
        [node, str(JS_DIR / script)],
        cwd=JS_DIR,
        env={"PATH": os.environ.get("PATH", ""), "NODE_NO_WARNINGS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"node {script} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
