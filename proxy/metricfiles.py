"""Metrics shared across workers: a file per worker and kind, merged at each scrape.

With ``--workers N`` a connection, and so a ``/metrics`` scrape, lands on
any one worker. So that one scrape describes the whole instance, every
worker mirrors each value it records into a file of its own in one
directory (``SLUICE_METRICS_DIR``; by default a private temporary directory
``sluice serve`` makes at start and removes at exit), and the worker that
answers a scrape reads them all.

The files are ``prometheus_client``'s multiprocess format (its
``mmap_dict``: a used-length header, then entries of a JSON key and two
doubles), named as its ``MultiProcessCollector`` expects
(``counter_<id>.db``, ``histogram_<id>.db``, ``gauge_livesum_<id>.db``,
``gauge_livemax_<id>.db``), and
the scrape merges them with that collector's own ``merge``. Sluice writes
them itself (:class:`SlotFile`) because the request path must stay cheap:
prometheus_client's writer looks each key up and packs a struct per update,
where a Sluice cell stores one double straight into the mapping
(``proxy/metrics.py``; the cost is measured in bench/README.md).

Guarantees:

* Counters and histograms are summed over every file, those of workers that
  have exited included: a worker that dies or is restarted by the
  supervisor keeps its contribution, so no counter goes backwards while the
  instance runs. Each worker process gets fresh files under a new id, never
  a predecessor's, even if the pid is reused.
* ``gauge_livesum`` gauges (requests in flight) are summed over the workers
  alive now; ``gauge_livemax`` ones (a credential's cool-down end) take the
  largest value of the workers alive now. A worker holds a shared ``flock`` on each of its files for its
  whole life; the kernel drops it when the process ends, however it ends. A
  scrape that can take the lock exclusively has found a dead worker's
  gauge file: it drops the values and deletes the file.
* A value is written as one aligned 8-byte store, and a new entry is
  complete before the header counts it, so a scrape never reads a torn or
  half-made value.
* The directory is cleaned at start (Sluice's files removed, told by their
  names; anything else there is neither removed nor read), so a previous
  run never leaks into the counts; a directory another running Sluice
  still writes to is refused (:func:`prepare_dir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import secrets
import shutil
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from .metrics import Counter, Histogram, LabelValues

_INITIAL_SIZE = 1 << 16  # as prometheus_client's own files start
_USED = struct.Struct("i")  # the header: bytes in use, then 4 bytes of padding
_ENTRY_HEAD = struct.Struct("i")  # each entry: the key's length, the key padded to 8 bytes, two doubles
_NOT_SHARED = "local"  # a gauge's mode for values the answering worker sets itself
# What SlotFile names its files (without the suffix): kind, pid, a random part.
_FILE_NAME = re.compile(r"(counter|histogram|gauge_[a-z]+)_[0-9]+-[0-9a-f]+")


class SlotFile:
    """One worker's file of one kind: entries appended, values written in place.

    Not thread-safe; one event loop per process writes it.
    """

    def __init__(self, path: Path) -> None:
        # Made under a name the scrape does not read, locked, then renamed:
        # a scrape never finds it unlocked and takes it for a dead worker's.
        partial = path.with_suffix(".tmp")
        self.file: IO[bytes] = partial.open("w+b")
        fcntl.flock(self.file.fileno(), fcntl.LOCK_SH)  # held until this process ends
        self.file.truncate(_INITIAL_SIZE)
        self.capacity = _INITIAL_SIZE
        self.map = mmap.mmap(self.file.fileno(), self.capacity)
        self.view = memoryview(self.map).cast("d")
        self.used = 8
        _USED.pack_into(self.map, 0, self.used)
        os.rename(partial, path)

    def add(self, keys: list[str]) -> tuple[memoryview[float], list[int]]:
        """Append an entry per key (value 0); the view and each value's index in it."""
        entries = []
        for key in keys:
            encoded = key.encode("utf-8")
            padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
            entries.append(_ENTRY_HEAD.pack(len(encoded)) + padded + bytes(16))
        size = sum(len(e) for e in entries)
        if self.used + size > self.capacity:
            self._grow(self.used + size)
        indexes = []
        for entry in entries:
            self.map[self.used : self.used + len(entry)] = entry
            self.used += len(entry)
            indexes.append((self.used - 16) // 8)
        # Counted only once complete: a reader stops at the header's length.
        _USED.pack_into(self.map, 0, self.used)
        return self.view, indexes

    def _grow(self, needed: int) -> None:
        # Cells made earlier keep their view of the old mapping: the same
        # file's pages, so their writes still land where a scrape reads.
        while self.capacity < needed:
            self.capacity *= 2
        self.file.truncate(self.capacity)
        self.map = mmap.mmap(self.file.fileno(), self.capacity)
        self.view = memoryview(self.map).cast("d")


class WorkerFiles:
    """This process's files in the shared directory, one per kind, made on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # The pid says whose it is; the random part keeps a reused pid off a dead worker's files.
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.files: dict[str, SlotFile] = {}
        self.scratch = memoryview(bytearray(8)).cast("d")

    def slots(self, kind: str, keys: list[str]) -> tuple[memoryview[float], list[int]]:
        if kind == _NOT_SHARED:
            return self.scratch, [0] * len(keys)
        file = self.files.get(kind)
        if file is None:
            file = self.files[kind] = SlotFile(self.directory / f"{kind}_{self.id}.db")
        return file.add(keys)


def prepare_dir(configured: Path | None) -> tuple[Path, bool]:
    """The directory for this run, emptied of old files; True when it is ours to remove at exit.

    Raises ``ValueError`` when a running process still holds one of its files.
    """
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="sluice-metrics-")), True  # mode 0700
    configured.mkdir(parents=True, exist_ok=True)
    for name in _own_files(configured, (".db", ".tmp")):
        if _alive(name):
            raise ValueError(f"{configured} is in use by another running Sluice; give each its own")
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
    return configured, False


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _own_files(directory: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Sluice's files in ``directory``, by their names: anything else there is left alone."""
    return sorted(
        str(path)
        for path in directory.iterdir()
        if path.suffix in suffixes and _FILE_NAME.fullmatch(path.stem) is not None
    )


def _alive(path: str) -> bool:
    """Whether the process that made this file still runs (it holds a lock on it)."""
    try:
        with open(path, "rb") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def _readable_files(directory: Path) -> list[str]:
    """Every file to merge: all counters and histograms; the gauge files of live workers only."""
    files = []
    for name in _own_files(directory, (".db",)):
        if os.path.basename(name).startswith("gauge_live") and not _alive(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)  # a dead worker's gauges: what it had in flight ended with it
            continue
        files.append(name)
    return files


def merged_samples(directory: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every worker's samples, combined by prometheus_client's merge, by sample name.

    Histogram buckets stay per bucket (not cumulative), as they are filed.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    files = _readable_files(directory)
    for family in MultiProcessCollector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append((sample.labels, sample.value))
    return by_name


def render_shared(metrics: Iterable[Counter | Histogram], directory: Path) -> str:
    """``/metrics`` for the whole instance, in the same text as one process's own."""
    merged = merged_samples(directory)
    out: list[str] = []
    for metric in metrics:
        out.append(f"# HELP {metric.name} {metric.help}")
        out.append(f"# TYPE {metric.name} {metric.kind}")
        if isinstance(metric, Histogram):
            out.extend(metric.lines(_histogram_values(metric, merged)))
        elif metric.mode == _NOT_SHARED:
            out.extend(metric.samples())
        else:
            found = merged.get(metric.name, [])
            out.extend(metric.lines({_label_values(metric.label_names, ls): v for ls, v in found}))
    return "\n".join(out) + "\n"


def _label_values(names: LabelValues, labels: dict[str, str]) -> LabelValues:
    return tuple(labels.get(name, "") for name in names)


def _histogram_values(
    metric: Histogram, merged: dict[str, list[tuple[dict[str, str], float]]]
) -> dict[LabelValues, tuple[list[int], float]]:
    position = {float(le): i for i, le in enumerate(metric.bounds())}
    values: dict[LabelValues, Any] = {}
    size = len(metric.buckets) + 1
    for labels, value in merged.get(f"{metric.name}_bucket", []):
        cell = values.setdefault(_label_values(metric.label_names, labels), ([0] * size, 0.0))
        cell[0][position[float(labels["le"])]] += int(value)
    for labels, value in merged.get(f"{metric.name}_sum", []):
        counts, _ = values.get(_label_values(metric.label_names, labels), ([0] * size, 0.0))
        values[_label_values(metric.label_names, labels)] = (counts, value)
    return values
