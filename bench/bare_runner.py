"""The bare-SDK reference as a long-lived child process: one JSON command per stdin line.

HolmesGPT is imported once; the suite alternates runs of this process with runs of the worker,
so that both are measured side by side under the same machine conditions. Command fields:
``n``, ``api_base``, ``concurrency``, ``redis_url``, ``prefix`` (the history toolset's store, as
the worker's), ``alerts`` (Alertmanager alert objects, cycled), ``warmup``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def main() -> None:
    from bench.bare_sdk import run_bare
    from holmes_stream.engine.toolsets import history_toolset
    from holmes_stream.schemas import Alert

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        alerts = [Alert.model_validate(a) for a in cmd.get("alerts") or []] or None
        toolsets = [history_toolset(cmd["redis_url"], cmd["prefix"])]
        try:
            result = run_bare(
                cmd["n"],
                cmd["api_base"],
                cmd.get("concurrency", 8),
                extra_toolsets=toolsets,
                alerts=alerts,
                warmup=cmd.get("warmup", True),
            )
        except Exception as exc:  # reported, not fatal: the suite notes it
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
