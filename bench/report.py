# ruff: noqa: E501, RUF001, RUF005
"""bench/RESULTS.md from the suite's results (bench/results.json)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import fmt, summary
from holmes_stream.devstack.kafka import BROKER_JVM_FLAGS


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "-"


def _machine() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    redis = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.split()
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    load = os.getloadavg()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem}; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)",
        f"- OS: {platform.platform()}; Python {platform.python_version()} ({_interpreter()})",
        f"- holmesgpt {_version('holmesgpt')}, litellm {_version('litellm')}, faststream "
        f"{_version('faststream')}, aiokafka {_version('aiokafka')}, redis-py {_version('redis')}, "
        f"litestar {_version('litestar')}, uvicorn {_version('uvicorn')}, pydantic {_version('pydantic')}",
        f"- redis-server {redis[2].removeprefix('v=') if len(redis) > 2 else '?'}; "
        f"{java[0] if java else 'java ?'}; Apache Kafka from holmes_stream/devstack (KRaft, one broker; "
        f"JVM flags {' '.join(BROKER_JVM_FLAGS)})",
    ]


def _interpreter() -> str:
    """The interpreter behind the venv, and how it loads libpython: a build's flags (PGO, LTO,
    a shared libpython) change the CPU per alert by a quarter (bench/README.md)."""
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        shared = "libpython" in Path("/proc/self/maps").read_text()
    except OSError:
        return base
    return f"{base}, libpython {'shared' if shared else 'linked in'}"


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "**met**" if value >= target else "**missed**"


def write_report(results: dict[str, Any], path: Path) -> Path:
    lines = ["# holmes-stream benchmarks", ""]
    lines += [
        f"Run {results.get('started')}; `scripts/bench` took {results.get('suite_seconds')} s"
        + (" (quick mode: short runs, development only)" if results.get("quick") else "")
        + ".",
        "",
    ]
    lines += ["## Machine", ""] + _machine() + [""]
    lines += [
        "Every figure is the median of several runs with (min, max); each reference is measured in "
        "the same run, alternating with the figure it is compared to, so that both see the same "
        "machine conditions. Ratios are computed per repetition and then summarised. The whole "
        "stack (Kafka broker, redis-server, scripted LLM, holmes-stream, the bare SDK, load "
        "generators) shares this one machine.",
        "",
    ]
    rows: list[tuple[str, str, str, str, str]] = []
    e = results.get("e2e") or {}
    cores = os.cpu_count() or 1
    f1 = e.get("fig1")
    one = None
    if f1:
        w, b, r = summary(f1["worker_rate"]), summary(f1["bare_rate"]), summary(f1["ratio"], 2)
        one = w["median"]
        rows.append(
            (
                "1. end-to-end, 1 worker process, instant LLM",
                fmt(w, "/s"),
                f"bare SDK 1 process: {fmt(b, '/s')}",
                f"{fmt(r, '×')}",
                f"≥ 3.0× {_met(r['median'], 3.0)}",
            )
        )
    f2 = e.get("fig2")
    if f2 and one:
        m = summary(f2["rate"])
        k = f2["processes"]
        if f2.get("ratio"):  # per repetition, beside that repetition's 1-process figure
            ratio = summary(f2["ratio"], 2)
            rows.append(
                (
                    f"2. end-to-end, {k} worker processes (one per core)",
                    fmt(m, "/s"),
                    f"{k} × the 1-process figure of the same repetition "
                    f"(alternating; median {k} × {one} = {k * one:.1f}/s)",
                    fmt(ratio),
                    f"≥ 0.85 {_met(ratio['median'], 0.85)}",
                )
            )
        else:  # results of runs before the repetitions alternated
            rows.append(
                (
                    f"2. end-to-end, {k} worker processes (one per core)",
                    fmt(m, "/s"),
                    f"{k} × 1-process figure = {k * one:.1f}/s",
                    f"{m['median'] / (k * one):.2f}",
                    f"≥ 0.85 {_met(m['median'], 0.85 * k * one)}",
                )
            )
    f3 = e.get("fig3")
    if f3 and one:
        # With 64 in flight: while every slot is busy (``e2e.steady_rate``); older results
        # have the whole batch's rate only.
        whole = summary(f3["rate"])
        m = summary(f3["steady_rate"]) if f3.get("steady_rate") else whole
        measured = fmt(m, "/s")
        if f3.get("steady_rate"):
            measured += f"; whole batch with ramp-up and drain: {fmt(whole, '/s')}"
        bound = min(f3["in_flight"] / max(f3["llm_seconds_per_investigation"], 1e-9), one)
        ref = f"min({f3['in_flight']} / {f3['llm_seconds_per_investigation']:.0f} s, {one}/s) = {bound:.1f}/s"
        if f3.get("bare_rate_64_in_flight"):
            ref += f"; bare SDK at 64 in flight: {f3['bare_rate_64_in_flight']}/s"
        rows.append(
            (
                f"3. 1 s scripted LLM, 64 in flight, 1 process ({f3.get('n', '?')} alerts a run)",
                measured,
                ref,
                f"{m['median'] / bound:.2f}",
                f"≥ 0.8 {_met(m['median'], 0.8 * bound)}",
            )
        )
    n = results.get("nollm") or {}
    for name in n.get("sizes", {}):
        item = n[name]
        rows.append(
            (
                f"4. no LLM: {name}",
                fmt(item["rate"], "/s"),
                f"aiokafka raw consume: {fmt(n['raw'], '/s')}",
                fmt(item["ratio_to_raw"]),
                f"≥ 10,000/s {_met(item['rate']['median'], 10_000)}",
            )
        )
    h = results.get("http") or {}
    if h.get("lookup"):
        rows.append(
            (
                "5a. REST lookup by id (1 API process)",
                fmt(h["lookup"]["rps"], " req/s"),
                f"hello-world Litestar: {fmt(h['hello']['rps'], ' req/s')}",
                fmt(h["lookup_ratio"]),
                f"≥ 0.7 {_met(h['lookup_ratio']['median'], 0.7)}",
            )
        )
    if h.get("submit"):
        sub = h["submit"]
        rows.append(
            (
                "5b. submit (POST, 16 clients)",
                f"p99 {sub['p99_ms']:.1f} ms, p50 {sub['p50_ms']:.1f} ms",
                f"{sub['rps']:.0f} req/s, statuses {sub['statuses']}",
                "-",
                "report",
            )
        )
    if h.get("sse"):
        sse = h["sse"]
        ok = sse["p99_ms"] < 100 and sse["connected"] >= 1000
        rows.append(
            (
                "5c. 1,000 SSE clients, 1 API process",
                f"delivery p99 {sse['p99_ms']:.1f} ms",
                f"p50 {sse['p50_ms']:.1f} ms, max {sse['max_ms']:.0f} ms; {sse['connected']} connected, "
                f"{sse['events']}/{sse['expected_deliveries']} deliveries",
                "-",
                f"< 100 ms {'**met**' if ok else '**missed**'}",
            )
        )
    lines += [
        "## Figures",
        "",
        "| figure | measured | reference (same run) | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines.append("")
    if e:
        lines += ["## 6. Start-up and memory", ""]
        st = summary(e.get("startup_seconds") or [], 1)
        lines.append(
            f"- worker start-up to ready (1 process, HolmesGPT imported and warmed): {fmt(st, ' s')}"
        )
        if e.get("startup_multi_seconds"):
            lines.append(
                f"- {cores} worker processes to all ready: {e['startup_multi_seconds']:.1f} s"
            )
        if e.get("bare_startup_seconds"):
            lines.append(
                f"- bare SDK process to ready (imports only): {e['bare_startup_seconds']:.1f} s"
            )
        rss = e.get("rss") or {}
        if rss:
            lines.append(
                f"- RSS of one worker: {rss['after_start_mb']:.0f} MB at ready, "
                f"{rss['idle_after_warmup_mb']:.0f} MB idle after a warm-up batch"
            )
        if "per_in_flight_mb" in rss:
            lines.append(
                f"- RSS with 64 investigations in flight: {rss['peak_64_in_flight_mb']:.0f} MB "
                f"(from {rss['before_64_in_flight_mb']:.0f} MB) → "
                f"{rss['per_in_flight_mb']:.2f} MB per in-flight investigation"
            )
        lines.append("")
    if f1:
        lines += ["## Details", ""]
        lines.append(
            f"- Figure 1: {f1['n_worker']} distinct alerts per worker repetition, "
            f"{f1['n_bare']} per bare repetition (bare at concurrency {f1['bare_concurrency']}, "
            f"threads as HolmesGPT's server); {f1['llm_calls_per_investigation']:.0f} LLM calls "
            "and 1 tool call (investigation_history) per investigation on both sides."
        )
        lines.append(
            f"- CPU per investigation: worker process {fmt(summary(f1['worker_cpu_ms']), ' ms')}; "
            f"bare SDK process {fmt(summary(f1['bare_cpu_ms']), ' ms')}."
        )
        cpu_ratio = summary(
            [b / w for w, b in zip(f1["worker_cpu_ms"], f1["bare_cpu_ms"], strict=False) if w], 2
        )
        lines.append(
            f"- CPU-bound ratio (bare CPU / worker CPU per investigation, what the throughput ratio "
            f"tends to when both are CPU-bound on a quiet core): {fmt(cpu_ratio, 'x')}."
        )
        split = f1.get("cpu_split_ms_per_inv") or []
        if split:
            keys = split[0].keys()
            lines.append(
                "- CPU ms per investigation by process (figure 1, median): "
                + ", ".join(f"{k} {summary([s[k] for s in split], 1)['median']}" for k in keys)
            )
        if f2 and f2.get("cpu_split_ms_per_inv"):
            split = f2["cpu_split_ms_per_inv"]
            total = summary([sum(x.values()) for x in split], 1)["median"]
            if total:
                lines.append(
                    f"- Figure 2's machine ceiling: all processes together spend {total} ms CPU per "
                    f"investigation, so {cores} cores allow at most {cores * 1000 / total:.1f}/s "
                    "whatever the worker does (the broker, Redis and the LLM share the cores)."
                )
            lines.append(
                "- CPU ms per investigation by process (figure 2, median): "
                + ", ".join(f"{k} {summary([s[k] for s in split], 1)['median']}" for k in split[0])
            )
    if f3 and f3.get("steady_rate"):
        lines.append(
            f"- Figure 3: {f3['n']} alerts per repetition, all written at once; the rate is taken "
            f"while all {f3['in_flight']} slots are busy, from the {f3['in_flight']}th result to the "
            f"{f3['in_flight']}th from last (before, the first round starts together; after, no alert "
            "is left to start and fewer run). The whole batch's rate (from writing the alerts to "
            "the last result) is beside it."
        )
    bodies = e.get("bodies")
    if bodies:
        verdict = "identical" if bodies["identical_normalised"] else "DIFFERENT"
        lines.append(
            f"- LLM request bodies for the reference alert (bench/bare_sdk.py's): {verdict} between the "
            f"worker and the bare SDK ({bodies['requests_worker']} vs {bodies['requests_bare']} requests, "
            f"{bodies['bytes_worker']} vs {bodies['bytes_bare']} bytes), recorded by the scripted LLM "
            f"(`record_file`). Normalised: only HolmesGPT's two clock sentences in the user prompt "
            f'("The current UTC date and time are …", "The current UTC timestamp in seconds is …"), '
            f"{bodies['timestamps_normalised']} replacements per request; byte-identical without "
            f"normalising: {bodies['identical_raw']}. The bare run's history tool reads a copy of the "
            "store as the worker's tool saw it (its own record, running), so the tool output matches too."
        )
        if bodies.get("first_difference"):
            lines.append(f"  First difference: `{bodies['first_difference']}`")
    if n.get("runs"):
        lines.append(
            f"- Figure 4: one partition, {', '.join(f'{v:,} {k}' for k, v in n['sizes'].items())} "
            f"messages and an unmeasured tail of {n.get('tail', 0):,} duplicates (so that the last "
            "block ends as the others do, not at the final commit tick) written before the worker "
            f"starts; {n['episodes']} finished episodes behind the "
            "duplicates and resolved notices. Rate = block size / time the committed offset (committed "
            "only after each outcome is durable; every 0.5 s) took to cross the block. The raw "
            "reference reads the same partition with a bare AIOKafkaConsumer (getmany) before and after. "
            "Redis's append-only file is rewritten before each run and automatic rewrites wait until "
            "it ends (a rewrite's fork takes a core for a second or more); rewrites during the runs: "
            f"{[r.get('aof_rewrites_during_run') for r in n['runs']]}."
        )
        cores = os.cpu_count() or 1
        for name in n["sizes"]:
            split = n[name].get("cpu_us")
            if split:
                total = sum(split.values())
                lines.append(
                    f"  - {name}: CPU µs per message "
                    + ", ".join(f"{k} {v}" for k, v in split.items())
                    + f"; all together {total:.0f} µs, so {cores} cores allow at most "
                    f"{cores * 1e6 / total:,.0f}/s (the broker and Redis share the cores)"
                )
    if h.get("lookup"):
        lines.append(
            f"- Figure 5: load generator bench/loadgen.py (raw asyncio sockets, keep-alive, "
            f"{h['connections']} connections) in its own process; lookups cycle over 1,000 stored "
            f"completed records; {h.get('rounds', 3)} rounds of {h.get('round_seconds', 5)} s "
            "alternating lookup and hello-world, the ratio is the median of the rounds' ratios; "
            "auth disabled and rate limiting off in the bench's service "
            "environment. SSE: 1,000 clients on 100 running investigations (10 each), events written "
            "to Redis every 0.5 s; delivery latency = arrival − the event's `at` (same clock)."
        )
    lines += [
        "",
        "## Noise",
        "",
        "The machine has few cores and the broker, Redis, the scripted LLM, the service, the "
        "reference and the load generators all share them; other work on the machine shows up "
        "as spread between min and max. Side-by-side ratios are more stable than absolute rates. "
        "Nothing in the test suite depends on these timings.",
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
