"""Percentile summaries of latency samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def summary(values: Sequence[float] | np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """p50/p90/p99/p99.9, mean, max and count, multiplied by ``scale`` (e.g. 1e3 for ms)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {"n": 0}
    out = {k: float(np.percentile(arr, q)) * scale for k, q in PERCENTILES.items()}
    out["mean"] = float(arr.mean()) * scale
    out["max"] = float(arr.max()) * scale
    out["n"] = int(arr.size)
    return out
