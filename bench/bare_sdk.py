"""The reference for benchmarks: HolmesGPT's SDK driven exactly the way HolmesGPT's server does.

Per investigation, as ``POST /api/chat``: ``config.create_toolcalling_llm`` with the server's
executor key, ``build_chat_messages(ask, [], ai=ai, config=config)``, ``ai.call(messages)``. The
configuration (disabled cluster/network toolsets, extra toolsets, per-model litellm arguments)
and the ask are the ones ``HolmesEngine`` uses, so both send the same request bodies; pass
``capture=[]`` to collect the bodies this side sends, byte for byte.

    from bench.bare_sdk import run_bare
    print(run_bare(50, "http://127.0.0.1:18080/v1", concurrency=8))
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from holmes_stream.engine.base import EngineRequest
from holmes_stream.engine.holmes_engine import DISABLED_TOOLSETS, build_ask
from holmes_stream.schemas import Alert


def default_alert() -> Alert:
    """A fixed alert, so that every run sends the same prompt (apart from the clock)."""
    return Alert(
        labels={"alertname": "NodeDiskFull", "namespace": "storage", "severity": "critical"},
        annotations={"summary": "Disk on node-7 is 97% full"},
        startsAt=datetime(2025, 1, 1, 0, 0, tzinfo=UTC),
        generatorURL="http://prometheus/graph?g0.expr=disk",
        fingerprint="fp-node7",
    )


def _capturing_client(api_key: str, api_base: str, capture: list[bytes]) -> Any:
    """An OpenAI client that records each request body; the body itself is unchanged."""
    import httpx
    import openai

    lock = threading.Lock()

    def record(request: httpx.Request) -> None:
        with lock:
            capture.append(request.read())

    http_client = httpx.Client(event_hooks={"request": [record]})
    return openai.OpenAI(api_key=api_key, base_url=api_base, http_client=http_client, max_retries=0)


def run_bare(
    n: int,
    api_base: str,
    concurrency: int,
    *,
    model: str = "openai/scripted",
    api_key: str = "dummy",
    max_steps: int = 10,
    temperature: float = 0.0,
    extra_toolsets: list[Any] | None = None,
    alert: Alert | None = None,
    alerts: list[Alert] | None = None,
    capture: list[bytes] | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Run ``n`` investigations of the same alert through the bare SDK; timings and counts.

    ``cpu_ms_per_investigation`` is process CPU (all threads) divided by ``n``; run the LLM
    server in another process for it to mean HolmesGPT's CPU only.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from holmes.config import Config
    from holmes.core.conversations import build_chat_messages
    from holmes.core.tools import PrerequisiteCacheMode, ToolsetTag

    config = Config(
        model=model,
        api_key=api_key,
        api_base=api_base,
        max_steps=max_steps,
        toolsets={name: {"enabled": False} for name in DISABLED_TOOLSETS},
        additional_toolsets=extra_toolsets or None,
    )
    # ``alerts`` (cycled) lets a throughput run use distinct episodes, as the worker sees them.
    asks = [
        build_ask(EngineRequest(investigation_id="bench", alert=a))
        for a in (alerts or [alert or default_alert()])
    ]
    client = _capturing_client(api_key, api_base, capture) if capture is not None else None

    def investigate(i: int = 0) -> Any:
        ai = config.create_toolcalling_llm(
            toolset_tag_filter=[ToolsetTag.CORE, ToolsetTag.CLUSTER],
            enable_all_toolsets_possible=False,
            prerequisite_cache=PrerequisiteCacheMode.DISABLED,
            reuse_executor=True,
        )
        # Per-model litellm arguments, as a model_list.yaml entry sets them (and HolmesEngine).
        ai.llm.args.setdefault("temperature", temperature)
        ai.llm.args.setdefault("num_retries", 0)
        if client is not None:
            ai.llm.args["client"] = client
        messages = build_chat_messages(asks[i % len(asks)], [], ai=ai, config=config)
        return ai.call(messages, cancel_event=threading.Event())

    if warmup:  # the server builds its executor at startup, not on the first request
        investigate()
        if capture is not None:
            capture.clear()

    errors = 0
    llm_calls = 0
    tokens = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors, llm_calls, tokens
        try:
            result = investigate(i)
        except Exception:
            with lock:
                errors += 1
            return
        with lock:
            llm_calls += result.num_llm_calls or 0
            tokens += result.total_tokens or 0

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(one, range(n)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "n": n,
        "concurrency": concurrency,
        "errors": errors,
        "llm_calls": llm_calls,
        "total_tokens": tokens,
        "wall_seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
        "cpu_ms_per_investigation": round(cpu / max(n, 1) * 1000, 2),
        "investigations_per_second": round(n / wall, 2) if wall > 0 else None,
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--api-base", default="http://127.0.0.1:18080/v1")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run_bare(args.n, args.api_base, args.concurrency), indent=2))
