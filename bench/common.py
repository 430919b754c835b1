# ruff: noqa: RUF046
"""Shared pieces of the benchmark suite: the stack, settings, child processes, measurements."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from holmes_stream.devstack.process import spawn_detached, stop_pid
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.settings import (
    ApiSettings,
    AuthSettings,
    KafkaSettings,
    LLMSettings,
    RateLimitSettings,
    RedisSettings,
    Settings,
    WorkerSettings,
)

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_READY = b'"event": "worker ready"'


_STARTED: list[Any] = []  # everything with a stop(), stopped by cleanup() whatever happens


def started(thing: Any) -> Any:
    _STARTED.append(thing)
    return thing


def cleanup() -> None:
    while _STARTED:
        thing = _STARTED.pop()
        try:
            thing.stop()
        except Exception as exc:  # keep stopping the others
            log("cleanup:", type(thing).__name__, exc)


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_stack(root: Path, **llm_config: Any) -> LocalStack:
    stack = LocalStack(
        root,
        kafka_port=free_port(),
        controller_port=free_port(),
        redis_port=free_port(),
        llm_port=free_port(),
        llm_config=llm_config or None,
    )
    started(stack)
    stack.start()
    return stack


def make_settings(
    stack: LocalStack, tag: str, llm_api_base: str | None = None, **worker: Any
) -> Settings:
    endpoints = stack.endpoints()
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=endpoints["kafka_bootstrap_servers"],
            alerts_topic=f"alerts-{tag}",
            results_topic=f"results-{tag}",
            progress_topic=f"progress-{tag}",
            dlq_topic=f"dlq-{tag}",
            group_id=f"group-{tag}",
        ),
        redis=RedisSettings(url=endpoints["redis_url"], key_prefix=f"b{tag}:"),
        llm=LLMSettings(api_base=llm_api_base or endpoints["llm_api_base"], timeout_seconds=120),
        worker=WorkerSettings(
            **{
                # The reference alert started firing on 2025-01-01: never stale here.
                "stale_after_seconds": 20 * 365 * 86400,
                "health_port": 0,
                "shutdown_grace_seconds": 5,
            }
            | worker
        ),
        api=ApiSettings(port=free_port()),
        auth=AuthSettings(mode="disabled"),
        ratelimit=RateLimitSettings(enabled=False),
        log_level="WARNING",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the HOLMES_STREAM_* environment of a child process (as tests do)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLMES_STREAM_")}
    for group, values in settings.model_dump(mode="json").items():
        if isinstance(values, dict):
            for name, value in values.items():
                if value is None:
                    continue
                text = json.dumps(value) if isinstance(value, dict | list) else str(value)
                env[f"HOLMES_STREAM_{group.upper()}__{name.upper()}"] = text
        elif values is not None:
            env[f"HOLMES_STREAM_{group.upper()}"] = str(values)
    env["HOLMES_STREAM_LLM__API_KEY"] = settings.llm.api_key.get_secret_value()
    env["HOLMES_STREAM_LOG_JSON"] = "true"
    env["HOLMES_STREAM_AUTH__MODE"] = "disabled"
    env["HOLMES_STREAM_RATELIMIT__ENABLED"] = "false"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- processes ----------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * PAGE / 2**20


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(t) for t in text)
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids = [pid]
    for child in children_of(pid):
        pids.extend(tree(child))
    return pids


class Service:
    """``holmes-stream <role>`` as a child process; ``ready`` waits for every worker process."""

    def __init__(
        self,
        role: str,
        settings: Settings,
        run_dir: Path,
        name: str,
        processes: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.role = role
        self.settings = settings
        self.name = name
        self.processes = processes
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = run_dir / f"{name}.log"
        self.pid_file = run_dir / f"{name}.pid"
        self.env = settings_env(settings) | (extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 240) -> None:
        argv = [PY, "-m", "holmes_stream.cli", self.role]
        if self.role == "worker":
            argv += ["--processes", str(self.processes)]
        t0 = time.perf_counter()
        self.proc = spawn_detached(argv, self.log_file, env=self.env)
        started(self)
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_file.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready: {self.log_file.read_text()[-3000:]}")
            time.sleep(0.05)
        self.startup_seconds = time.perf_counter() - t0

    def _ready(self) -> bool:
        if self.role == "worker":
            return self.log_file.read_bytes().count(_READY) >= self.processes
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.settings.api.port}/health"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def pids(self) -> list[int]:
        """The processes doing the work (the children in multi-process mode)."""
        if self.proc is None:
            return []
        kids = children_of(self.proc.pid)
        return kids if self.processes > 1 and kids else [self.proc.pid]

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(p) for p in (tree(self.proc.pid) if self.proc else []))

    def rss_mb(self) -> list[float]:
        return [proc_rss_mb(p) for p in self.pids]

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_pid(self.pid_file, "holmes_stream", 30)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class CpuMeter:
    """CPU seconds of named processes between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, Callable[[], list[int]]]) -> None:
        self._pids = pids
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {k: sum(proc_cpu_seconds(p) for p in f()) for k, f in self._pids.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        self.seconds = {k: round(now[k] - self._start.get(k, 0.0), 3) for k in now}
        return self.seconds


def stack_pids(stack: LocalStack) -> dict[str, Callable[[], list[int]]]:
    from holmes_stream.devstack.process import read_pid

    def pid_of(path: Path) -> Callable[[], list[int]]:
        return lambda: [p for p in [read_pid(path)] if p is not None]

    return {
        "kafka": pid_of(stack.kafka.pid_file),
        "redis": pid_of(stack.redis.pid_file),
        "llm": pid_of(stack.llm.pid_file),
    }


# -- alerts ---------------------------------------------------------------------------------------

REF_STARTS_AT = datetime(2025, 1, 1, 0, 0, tzinfo=UTC)


def alert_json(
    fingerprint: str,
    *,
    status: str = "firing",
    starts_at: datetime = REF_STARTS_AT,
    ends_at: datetime | None = None,
) -> dict[str, Any]:
    """The reference alert of bench/bare_sdk.py with another fingerprint."""
    alert: dict[str, Any] = {
        "status": status,
        "labels": {"alertname": "NodeDiskFull", "namespace": "storage", "severity": "critical"},
        "annotations": {"summary": "Disk on node-7 is 97% full"},
        "startsAt": starts_at.isoformat().replace("+00:00", "Z"),
        "generatorURL": "http://prometheus/graph?g0.expr=disk",
        "fingerprint": fingerprint,
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat().replace("+00:00", "Z")
    return alert


async def create_topics(bootstrap: str, topics: Iterable[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
        )
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    keys: list[bytes] | None = None,
    partition: int | None = None,
) -> float:
    """Send all values (batched, acks=all); seconds taken."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = []
        for i, value in enumerate(values):
            key = keys[i] if keys else None
            futures.append(await producer.send(topic, value, key=key, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


# -- statistics ----------------------------------------------------------------------------------


def summary(values: list[float], digits: int = 1) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "runs": [round(v, digits) for v in vals],
    }


def fmt(s: dict[str, Any], unit: str = "") -> str:
    if s.get("median") is None:
        return "n/a"
    return f"{s['median']}{unit} (min {s['min']}, max {s['max']}, n={len(s['runs'])})"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]
