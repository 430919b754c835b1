"""Development aid: profile one in-process worker's event-loop thread (cProfile).

    python -m bench.profile_worker [--kind fresh|duplicates|stale|orphan] [--n 200] [--plain]

Starts a private local stack, writes ``n`` alerts, runs the worker until the last offset is
committed, prints the top functions by own time. Not part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    REF_STARTS_AT,
    alert_json,
    cleanup,
    create_topics,
    make_settings,
    produce,
    start_stack,
)


async def main(
    kind: str,
    n: int,
    top: int,
    sort: str,
    callers: str = "",
    freeze: bool = False,
    plain: bool = False,
) -> None:
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from bench.nollm import seed_finished
    from holmes_stream.runtime import Runtime

    stack = start_stack(Path(tempfile.mkdtemp(prefix="holmes-prof-")))
    try:
        s = make_settings(
            stack,
            "prof-" + uuid.uuid4().hex[:6],
            stale_after_seconds=86400 if kind != "fresh" else 20 * 365 * 86400,
        )
        await create_topics(s.kafka.bootstrap_servers, [s.kafka.alerts_topic], 1)
        if kind == "duplicates":
            fin = await seed_finished(s, 1000)
            values = [json.dumps(fin[i % 1000]).encode() for i in range(n)]
        elif kind == "orphan":  # resolved alerts of episodes never seen
            ended = REF_STARTS_AT.replace(hour=1)
            values = [
                json.dumps(alert_json(f"fp-orph-{i}", status="resolved", ends_at=ended)).encode()
                for i in range(n)
            ]
        else:
            values = [json.dumps(alert_json(f"fp-prof-{i}")).encode() for i in range(n)]
        await produce(s.kafka.bootstrap_servers, s.kafka.alerts_topic, values, partition=0)
        runtime = Runtime.build(s, worker=True)
        await runtime.start()
        if freeze:
            from holmes_stream.cli import _settled

            _settled()  # as the worker command does once started: freeze, young-collection size
        if os.environ.get("GC_THRESHOLD"):
            gc.set_threshold(*map(int, os.environ["GC_THRESHOLD"].split(",")))
        gc_seconds = [0.0, 0.0]  # total, start of the current collection
        gc.callbacks.append(
            lambda phase, _info: gc_seconds.__setitem__(
                *(
                    (1, time.perf_counter())
                    if phase == "start"
                    else (0, gc_seconds[0] + time.perf_counter() - gc_seconds[1])
                )
            )
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers)
        await admin.start()
        prof = cProfile.Profile()
        if not plain:
            prof.enable()
        t0, cpu0 = time.perf_counter(), time.process_time()
        tp = TopicPartition(s.kafka.alerts_topic, 0)
        while True:
            got = await admin.list_consumer_group_offsets(s.kafka.group_id, partitions=[tp])
            if got.get(tp) and got[tp].offset >= n:
                break
            await asyncio.sleep(0.1)
        prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(f"{n} {kind} in {wall:.2f}s ({cpu:.2f}s CPU), {gc_seconds[0]:.2f}s of it in gc")
        await admin.close()
        await runtime.stop()
        if plain:
            return
        stats = pstats.Stats(prof).sort_stats(sort)
        stats.print_stats(top)
        if callers:
            stats.print_callers(callers)
    finally:
        cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kind", default="fresh")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--sort", default="tottime")
    p.add_argument(
        "--freeze", action="store_true", help="the worker command's gc settings once it is up"
    )
    p.add_argument("--callers", default="", help="print the callers of functions matching this")
    p.add_argument("--plain", action="store_true", help="no cProfile (to attach py-spy instead)")
    a = p.parse_args()
    import uvloop  # the worker command's event loop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(a.kind, a.n, a.top, a.sort, a.callers, a.freeze, a.plain))
