"""The benchmark suite: ``python -m bench.run [--quick] [--only e2e,nollm,http]``.

Starts its own local stack (real Kafka broker, redis-server, scripted LLM) on free ports under a
temporary directory, runs every figure with its reference side by side, writes bench/RESULTS.md
and bench/results.json, and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, cleanup, log, start_stack


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (development)")
    parser.add_argument("--only", default="e2e,nollm,http", help="comma-separated parts")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="where RESULTS.md goes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    signal.signal(signal.SIGTERM, _interrupted)
    work = Path(tempfile.mkdtemp(prefix="holmes-bench-"))
    t0 = time.perf_counter()
    log("starting the local stack under", work)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
    }
    try:
        stack = start_stack(work / "stack")
        if "e2e" in parts:
            from bench.e2e import figures_1_3_6

            results["e2e"] = asyncio.run(figures_1_3_6(stack, work, args.quick))
        if "nollm" in parts:
            from bench.nollm import figure_4

            results["nollm"] = asyncio.run(figure_4(stack, work, args.quick))
        if "http" in parts:
            from bench.http_bench import figure_5

            results["http"] = asyncio.run(figure_5(stack, work, args.quick))
    finally:
        cleanup()
        results["suite_seconds"] = round(time.perf_counter() - t0, 1)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / ("results-quick.json" if args.quick else "results.json")).write_text(
            json.dumps(results, indent=2, default=str) + "\n"
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    from bench.report import write_report

    path = write_report(results, out / ("RESULTS-quick.md" if args.quick else "RESULTS.md"))
    log(f"done in {results['suite_seconds']}s: {path}")


if __name__ == "__main__":
    main()
