# ruff: noqa: E501, RUF002
"""Figures 1–3 and 6: alerts through Kafka → worker → results topic, beside the bare SDK."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    PY,
    ROOT,
    CpuMeter,
    Service,
    alert_json,
    create_topics,
    free_port,
    log,
    make_settings,
    proc_rss_mb,
    produce,
    settings_env,
    stack_pids,
    started,
)
from holmes_stream.devstack.scripted_llm import ScriptedLLM
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.producers.kafka import murmur2
from holmes_stream.settings import Settings


class Bare:
    """bench/bare_runner.py as a child process, driven one command at a time."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        env = settings_env(settings)
        self._log = open(log_file, "ab")
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.bare_runner"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        t0 = time.perf_counter()
        self._read()
        self.startup_seconds = time.perf_counter() - t0

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bare runner exited; see its log")
        return json.loads(line)

    def run(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class ResultWatcher:
    """Reads the results topic from its current end; counts records of a batch of fingerprints."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.consumer: AIOKafkaConsumer | None = None
        # When each result of the last ``wait_for`` arrived (perf_counter), in order.
        self.arrivals: list[float] = []

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)

    async def wait_for(self, fingerprints: set[str], timeout: float) -> dict[str, bytes]:
        """The first result of each fingerprint, as it came (parsing is left to the caller, after
        the timing: this process shares the cores with what it measures)."""
        assert self.consumer is not None
        got: dict[str, bytes] = {}
        self.arrivals = []
        deadline = time.monotonic() + timeout
        while len(got) < len(fingerprints) and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers or [])
                    fp = (headers.get("alert-fingerprint") or b"").decode()
                    if fp in fingerprints and fp not in got:
                        got[fp] = r.value
                        self.arrivals.append(now)
        return got

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def start_slow_worker(
    stack: LocalStack, work: Path, tag: str, partitions: int, latency: float = 1.0
) -> tuple[ScriptedLLM, Settings, Service]:
    """Figure 3's set-up: a scripted LLM answering after ``latency`` seconds, and one worker
    process with 64 investigations in flight (and as many LLM threads) on topics of its own."""
    llm = ScriptedLLM(free_port(), data_dir=work / f"llm-{tag}", latency_seconds=latency)
    started(llm)
    llm.start()
    settings = make_settings(
        stack,
        f"{tag}-{uuid.uuid4().hex[:6]}",
        llm_api_base=llm.api_base,
        max_in_flight=64,
        llm_threads=64,
    )
    kafka = settings.kafka
    topics = [kafka.alerts_topic, kafka.results_topic, kafka.progress_topic, kafka.dlq_topic]
    await create_topics(kafka.bootstrap_servers, topics, partitions=partitions)
    worker = Service("worker", settings, work, f"worker-{tag}")
    worker.start()
    return llm, settings, worker


async def run_batch(
    settings: Settings,
    watcher: ResultWatcher,
    n: int,
    tag: str,
    timeout: float = 300,
    sample: Any = None,
    in_flight: int = 0,
) -> dict[str, Any]:
    """Produce ``n`` fresh alerts; seconds until the last result is on the results topic.

    ``in_flight``: the worker's limit, for ``steady_rate`` (0: not computed). The alerts spread
    evenly over the partitions (``balanced_fingerprints``; every figure's alerts topic has as
    many as its results topic, the watcher's)."""
    fps = balanced_fingerprints(tag, n, watcher.partitions)
    values = [json.dumps(alert_json(fp)).encode() for fp in fps]
    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample()) if sample else None
    await produce(
        settings.kafka.bootstrap_servers,
        settings.kafka.alerts_topic,
        values,
        keys=[fp.encode() for fp in fps],
    )
    raw = await watcher.wait_for(set(fps), timeout)
    wall = time.perf_counter() - t0
    arrivals = watcher.arrivals
    if sampler is not None:
        sampler.cancel()
    got = {fp: json.loads(value) for fp, value in raw.items()}
    statuses: dict[str, int] = {}
    llm_calls = 0
    for rec in got.values():
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
        llm_calls += (rec.get("result") or {}).get("num_llm_calls") or 0
    return {
        "n": n,
        "received": len(got),
        "wall": wall,
        "rate": len(got) / wall,
        "steady_rate": steady_rate(arrivals, in_flight) if in_flight else None,
        "statuses": statuses,
        "llm_calls_per_investigation": llm_calls / max(1, len(got)),
        "records": got,
    }


def balanced_fingerprints(tag: str, n: int, partitions: int) -> list[str]:
    """``n`` fingerprints whose keys the default partitioner spreads evenly over the partitions.

    With hashed keys, the halves of 300 alerts split 150 +- 9 between two workers, and a
    batch lasts as long as its busier worker takes: about 4 % of figure 2 lost to the hash's
    luck, not to the workers."""
    quota = -(-n // partitions)
    taken = [0] * partitions
    out: list[str] = []
    i = 0
    while len(out) < n:
        fp = f"fp-{tag}-{i}"
        i += 1
        p = (murmur2(fp.encode()) & 0x7FFFFFFF) % partitions
        if taken[p] < quota:
            taken[p] += 1
            out.append(fp)
    return out


def steady_rate(arrivals: list[float], in_flight: int) -> float | None:
    """Results per second while every slot was busy: from the ``in_flight``-th result to the
    ``in_flight``-th from last. Before the first, the first round ramps up together; after the
    last, no alert is left to start, so fewer than ``in_flight`` run (the drain). None when the
    batch is too small to have such a stretch."""
    times = sorted(arrivals)
    n = len(times)
    if n <= 2 * in_flight + 1:
        return None
    first, last = times[in_flight - 1], times[n - in_flight - 1]
    return (n - 2 * in_flight) / (last - first) if last > first else None


# -- identical request bodies ------------------------------------------------------------------

# HolmesGPT's user prompt carries the current time; these are the only lines normalised.
_TIME_PATTERNS = [
    re.compile(
        r"(?<=The current UTC date and time are )\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.\d]*\+00:00"
    ),
    re.compile(r"(?<=The current UTC timestamp in seconds is )\d+"),
]


def _normalise(body: bytes) -> tuple[bytes, int]:
    text = body.decode()
    total = 0
    for pattern in _TIME_PATTERNS:
        text, k = pattern.subn("<TIME>", text)
        total += k
    return text.encode(), total


async def _copy_running_record(settings: Settings, bare_prefix: str, record_id: str) -> None:
    """Give the bare run's history tool what the worker's saw: its own record, running."""
    from redis.asyncio import Redis

    from holmes_stream.schemas import InvestigationRecord, Status
    from holmes_stream.store import RecordStore

    redis = Redis.from_url(settings.redis.url)
    try:
        src = RecordStore(redis, settings.redis.key_prefix)
        record = await src.get(record_id)
        assert record is not None, "the worker's record is missing"
        running = InvestigationRecord.model_validate(record.model_dump())
        running.status, running.result, running.reason, running.error = (
            Status.RUNNING,
            None,
            None,
            None,
        )
        running.finished_at = None
        await RecordStore(redis, bare_prefix).create(running)
    finally:
        await redis.aclose()


async def check_bodies(
    stack: LocalStack, settings: Settings, watcher: ResultWatcher, bare: Bare, work: Path
) -> dict[str, Any]:
    """The reference alert once through the worker and once through the bare SDK."""
    llm = stack.llm
    ref = alert_json("fp-node7")
    worker_file, bare_file = work / "bodies-worker.jsonl", work / "bodies-bare.jsonl"
    for f in (worker_file, bare_file):
        f.unlink(missing_ok=True)
    # The scripted LLM numbers its tool calls; both sides start from the same number.
    llm.reset()
    llm.configure(record_file=str(worker_file))
    try:
        await produce(
            settings.kafka.bootstrap_servers,
            settings.kafka.alerts_topic,
            [json.dumps(ref).encode()],
            keys=[b"fp-node7"],
        )
        got = await watcher.wait_for({"fp-node7"}, 120)
    finally:
        llm.configure(record_file=None)
    assert got, "the reference alert produced no result"
    record_id = json.loads(got["fp-node7"])["id"]
    bare_prefix = f"bare{uuid.uuid4().hex[:8]}:"
    await _copy_running_record(settings, bare_prefix, record_id)
    llm.reset()
    llm.configure(record_file=str(bare_file))
    try:
        result = await asyncio.to_thread(
            bare.run,
            n=1,
            api_base=llm.api_base,
            concurrency=1,
            redis_url=settings.redis.url,
            prefix=bare_prefix,
            alerts=[ref],
            warmup=False,
        )
    finally:
        llm.configure(record_file=None)
    w = worker_file.read_bytes().splitlines()
    b = bare_file.read_bytes().splitlines()
    raw_equal = w == b
    nw = [_normalise(x) for x in w]
    nb = [_normalise(x) for x in b]
    equal = [x[0] for x in nw] == [x[0] for x in nb]
    diff = None
    if not equal:
        for i, (x, y) in enumerate(zip(nw, nb, strict=False)):
            if x[0] != y[0]:
                k = next((j for j in range(min(len(x[0]), len(y[0]))) if x[0][j] != y[0][j]), 0)
                diff = {
                    "request": i,
                    "worker": x[0][k - 80 : k + 200].decode(errors="replace"),
                    "bare": y[0][k - 80 : k + 200].decode(errors="replace"),
                }
                break
    return {
        "requests_worker": len(w),
        "requests_bare": len(b),
        "bare_errors": result.get("errors"),
        "bytes_worker": [len(x) for x in w],
        "bytes_bare": [len(x) for x in b],
        "identical_raw": raw_equal,
        "identical_normalised": equal,
        "timestamps_normalised": [x[1] for x in nw],
        "first_difference": diff,
    }


# -- the figures ---------------------------------------------------------------------------------


async def figures_1_3_6(stack: LocalStack, work: Path, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    reps = 2 if quick else 5
    n_worker = 60 if quick else 150
    n_bare = 30 if quick else 60
    bare_concurrency = 4
    cores = __import__("os").cpu_count() or 1
    pids = stack_pids(stack)
    nparts = max(4, 2 * cores)

    # ---- figures 1 and 2: one worker process, the bare SDK, one worker process per core -------
    # Their repetitions alternate (1 process, bare SDK, all cores), each ratio taken within one
    # repetition: the machine's speed drifts by tens of percent within minutes.
    s1, s2 = (make_settings(stack, f"e2e{k}-" + uuid.uuid4().hex[:6]) for k in (1, 2))
    for s in (s1, s2):
        await create_topics(
            s.kafka.bootstrap_servers,
            [
                s.kafka.alerts_topic,
                s.kafka.results_topic,
                s.kafka.progress_topic,
                s.kafka.dlq_topic,
            ],
            partitions=nparts,
        )
    bare = started(Bare(s1, work / "bare.log"))
    out["bare_startup_seconds"] = bare.startup_seconds
    worker = Service("worker", s1, work, "worker-1p")
    worker.start()
    startups = [worker.startup_seconds]
    rss_start = proc_rss_mb(worker.pids[0])
    watcher = ResultWatcher(s1.kafka.bootstrap_servers, s1.kafka.results_topic, nparts)
    await watcher.start()
    multi: Service | None = None
    watcher2: ResultWatcher | None = None
    try:
        log("fig1: warm-up")
        await run_batch(s1, watcher, 30, "warm")
        out["bodies"] = await check_bodies(stack, s1, watcher, bare, work)
        log("fig1: bodies", out["bodies"]["identical_normalised"])
        rss_idle = proc_rss_mb(worker.pids[0])
        multi = Service("worker", s2, work, f"worker-{cores}p", processes=cores)
        multi.start()
        out["startup_multi_seconds"] = multi.startup_seconds
        watcher2 = ResultWatcher(s2.kafka.bootstrap_servers, s2.kafka.results_topic, nparts)
        await watcher2.start()
        await run_batch(s2, watcher2, 30 * cores, "warm2")
        ours, ref, ours_cpu, ref_cpu, split = [], [], [], [], []
        rates2, split2 = [], []
        bare_alerts = [alert_json(f"fp-bare-{i}") for i in range(n_bare)]
        for r in range(reps):
            meter = CpuMeter({"worker": lambda: worker.pids, **pids})
            meter.start()
            res = await run_batch(s1, watcher, n_worker, f"f1r{r}-{uuid.uuid4().hex[:4]}")
            cpu = meter.stop()
            ours.append(res["rate"])
            ours_cpu.append(cpu["worker"] / max(1, res["received"]) * 1000)
            split.append({k: round(v / max(1, res["received"]) * 1000, 2) for k, v in cpu.items()})
            b = await asyncio.to_thread(
                bare.run,
                n=n_bare,
                api_base=stack.llm.api_base,
                concurrency=bare_concurrency,
                redis_url=s1.redis.url,
                prefix=f"barethr{r}:",
                alerts=bare_alerts,
            )
            ref.append(b.get("investigations_per_second") or 0.0)
            ref_cpu.append(b.get("cpu_ms_per_investigation") or 0.0)
            log(
                f"fig1 rep {r}: worker {res['rate']:.1f}/s ({res['statuses']}), "
                f"bare {ref[-1]:.1f}/s; cpu ms/inv worker {ours_cpu[-1]:.1f} bare {ref_cpu[-1]:.1f}"
            )
            meter = CpuMeter({"workers": lambda: multi.pids if multi else [], **pids})
            meter.start()
            res2 = await run_batch(s2, watcher2, n_worker * cores, f"f2r{r}-{uuid.uuid4().hex[:4]}")
            cpu = meter.stop()
            split2.append(
                {k: round(v / max(1, res2["received"]) * 1000, 2) for k, v in cpu.items()}
            )
            rates2.append(res2["rate"])
            log(
                f"fig2 rep {r}: {cores} processes {res2['rate']:.1f}/s ({res2['statuses']}), "
                f"{res2['rate'] / (cores * ours[-1]):.2f} x {cores} x this repetition's 1 process"
            )
        out["fig1"] = {
            "worker_rate": ours,
            "bare_rate": ref,
            "ratio": [a / b for a, b in zip(ours, ref, strict=True) if b],
            "worker_cpu_ms": ours_cpu,
            "bare_cpu_ms": ref_cpu,
            "cpu_split_ms_per_inv": split,
            "n_worker": n_worker,
            "n_bare": n_bare,
            "bare_concurrency": bare_concurrency,
            "llm_calls_per_investigation": res["llm_calls_per_investigation"],
        }
        out["fig2"] = {
            "processes": cores,
            "rate": rates2,
            "ratio": [a / (cores * b) for a, b in zip(rates2, ours, strict=True) if b],
            "cpu_split_ms_per_inv": split2,
        }
        out["rss"] = {"after_start_mb": rss_start, "idle_after_warmup_mb": rss_idle}
    finally:
        await watcher.stop()
        worker.stop()
        if watcher2 is not None:
            await watcher2.stop()
        if multi is not None:
            multi.stop()

    # ---- figure 3 (+6): 1 s LLM, 64 in flight, one process ----------------------------------------
    slow, s3, worker = await start_slow_worker(stack, work, "e2e3", nparts)
    startups.append(worker.startup_seconds)
    watcher = ResultWatcher(s3.kafka.bootstrap_servers, s3.kafka.results_topic, nparts)
    await watcher.start()
    try:
        await run_batch(s3, watcher, 64, "warm3")
        rss_before = proc_rss_mb(worker.pids[0])
        peak = [rss_before]

        async def sample() -> None:
            while True:
                peak.append(proc_rss_mb(worker.pids[0]))
                await asyncio.sleep(0.1)

        rates: list[float] = []
        steady: list[float] = []
        # Eight rounds of the in-flight limit: a throughput, less weighed down by the ramp-up of
        # the first round and the tail of the last (three rounds measured 18 % lower, once).
        n3 = 64 * (3 if quick else 8)
        for r in range(3 if not quick else 1):
            res = await run_batch(
                s3, watcher, n3, f"f3r{r}-{uuid.uuid4().hex[:4]}", sample=sample, in_flight=64
            )
            rates.append(res["rate"])
            if res["steady_rate"] is not None:
                steady.append(res["steady_rate"])
            log(f"fig3 rep {r}: {res['rate']:.1f}/s, steady {res['steady_rate']}/s")
        llm_seconds = res["llm_calls_per_investigation"] * 1.0
        out["fig3"] = {
            "rate": rates,
            "steady_rate": steady,
            "in_flight": 64,
            "llm_seconds_per_investigation": llm_seconds,
            "n": n3,
        }
        out["rss"].update(
            {
                "before_64_in_flight_mb": rss_before,
                "peak_64_in_flight_mb": max(peak),
                "per_in_flight_mb": (max(peak) - rss_before) / 64,
            }
        )
        if not quick:
            b = await asyncio.to_thread(
                bare.run,
                n=128,
                api_base=slow.api_base,
                concurrency=64,
                redis_url=s3.redis.url,
                prefix="bareslow:",
                alerts=[alert_json(f"fp-bslow-{i}") for i in range(128)],
            )
            out["fig3"]["bare_rate_64_in_flight"] = b.get("investigations_per_second")
            log(f"fig3 bare 64 in flight: {b.get('investigations_per_second')}/s")
    finally:
        await watcher.stop()
        worker.stop()
        slow.stop()
        bare.stop()
    out["startup_seconds"] = startups
    return out


def _thread_name() -> str:
    return threading.current_thread().name
