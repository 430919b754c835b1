"""Development aid: where an investigation's time goes with 64 in flight on a 1 s LLM (figure 3).

    python -m bench.profile_fig3 [--rounds 2] [--n 512] [--latency 1.0]

Starts a private local stack and one worker as figure 3 does, then per round: the rate, the
worker's CPU per investigation, and the median and p90 gaps between consecutive progress events
of 200 investigations (their `at` timestamps, from Redis), from the record's creation to its
terminal event. The gaps beyond the LLM's latency are what an investigation spends holding its
slot besides waiting for the LLM. Not part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    cleanup,
    proc_cpu_seconds,
    start_stack,
)
from bench.e2e import ResultWatcher, run_batch, start_slow_worker

SAMPLED = 200


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _gaps(settings: Any, records: list[dict[str, Any]]) -> dict[str, list[float]]:
    from redis.asyncio import Redis

    from holmes_stream.store import RecordStore

    redis = Redis.from_url(settings.redis.url)
    store = RecordStore(redis, settings.redis.key_prefix)
    gaps: dict[str, list[float]] = {}
    try:
        for record in records[:SAMPLED]:
            before, name = _seconds(record["created_at"]), "created"
            for event in await store.events_after(record["id"], 0):
                at = event.at.timestamp()
                gaps.setdefault(f"{name} -> {event.type}", []).append(at - before)
                before, name = at, event.type
    finally:
        await redis.aclose()
    return gaps


async def main(rounds: int, n: int, latency: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="holmes-fig3-"))
    stack = start_stack(work / "stack")
    try:
        llm, s, worker = await start_slow_worker(stack, work, "fig3", 4, latency)
        watcher = ResultWatcher(s.kafka.bootstrap_servers, s.kafka.results_topic, 4)
        await watcher.start()
        try:
            await run_batch(s, watcher, 64, "warm")
            pid = worker.pids[0]
            for r in range(rounds):
                cpu0, t0 = proc_cpu_seconds(pid), time.perf_counter()
                res = await run_batch(s, watcher, n, f"r{r}-{uuid.uuid4().hex[:4]}", in_flight=64)
                cpu = proc_cpu_seconds(pid) - cpu0
                steady = "-" if res["steady_rate"] is None else f"{res['steady_rate']:.1f}"
                print(
                    f"round {r}: {res['rate']:.1f}/s (all slots busy: {steady}/s), worker CPU "
                    f"{cpu / n * 1000:.1f} ms per investigation "
                    f"({cpu / (time.perf_counter() - t0):.2f} cores)"
                )
                gaps = await _gaps(s, list(res["records"].values()))
                for step, values in sorted(gaps.items(), key=lambda kv: -statistics.median(kv[1])):
                    p90 = sorted(values)[int(0.9 * (len(values) - 1))]
                    print(
                        f"  {step:42s} median {statistics.median(values) * 1000:7.1f} ms, "
                        f"p90 {p90 * 1000:7.1f} ms"
                    )
        finally:
            await watcher.stop()
            worker.stop()
            llm.stop()
    finally:
        cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--latency", type=float, default=1.0, help="the scripted LLM's, seconds")
    a = p.parse_args()
    asyncio.run(main(a.rounds, a.n, a.latency))
