"""Writing the results: ``results.json`` (raw + summary), ``results.md`` and the charts."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

from . import charts
from .paths import HARNESS_CORE, PROXY_CORE
from .scenarios import P99_LIMIT_MS, stall_threshold_ms
from .summary import ALWAYS_SHOWN, BASELINE, PATHS, RATIOS, STOCK, WITHIN, summarize


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1 or a == 0:
        return f"{v:.2f}".rstrip("0").rstrip(".") if v == int(v) else f"{v:.2f}"
    return f"{v:.3f}"


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.0%}"


def ratio(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.2f}x"


def _header(meta: dict[str, Any]) -> list[str]:
    dirty = meta.get("sluice_proxy_uncommitted_files")
    commit = f"`{meta['sluice_commit']}`" + (f" + {dirty} uncommitted file(s) in proxy/" if dirty else "")
    mode = "quick (development)" if meta.get("quick") else "full"
    return [
        "# Sluice benchmark results",
        "",
        f"Run {meta['date_utc']}, {mode} mode, took **{meta['duration_s']:.0f} s**. Sluice {commit}.",
        "",
        "| Machine | |",
        "|---|---|",
        f"| CPU | {meta['cpu_model']} |",
        f"| nproc | {meta['nproc']} ({'2, as the issue assumes' if meta['nproc_is_2'] else 'NOT 2'}) |",
        f"| Virtualised | {meta['virtualised']} |",
        f"| Memory | {meta['memory_gib']} GiB |",
        f"| Kernel | {meta['kernel']} |",
        f"| Open-files limit (soft, hard) | {meta['rlimit_nofile'][0]:,}, {meta['rlimit_nofile'][1]:,} |",
        f"| Python | {meta['python']} |",
        f"| uvloop / aiohttp / uvicorn / starlette / httptools | {meta['uvloop']} / {meta['aiohttp']} / "
        f"{meta['uvicorn']} / {meta['starlette']} / {meta['httptools']} |",
        f"| nginx | {meta['nginx']} |",
        f"| Sluice's request path | {_compiled(meta.get('sluice_compiled'))} |",
        *_baseline_header(meta),
        "",
    ]


def _baseline_header(meta: dict[str, Any]) -> list[str]:
    if not meta.get("baseline_tree"):
        return []
    dirty = meta.get("baseline_proxy_uncommitted_files")
    modules = meta.get("baseline_compiled_modules")
    return [
        f"| Baseline (`sluice@baseline`) | `{meta['baseline_commit']}` {meta['baseline_subject']}"
        + (f" + {dirty} uncommitted file(s) in proxy/" if dirty else "")
        # The commit names the code; the checkout's path says nothing to a reader elsewhere.
        + f"; compiled ({modules} of its extension modules loaded, checked in the process) |"
    ]


def _compiled(compiled: bool | None) -> str:
    if compiled is None:
        return "unknown"
    if compiled:
        return "compiled (mypyc)"
    return "**INTERPRETED**: the build is missing or stale (`make native`)"


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Targets", "", "| Target | Figure | Sluice | Result |", "|---|---|---|---|"]
    for r in rows:
        if not r["target"]:
            continue
        key = "sluice+chain" if "chain" in r["metric"] else "sluice"
        shown = r["values"].get(key, math.nan)
        if r.get("quote") == "vs_baseline":
            shown_text = f"{ratio(r['vs_baseline'])} ({fmt(shown)} vs {fmt(r['values'].get(BASELINE))} req/s)"
        elif r["vs_nginx"] == r["vs_nginx"] and "requests/s" in r["metric"]:
            shown_text = f"{fmt(shown)} ({ratio(r['vs_nginx'])} nginx)"
        elif "cost" in r["metric"]:
            shown_text = _pct(shown)
        else:
            shown_text = fmt(shown)
        out.append(f"| {r['target']} | {r['section']}: {r['metric']} | {shown_text} | **{r['status']}** |")
    return [*out, ""]


def _shown(rows: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """A section's columns: the paths with a figure in it, the four of old always; the ratios
    with a value in it, Sluice ÷ direct and ÷ nginx always."""
    present = {p for r in rows for p in r["values"]}
    paths = [p for p in PATHS if p in present or p not in (STOCK, BASELINE)]
    ratios = [
        (attr, head)
        for attr, _, _, head in RATIOS
        if attr in ALWAYS_SHOWN or any(r.get(attr) == r.get(attr) and r.get(attr) is not None for r in rows)
    ]
    return paths, ratios


def _table(rows: list[dict[str, Any]]) -> list[str]:
    out: list[str] = [
        "## All figures",
        "",
        "Medians across rounds; ratios and differences are taken within each round.",
    ]
    notes: list[str] = []
    sections: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        sections.setdefault(r["section"], []).append(r)
    for section, mine in sections.items():
        paths, ratios = _shown(mine)
        head = (
            "| Metric | "
            + " | ".join(paths)
            + " | "
            + " | ".join(h for _, h in ratios)
            + " | Target | Result |"
        )
        out += ["", f"### {section}", "", head, "|---" * (len(paths) + len(ratios) + 3) + "|"]
        for r in mine:
            marks = ""
            for n in r["notes"]:
                if n not in notes:
                    notes.append(n)
                marks += f" [{notes.index(n) + 1}]"
            if "cost" in r["metric"]:
                cells = ["-" if p != "sluice+chain" else _pct(r["values"][p]) for p in paths]
            else:
                cells = [fmt(r["values"].get(p)) for p in paths]
            out.append(
                f"| {r['metric']}{marks} | "
                + " | ".join(cells)
                + " | "
                + " | ".join(ratio(r.get(attr, math.nan)) for attr, _ in ratios)
                + f" | {r['target']} | {('**' + r['status'] + '**') if r['status'] else ''} |"
            )
    if notes:
        out += ["", "Notes:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return [*out, ""]


_HEADLINE = (
    ("2.", "max sustained requests/s"),
    ("2.", "proxy CPU per request at max (µs)"),
    ("2.", "paired saturation rate vs the baseline tree (req/s)"),
    ("2.", "proxy CPU per request in those windows (µs)"),
    ("1.", "latency p50 (ms)"),
    ("1.", "proxy CPU per request (µs)"),
)


def _transports(rows: list[dict[str, Any]]) -> list[str]:
    """Sluice's fast transport against the stock one and against the baseline tree, at a glance."""
    picked = [
        r for sec, metric in _HEADLINE for r in rows if r["section"].startswith(sec) and r["metric"] == metric
    ]
    present = {p for r in picked for p in r["values"]}
    if STOCK not in present and BASELINE not in present:
        return []
    paths = [p for p in ("nginx", "sluice", STOCK, BASELINE) if p in present]
    ratios = [
        (attr, head) for attr, num, den, head in RATIOS if attr != "vs_direct" and {num, den} <= present
    ]
    out = [
        "## Sluice's transport: fast, stock, and the baseline tree",
        "",
        "sluice runs Sluice's own HTTP/1.1 protocol and upstream client (`SLUICE_HTTP=fast`, the default); "
        "sluice-stock the same with `SLUICE_HTTP=stock` (uvicorn's httptools protocol, aiohttp's client)"
        + (
            "; sluice@baseline the baseline tree's code (above), run exactly like sluice"
            if BASELINE in present
            else ""
        )
        + ". Medians; ratios within rounds (or groups), as below.",
        "",
        "| Figure | " + " | ".join(paths) + " | " + " | ".join(h for _, h in ratios) + " |",
        "|---" * (len(paths) + len(ratios) + 1) + "|",
    ]
    for r in picked:
        section = r["section"].split(" ", 1)[0]
        out.append(
            f"| {section} {r['metric']} | "
            + " | ".join(fmt(r["values"].get(p)) for p in paths)
            + " | "
            + " | ".join(ratio(r.get(attr, math.nan)) for attr, _ in ratios)
            + " |"
        )
    out.append("")
    if BASELINE in present:
        paired = next((r for r in picked if r["metric"].startswith("paired saturation")), None)
        cpu = next((r for r in picked if r["metric"] == "proxy CPU per request at max (µs)"), None)
        if paired is not None:
            v = paired["vs_baseline"]
            kept = v == v and v >= 1 - WITHIN
            out.append(
                f"Within {WITHIN:.0%} of the baseline: **{'yes' if kept else 'NO'}**: Sluice's saturation "
                f"rate is {ratio(v)} the baseline's, from paired windows back to back (they carry the "
                "verdict: the two paths' searches run half a minute or more apart, and the VM's speed "
                "drifts by tens of percent over a minute)"
                + (f"; CPU per request at each path's maximum {ratio(cpu['vs_baseline'])}." if cpu else ".")
            )
        else:
            out.append("No paired windows ran (`--only` without tput?): no verdict against the baseline.")
        out.append("")
    return out


