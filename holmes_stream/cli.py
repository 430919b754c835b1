"""``holmes-stream``: run a worker, the API, both, or the local development stack."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from holmes_stream import logs
from holmes_stream.settings import Settings, get_settings

_ENV_HELP = """
configuration (environment variables; nested groups use a double underscore):
  HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS   Kafka bootstrap servers (127.0.0.1:19092)
  HOLMES_STREAM_KAFKA__ALERTS_TOPIC        alerts topic (alerts)
  HOLMES_STREAM_KAFKA__RESULTS_TOPIC       results topic (investigation.results)
  HOLMES_STREAM_KAFKA__PROGRESS_TOPIC      progress topic (investigation.progress)
  HOLMES_STREAM_KAFKA__DLQ_TOPIC           dead-letter topic (alerts.dlq)
  HOLMES_STREAM_KAFKA__GROUP_ID            consumer group (holmes-stream)
  HOLMES_STREAM_REDIS__URL                 Redis URL (redis://127.0.0.1:16379/0)
  HOLMES_STREAM_LLM__MODEL                 litellm model, e.g. openai/gpt-4o (openai/scripted)
  HOLMES_STREAM_LLM__API_BASE              OpenAI-compatible base URL
  HOLMES_STREAM_LLM__API_KEY               provider API key
  HOLMES_STREAM_WORKER__MAX_IN_FLIGHT      investigations at once per worker (32)
  HOLMES_STREAM_API__HOST / __PORT         where the API listens (127.0.0.1:18000)
The README lists every setting.
"""


def _serve(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a long-lived command on uvloop's event loop where it is installed (as uvicorn does).

    The worker's event loop carries every Kafka message, Redis reply and progress event; libuv's
    loop does that work with a fraction of asyncio's own overhead.
    """
    try:
        import uvloop
    except ImportError:  # e.g. Windows
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _settled() -> None:
    """Once started: what is in memory now (HolmesGPT, litellm, their caches: millions of
    objects) lives as long as the process, so the collector stops rescanning it (gc.freeze).
    Young collections come every 50,000 allocations instead of 700: an investigation or a
    batch of alerts allocates thousands of objects that live until it ends, and a young
    collection scans those still alive (bench/profile_worker.py: collector time per
    investigation 1.7 ms at 700, 1.0 ms at 10,000; per 60,000 stale alerts 0.36-0.39 s at
    10,000, 0.04-0.07 s at 50,000)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def uvicorn_config(app: Any, host: str, port: int) -> Any:
    """The API's server settings (``bench/hello_app.py``'s reference uses them too). httptools
    named, not left to uvicorn's choice: without it uvicorn would fall back to pure-Python h11,
    at half the requests per second, silently."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http="httptools", log_config=None, access_log=False
    )


def _run_uvicorn_with(settings: Settings, worker: bool) -> None:
    import uvicorn

    from holmes_stream.http import create_app
    from holmes_stream.runtime import Runtime

    async def main() -> None:
        runtime = Runtime.build(settings, worker=True) if worker else None
        if runtime is not None:
            await runtime.start()
        app = create_app(settings, runtime)
        server = uvicorn.Server(uvicorn_config(app, settings.api.host, settings.api.port))
        _settled()
        try:
            await server.serve()
        finally:
            if runtime is not None:
                await runtime.stop()

    _serve(main)


def _run_worker(settings: Settings, cpus: set[int] | None = None) -> None:
    from holmes_stream.runtime import Runtime

    if cpus:  # before any thread starts: every thread inherits it
        os.sched_setaffinity(0, cpus)

    async def main() -> None:
        runtime = Runtime.build(settings, worker=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await runtime.start()
        _settled()
        print(json.dumps({"event": "worker ready", "pid": os.getpid()}), flush=True)
        await stop.wait()
        await runtime.stop()

    _serve(main)


def _run_workers(settings: Settings, processes: int) -> None:
    """Several worker processes in one consumer group, sharing nothing but Kafka and Redis."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")

    def child_settings(i: int) -> Settings:
        # Each process serves its own /health and /metrics: the configured port plus its index.
        if not settings.worker.health_port:
            return settings
        worker = settings.worker.model_copy(update={"health_port": settings.worker.health_port + i})
        return settings.model_copy(update={"worker": worker})

    pinned = cpu_sets(processes) if settings.worker.pin_processes else None
    children = [
        ctx.Process(target=_run_worker, args=(child_settings(i), pinned[i] if pinned else None))
        for i in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


def cpu_sets(processes: int) -> list[set[int]] | None:
    """The CPUs of each of ``processes`` worker processes: this process's CPUs in as many
    contiguous shares, or None where that is not possible (fewer CPUs than processes, or no
    CPU affinity on this platform).

    A worker process is bound by the GIL: one thread runs Python at a time, and each hand-over
    wakes the next thread, which the kernel often places on the other CPU, busy with the other
    process, while this one's CPU goes idle. On CPUs of its own the hand-over stays on one CPU.
    Measured with figure 2's workload (two processes, two cores; six alternating pairs in one
    stack): 70.7/s median against 59.2/s unpinned, every pair faster, idle CPU 6 % against 10 %.
    """
    if not hasattr(os, "sched_getaffinity") or processes < 2:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < processes:
        return None
    share, extra = divmod(len(allowed), processes)
    sets, start = [], 0
    for i in range(processes):
        end = start + share + (1 if i < extra else 0)
        sets.append(set(allowed[start:end]))
        start = end
    return sets


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from holmes_stream import devrun

    if args.dev_command == "up":
        endpoints = devrun.up(settings)
        if args.json:
            print(json.dumps(endpoints))
        else:
            for name, value in endpoints.items():
                print(f"{name:28} {value}")
        return 0
    devrun.down(settings)
    print("local stack stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="holmes-stream",
        description="AI root-cause investigations of a stream of alerts (Kafka + HolmesGPT).",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="consume alerts and investigate them")
    worker.add_argument("--processes", type=int, default=None, help="worker processes (1)")
    sub.add_parser("api", help="serve the HTTP API")
    sub.add_parser("run", help="worker and API in one process")
    dev = sub.add_parser("dev", help="the local stack: Kafka, Redis, scripted LLM and the service")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start everything in the background")
    up.add_argument("--json", action="store_true", help="print the endpoints as JSON")
    dev_sub.add_parser("down", help="stop everything")
    demo = sub.add_parser("demo", help="dev up, send the sample alerts, print the results")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    docs = sub.add_parser("docs", help="write the OpenAPI and AsyncAPI documents")
    docs.add_argument("--out", default="docs", help="directory to write them to (docs)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_json)
    if args.command == "worker":
        processes = args.processes or settings.worker.processes
        if processes > 1:
            _run_workers(settings, processes)
        else:
            _run_worker(settings)
    elif args.command == "api":
        _run_uvicorn_with(settings, worker=False)
    elif args.command == "run":
        _run_uvicorn_with(settings, worker=True)
    elif args.command == "dev":
        return _dev(args, settings)
    elif args.command == "docs":
        from pathlib import Path

        from holmes_stream.http.docs import write_documents

        for path in write_documents(Path(args.out)):
            print(path)
    elif args.command == "demo":
        from holmes_stream import devrun

        return devrun.demo(settings, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
