# ruff: noqa: RUF007
"""Figure 4: alerts that need no LLM, per worker process, beside aiokafka's raw consume rate.

One partition holds blocks of one kind each — duplicates of finished episodes, resolved
notifications of finished episodes, stale alerts, resolved alerts of unknown episodes — and an
unmeasured tail of duplicates, written before the worker starts. The worker's committed offset
(it commits only after each outcome is durable) is sampled every 20 ms; the rate of a block is
its size over the time the commit point took to cross it (linear interpolation between
samples; commits happen every 0.5 s). Redis's append-only file is rewritten before each run
and not during it (``hold_aof_rewrites``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.common import (
    REF_STARTS_AT,
    CpuMeter,
    Service,
    alert_json,
    create_topics,
    log,
    make_settings,
    produce,
    stack_pids,
    summary,
)
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.settings import Settings

EPISODES = 1000  # distinct finished episodes the duplicates and resolved notices belong to
TAIL = 10_000  # duplicates after the last measured block (see one_run)


async def seed_finished(settings: Settings, n: int) -> list[dict[str, Any]]:
    """``n`` completed investigations in Redis, as a worker would have left them."""
    from redis.asyncio import Redis

    from holmes_stream.intake import AlertWork
    from holmes_stream.schemas import Alert, InvestigationRecord, Status
    from holmes_stream.schemas.investigations import utcnow
    from holmes_stream.store import RecordStore

    redis = Redis.from_url(settings.redis.url)
    store = RecordStore(redis, settings.redis.key_prefix)
    alerts = [alert_json(f"fp-fin-{i}") for i in range(n)]
    try:
        for a in alerts:
            work = AlertWork(Alert.model_validate(a))
            record = InvestigationRecord(
                id=work.investigation_id,
                episode_key=work.alert.episode_key(),
                fingerprint=work.alert.identity(),
                tenant=None,
                status=Status.COMPLETED,
                alert=work.alert,
                finished_at=utcnow(),
            )
            await store.create(record)
            await store.mark_published([record.id])  # its result reached Kafka
    finally:
        await redis.aclose()
    return alerts


_AOF_MIN = "auto-aof-rewrite-min-size"


async def hold_aof_rewrites(redis_url: str) -> tuple[int, int]:
    """Rewrite Redis's append-only file now, and hold automatic rewrites off until
    ``release_aof_rewrites``: (rewrites so far, the auto-rewrite minimum size to restore).

    A rewrite forks a child that takes a core for a second or more, and the file grows fastest
    while stale and unknown-episode alerts store their records, so on two cores one landed
    inside exactly those blocks (redis.log of a run on 2026-11-27: a rewrite during its second
    run's stale and unknown blocks, 7,485 and 6,257/s against 8,771 and 7,068 in the first).
    Its cost follows the size of the whole data set, not the rate of alerts, and in production
    it runs on Redis's own host. So the file is rewritten before each run, and automatic
    rewrites wait until the run ends (``aof_rewrites_during_run`` in the results: 0)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        minimum = int(str((await redis.config_get(_AOF_MIN))[_AOF_MIN]))
        await redis.config_set(_AOF_MIN, str(16 * 2**30))
        return await _rewrite_aof(redis), minimum
    finally:
        await redis.aclose()


async def release_aof_rewrites(redis_url: str, minimum: int) -> int:
    """Automatic rewrites as before, once the file is rewritten with what the run stored (else
    the rewrite held off comes at once, inside the next figure); the rewrites so far, this one
    not counted."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        rewrites = int((await redis.info("persistence"))["aof_rewrites"])
        await _rewrite_aof(redis)
        await redis.config_set(_AOF_MIN, str(minimum))
        return rewrites
    finally:
        await redis.aclose()


async def _rewrite_aof(redis: Any) -> int:
    """BGREWRITEAOF, waited for; the rewrites so far, this one counted."""
    await redis.bgrewriteaof()
    while True:
        info = await redis.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return int(info["aof_rewrites"])
        await asyncio.sleep(0.05)


async def raw_consume(bootstrap: str, topic: str, total: int) -> float:
    """Messages/s of a plain aiokafka consumer reading the whole partition (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1_048_576 * 2,
        fetch_max_bytes=52_428_800,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        seen = 0
        t0 = time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:  # touch every message as a consumer would
                    _ = r.value
                seen += sum(len(v) for v in batch.values())
        return total / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


async def commit_timeline(
    bootstrap: str,
    group: str,
    topic: str,
    end: int,
    timeout: float,
    cpu: CpuMeter,
) -> tuple[list[tuple[float, int]], list[tuple[float, dict[str, float]]]]:
    """(time, committed offset) at each change, and beside each (time, CPU seconds by process
    since ``cpu`` started)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    tp = TopicPartition(topic, 0)
    samples: list[tuple[float, int]] = []
    cpu_samples: list[tuple[float, dict[str, float]]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
            meta = offsets.get(tp)
            committed = meta.offset if meta is not None and meta.offset >= 0 else 0
            now = time.perf_counter()
            if not samples or committed != samples[-1][1]:
                samples.append((now, committed))
                cpu_samples.append((now, cpu.stop()))
            if committed >= end:
                break
            await asyncio.sleep(0.02)
    finally:
        await admin.close()
    return samples, cpu_samples


def _time_at(samples: list[tuple[float, int]], offset: int) -> float | None:
    """When the commit point passed ``offset`` (linear between the samples around it)."""
    for (t0, o0), (t1, o1) in zip(samples, samples[1:], strict=False):
        if o0 <= offset <= o1 and o1 > o0:
            return t0 + (t1 - t0) * (offset - o0) / (o1 - o0)
    return None


def block_cpu(
    samples: list[tuple[float, int]],
    cpu_samples: list[tuple[float, dict[str, float]]],
    blocks: list[tuple[str, int, int]],
) -> dict[str, dict[str, float]]:
    """Per block, CPU microseconds per message of each process, over the window its rate is
    taken over: from when the commit point passed the block's start to when it passed its end
    (both interpolated, and the CPU at those moments likewise). Taken between the samples
    after those moments instead, a block followed by cheap work was charged for less than it
    took (the commit point lags the work by up to a commit interval)."""
    out: dict[str, dict[str, float]] = {}
    for name, start, end in blocks:
        t0, t1 = _time_at(samples, start), _time_at(samples, end)
        a, b = _cpu_at(cpu_samples, t0), _cpu_at(cpu_samples, t1)
        if a is None or b is None or end <= start:
            continue
        out[name] = {k: round((b[k] - a[k]) / (end - start) * 1e6, 1) for k in b}
    return out


def _cpu_at(
    cpu_samples: list[tuple[float, dict[str, float]]], t: float | None
) -> dict[str, float] | None:
    """Each process's CPU seconds at ``t`` (linear between the samples around it)."""
    if t is None:
        return None
    for (t0, c0), (t1, c1) in zip(cpu_samples, cpu_samples[1:], strict=False):
        if t0 <= t <= t1 and t1 > t0:
            f = (t - t0) / (t1 - t0)
            return {k: c0[k] + (c1[k] - c0[k]) * f for k in c1}
    return None


def block_rates(
    samples: list[tuple[float, int]], blocks: list[tuple[str, int, int]]
) -> dict[str, float | None]:
    rates: dict[str, float | None] = {}
    first_t, first_o = samples[0] if samples else (0.0, 0)
    for name, start, end in blocks:
        start_t: float | None
        if start < first_o:  # the first commit landed inside this block: measure from there
            start_t, start = first_t, first_o
        else:
            start_t = _time_at(samples, start)
        end_t = _time_at(samples, end)
        rates[name] = (
            (end - start) / (end_t - start_t) if start_t and end_t and end_t > start_t else None
        )
    return rates


async def one_run(stack: LocalStack, work: Path, sizes: dict[str, int], run: int) -> dict[str, Any]:
    s = make_settings(stack, f"nollm{run}-" + uuid.uuid4().hex[:6], stale_after_seconds=86400)
    bootstrap = s.kafka.bootstrap_servers
    await create_topics(bootstrap, [s.kafka.alerts_topic], partitions=1)
    await create_topics(
        bootstrap, [s.kafka.results_topic, s.kafka.progress_topic, s.kafka.dlq_topic], partitions=4
    )
    finished = await seed_finished(s, EPISODES)
    ended = REF_STARTS_AT.replace(hour=1)
    makers = {
        "duplicates": lambda i: finished[i % EPISODES],
        "resolved (finished episode)": lambda i: {
            **finished[i % EPISODES],
            "status": "resolved",
            "endsAt": ended.isoformat(),
        },
        "stale (new episode)": lambda i: alert_json(f"fp-stale-{run}-{i}"),
        "resolved (unknown episode)": lambda i: alert_json(
            f"fp-orphan-{run}-{i}", status="resolved", ends_at=ended
        ),
    }
    values: list[bytes] = []
    blocks: list[tuple[str, int, int]] = []
    for name, n in sizes.items():
        start = len(values)
        values.extend(json.dumps(makers[name](i)).encode() for i in range(n))
        blocks.append((name, start, len(values)))
    # Not measured: more work behind the last block, so that its end is timed as every other
    # block's (the commit point moving on), not by the idle wait for the final commit tick.
    values.extend(json.dumps(makers["duplicates"](i)).encode() for i in range(TAIL))
    await produce(bootstrap, s.kafka.alerts_topic, values, partition=0)
    raw = [await raw_consume(bootstrap, s.kafka.alerts_topic, len(values))]
    rewrites, minimum = await hold_aof_rewrites(s.redis.url)
    worker = Service("worker", s, work, f"worker-nollm{run}")
    worker.start()
    infra = stack_pids(stack)
    meter = CpuMeter(
        {"worker": lambda: worker.pids, "kafka": infra["kafka"], "redis": infra["redis"]}
    )
    meter.start()
    try:
        samples, cpu_samples = await commit_timeline(
            bootstrap, s.kafka.group_id, s.kafka.alerts_topic, len(values), timeout=240, cpu=meter
        )
    finally:
        cpu = meter.stop()
        worker.stop()
        rewrites_during = await release_aof_rewrites(s.redis.url, minimum) - rewrites
    raw.append(await raw_consume(bootstrap, s.kafka.alerts_topic, len(values)))
    rates = block_rates(samples, blocks)
    cpu_us = block_cpu(samples, cpu_samples, blocks)
    done = samples[-1][1] if samples else 0
    log(
        f"nollm run {run}: { ({k: round(v) if v else v for k, v in rates.items()}) }, "
        f"raw {[round(r) for r in raw]}/s, committed {done}/{len(values)}"
    )
    return {
        "rates": rates,
        "cpu_us_per_message": cpu_us,
        "raw": raw,
        "committed": done,
        "total": len(values),
        "worker_cpu_seconds": cpu["worker"],
        "aof_rewrites_during_run": rewrites_during,
        "startup_seconds": worker.startup_seconds,
    }


async def figure_4(stack: LocalStack, work: Path, quick: bool) -> dict[str, Any]:
    sizes = {
        "duplicates": 20_000 if quick else 50_000,
        "resolved (finished episode)": 10_000 if quick else 20_000,
        # Twice the others: at about 10,000/s a block of 20,000 lasts two seconds, and the
        # commit point it is timed by moves every half second.
        "stale (new episode)": 5_000 if quick else 40_000,
        "resolved (unknown episode)": 5_000 if quick else 40_000,
    }
    # Three runs: with two, a "median" is their mean and one slow run drags it.
    runs = [await one_run(stack, work, sizes, r) for r in range(1 if quick else 3)]
    out: dict[str, Any] = {"sizes": sizes, "runs": runs, "episodes": EPISODES, "tail": TAIL}
    raw_all = [r for run in runs for r in run["raw"]]
    out["raw"] = summary(raw_all, 0)
    for name in sizes:
        vals = [run["rates"][name] for run in runs if run["rates"].get(name)]
        ratios = [
            run["rates"][name] / (sum(run["raw"]) / len(run["raw"]))
            for run in runs
            if run["rates"].get(name)
        ]
        out[name] = {"rate": summary(vals, 0), "ratio_to_raw": summary(ratios, 3)}
        splits = [r["cpu_us_per_message"][name] for r in runs if name in r["cpu_us_per_message"]]
        if splits:
            out[name]["cpu_us"] = {
                k: summary([x[k] for x in splits], 1)["median"] for k in splits[0]
            }
    return out