def _harness(summary: dict[str, Any], raw: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    out = ["## Harness checks", ""]
    h = summary.get("harness", {})
    if h:
        out.append(
            f"- Harness ceiling (generator + upstream on core {HARNESS_CORE}: the direct path's max "
            f"sustained rate): **{fmt(h['ceiling_rps'])} req/s** open loop, "
            f"{fmt(h.get('closed_loop_ceiling_rps'))} req/s in the closed-loop probe. A result within 10% "
            "of either, or one whose first failing step found the harness core saturated and the proxy's "
            "not, is flagged as a lower bound."
        )
        for p, reasons in h.get("limited", {}).items():
            out.append(f"  - flagged {p}: {'; '.join(reasons)}")
    late = [
        r.get("lateness_p99_ms", math.nan)
        for name in ("latency_c1", "streaming")
        for rs in raw.get(name, {}).values()
        for r in rs
    ]
    late = [x for x in late if x == x]
    if late:
        out.append(
            f"- Generator release lateness (scheduled → sent) p99, worst round of scenarios 1 and 3: "
            f"{max(late):.3f} ms (counted in the latencies, identically for every path)."
        )
    out += [f"- {n}" for n in summary.get("notes", [])]
    if meta.get("rerun_seconds") or meta.get("quiet_wait_seconds"):
        out.append(
            f"- Time spent re-running disturbed measurements: {meta.get('rerun_seconds', 0):.0f} s; "
            f"waiting for other processes to go quiet: {meta.get('quiet_wait_seconds', 0):.0f} s."
        )
    return [*out, ""]


def _profile(prof: dict[str, Any] | None) -> list[str]:
    if not prof:
        return []
    out = ["## Where Sluice spends its CPU (py-spy, scenario 2 load)", ""]
    if "skipped" in prof:
        return [*out, f"Skipped: {prof['skipped']}", ""]
    out.append(
        f"{prof['samples']:,} samples of the busy Sluice process over {prof['seconds']:.0f} s at "
        f"{fmt(prof['rate'])} req/s (Poisson, its scenario 2 maximum). Flame graph: "
        f"[{prof['flame_graph']}]({prof['flame_graph']}); collapsed stacks: "
        f"[{prof['stacks']}]({prof['stacks']})."
    )
    out += ["", "| Own time by package (leaf frame) | % |", "|---|---|"]
    out += [f"| {name} | {pct} |" for name, pct in prof["by_package"]]
    out += ["", "| Top frames by own time | % |", "|---|---|"]
    out += [f"| `{name}` | {pct} |" for name, pct in prof["self"]]
    out += ["", "| Sluice's own frames, including what they call | % |", "|---|---|"]
    out += [f"| `{name}` | {pct} |" for name, pct in prof["sluice_inclusive"]]
    return [*out, ""]


_METHOD = """\
## Method

- The proxy under test is pinned to core {proxy_core} (`taskset`); the load generator (this process) and
  the upstream share core {harness_core}. Paths run in interleaved rounds (direct, nginx, sluice,
  sluice+chain{extra_order}, then again: {rounds} rounds per scenario, {sweep_rounds} per sweep level); in
  scenarios 1 and 3 every round measures all paths at once, request by request (below). Each
  measurement first waits (up to 3 s) for other processes to go quiet, records the CPU they used
  during it, and is run once more (within a time budget) when they used over a quarter of a core.
- nginx: one worker, `proxy_buffering off`, HTTP/1.1 to an upstream block with `keepalive 256`, no
  access log. sluice: one worker (`python -m proxy serve`), no keys file (so `auth` and `rate_limit`
  pass every request), `SLUICE_ACCESS_LOG=off`. sluice+chain: the full default chain: the access log
  written to a file, `auth` against a keys file, the in-memory rate limiter counting a key whose rpm
  (10^9) and concurrency (10^6) limits never trigger. Every Sluice path runs with
  `SLUICE_HEARTBEAT_INTERVAL=0`: nginx sends no heartbeats, and the idle streams of scenario 5 would
  otherwise get one every 15 s.{extra_paths}
- Upstream: `bench/upstream.py`, a raw asyncio protocol on uvloop with precomputed responses.
  Generator: `bench/loadgen.py`, open loop: requests are released on a fixed-rate or Poisson schedule,
  never held back by slow responses, and latency is measured from the scheduled time. Every read is
  timestamped and every body is de-chunked and hashed (SHA-256) against the upstream's own bytes.
- Scenario 1: one keep-alive connection per path, {c1_requests:,} requests each at a fixed rate, every
  path in the same window, their releases interleaved (direct, nginx, sluice, sluice+chain{extra_order},
  direct, ...; the order turned one place each round) at {c1_rate_all:g} a second in all, however many
  paths run ({c1_rate:g} req/s each for {c1_seconds:g} s here): the VM's stalls, milliseconds long and
  bursty, land on every path alike instead of deciding whichever path's window they fell in, and the
  proxies, which share a core, seldom overlap.
- Scenario 2: a {tput_probe_seconds:g} s closed-loop probe on 64 connections estimates saturation;
  open-loop Poisson steps of {tput_step_seconds:g} s then descend through {fractions} of it until
  one has p99 < {p99_limit:g} ms and no error; {tput_refinements} bisection steps then narrow the gap
  between that rate and the failing one above it (to about 2 % of the probe). A step that
  fails on its p99 alone (no error) is run once more at the same rate, for every path alike: on a shared
  VM one stall of a few tens of ms fails a one-second step by itself. The chain's cost is taken
  apart, from {chain_pairs} groups of four {chain_pair_seconds:g} s closed-loop windows (64 connections)
  on sluice and sluice+chain, A B B A then B A A B: 1 - the median of the groups' rate ratios. Each
  path's search takes a minute, and the VM's speed drifts by tens of percent over that.{baseline_pairs_text}
- Scenario 3: {stream_count} streams a path, each {stream_chunks} SSE events {stream_interval_ms:g} ms
  apart (the first one with the headers), started at {stream_rate_all:g} a second in all, interleaved
  across the paths like scenario 1 ({stream_rate:g} a second each for {stream_seconds:g} s here).
- Scenario 4: N streams started evenly over {sweep_ramp_seconds:g} s, each {sweep_chunks} events
  {sweep_interval_ms:g} ms apart: slower pacing than scenario 3, so that 5,000 streams stay within what
  the single harness core can send and read. A stall is a gap of {stall:g} ms or more. CPU per chunk
  and per stream: the proxy's utime+stime (/proc/PID/stat) over the level, connection set-up included.
- Scenario 5: fresh processes; VmRSS before, and while holding the idle streams (headers and one
  event received, then silence).
"""


def _method(meta: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    # Results from before these were settings: one refinement step, no pairs.
    defaults = {"tput_refinements": 1, "chain_pairs": 0, "chain_pair_seconds": 0, "baseline_pairs": 0}
    p = {**defaults, **meta["plan"]}
    # Scenarios 1 and 3 as run: per path, and in all (older results gave the rate per path).
    for scenario, all_key, count_key, rate_key, seconds_key in (
        ("latency_c1", "c1_rate_all", "c1_requests", "c1_rate", "c1_seconds"),
        ("streaming", "stream_rate_all", "stream_count", "stream_rate", "stream_seconds"),
    ):
        n = len(raw.get(scenario, {})) or 4
        if all_key in p:
            p[rate_key] = p[all_key] / n
            p[seconds_key] = p[count_key] / p[rate_key]
        else:
            p[all_key], p[count_key] = p[rate_key] * n, round(p[rate_key] * p[seconds_key])
    present = {name for rounds in raw.values() if isinstance(rounds, dict) for name in rounds}
    p["extra_order"] = "".join(f", {x}" for x in (STOCK, BASELINE) if x in present)
    extra = []
    if STOCK in present:
        extra.append(
            "sluice-stock: like sluice, with `SLUICE_HTTP=stock` (uvicorn's own httptools protocol and "
            f"aiohttp's client in place of Sluice's own), in {_scenarios(raw, STOCK)}."
        )
    if BASELINE in present:
        extra.append(
            "sluice@baseline: like sluice (the same environment, core and single worker), run by the "
            "same Python with `cwd` and `PYTHONPATH` set to the baseline tree, whose banner must say "
            "`compiled` and whose memory map must show its own extension modules and no other tree's, "
            f"in {_scenarios(raw, BASELINE)}."
        )
    p["extra_paths"] = "".join("\n" + "\n".join(_wrap("- " + x)) for x in extra)
    p["baseline_pairs_text"] = (
        "\n  Sluice ÷ baseline is taken the same way, from "
        f"{p['baseline_pairs']} groups of four such windows on sluice and sluice@baseline."
        if "baseline_pairs" in raw
        else ""
    )
    text = _METHOD.format(
        proxy_core=PROXY_CORE,
        harness_core=HARNESS_CORE,
        p99_limit=P99_LIMIT_MS,
        stall=stall_threshold_ms(p["sweep_interval_ms"]),
        fractions=", ".join(f"{f:.0%}" for f in p["tput_fractions"]),
        **p,
    )
    return [*text.splitlines(), ""]


def _scenarios(raw: dict[str, Any], path: str) -> str:
    names = {"latency_c1": "1", "throughput": "2", "streaming": "3", "sweep": "4", "memory": "5"}
    ran = [n for key, n in names.items() if isinstance(raw.get(key), dict) and path in raw[key]]
    if not ran:
        return "no scenario"
    return "scenario " + ran[0] if len(ran) == 1 else "scenarios " + ", ".join(ran[:-1]) + " and " + ran[-1]


def _wrap(text: str, width: int = 100) -> list[str]:
    return textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False)


def markdown(meta: dict[str, Any], raw: dict[str, Any], summary: dict[str, Any], pngs: list[Path]) -> str:
    lines = _header(meta) + _targets(summary["rows"]) + _transports(summary["rows"]) + _table(summary["rows"])
    lines += _harness(summary, raw, meta) + _profile(raw.get("profile")) + _method(meta, raw)
    lines += ["## Charts", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    return "\n".join(lines)


def write(out: Path, meta: dict[str, Any], raw: dict[str, Any]) -> list[Path]:
    summary = summarize(raw, meta["plan"])
    pngs = charts.draw_all(raw, meta["plan"]["sweep_interval_ms"], out)
    js = out / "results.json"
    doc = _clean({"meta": meta, "summary": summary, "raw": raw})
    js.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=False))
    md = out / "results.md"
    md.write_text(markdown(meta, raw, summary, pngs))
    return [js, md, *pngs]


def _clean(o: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(o, float):
        return None if math.isnan(o) or math.isinf(o) else o
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, set):
        return sorted(o)
    return str(o)


def main() -> None:
    """Re-render ``results.md`` and the charts from a ``results.json`` (after changing the report)."""
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    doc = json.loads((out / "results.json").read_text(), parse_constant=float)
    raw = _nan(doc["raw"])
    for p in write(out, doc["meta"], raw):
        print(p)


def _nan(o: Any) -> Any:
    """The inverse of ``_clean``: null numbers back to NaN."""
    if o is None:
        return math.nan
    if isinstance(o, dict):
        return {k: _nan(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan(v) for v in o]
    return o


if __name__ == "__main__":
    main()
