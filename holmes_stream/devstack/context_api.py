"""A deterministic Kubernaut Context API for tests, demos and the dev stack.

It follows the contract that ``holmes_stream.enrichment.context_api`` consumes:

- ``GET /api/v1/context/kubernetes/{namespace}/{resource}?labels=k=v,...``
- ``GET /api/v1/context/metrics/{namespace}/{resource}?timeRange=1h``
- ``GET /api/v1/context/action-history/{alertType}?namespace=..&limit=10``
- ``GET /api/v1/context/discover`` and ``GET /api/v1/context/health``

Answers are derived from the path only (hashes, not randomness), so a test can predict them.
The Kubernetes context deliberately carries a credential in a container's environment, as real
pod specs do, so that redaction of gathered context can be shown end to end.

Control: ``GET /_context/stats`` (requests per endpoint), ``POST /_context/reset``,
``GET|POST /_context/config`` with ``{"down": true}`` (every context endpoint answers 503),
``latency_seconds``, ``token`` (require ``Authorization: Bearer <token>``) and ``not_found``
(resource names that answer 404).

Run: ``python -m holmes_stream.devstack.context_api --port 18091 [--down]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post

from holmes_stream.devstack.server import ServerProcess

_JSON = "application/json"
# A fixed clock: the same request always gets the same body, timestamps included.
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PLANTED_PASSWORD = "ctx-api-s3cr3t"


@dataclass
class ContextConfig:
    down: bool = False
    latency_seconds: float = 0.0
    token: str | None = None
    not_found: list[str] = field(default_factory=list)

    def updated(self, changes: dict[str, Any]) -> ContextConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        new = dataclasses.replace(self, **changes)
        if new.latency_seconds < 0:
            raise ValueError("latency_seconds must be >= 0")
        return new


# --------------------------------------------------------------------------------------------
# Deterministic answers (pure functions)
# --------------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _n(seed: str, modulo: int) -> int:
    return int(_digest(seed)[:8], 16) % modulo


def _stamp(offset_seconds: int = 0) -> str:
    return (EPOCH + timedelta(seconds=offset_seconds)).isoformat().replace("+00:00", "Z")


def _workload(resource: str) -> str:
    """``payment-api-7d9f8b6c5-x2x9k`` -> ``payment-api`` (Deployment pod names)."""
    parts = resource.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else resource


def parse_labels(raw: str | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in (raw or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            labels[key.strip()] = value.strip()
    return labels


def kubernetes_context(namespace: str, resource: str, labels: dict[str, str]) -> dict[str, Any]:
    app = _workload(resource)
    restarts = 3 + _n(f"restarts|{namespace}|{resource}", 40)
    container = labels.get("container") or app
    context = {
        "kind": "Pod",
        "name": resource,
        "namespace": namespace,
        "phase": "Running",
        "node": f"node-{1 + _n(f'node|{resource}', 3)}",
        "owner": {"kind": "Deployment", "name": app},
        "containers": [
            {
                "name": container,
                "image": f"registry.example.com/{app}@sha256:{_digest('image', app)}",
                "ready": False,
                "restart_count": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "last_state": {"terminated": {"reason": "Error", "exit_code": 1}},
                "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {
                        "name": "DATABASE_URL",
                        "value": f"postgres://{app}:{PLANTED_PASSWORD}@db.{namespace}:5432/{app}",
                    },
                ],
            }
        ],
        "events": [
            {"type": "Warning", "reason": "BackOff", "count": restarts * 4,
             "message": f"Back-off restarting failed container {container}"},
            {"type": "Normal", "reason": "Pulled", "count": restarts,
             "message": "Container image already present on machine"},
        ],
    }  # fmt: skip
    return {
        "namespace": namespace,
        "resource": resource,
        "labels": labels,
        "context": context,
        "timestamp": _stamp(),
    }


def metrics_context(namespace: str, resource: str, time_range: str) -> dict[str, Any]:
    seed = f"{namespace}|{resource}"
    memory_limit = 256 * 1024 * 1024
    return {
        "namespace": namespace,
        "resource": resource,
        "time_range": time_range,
        "metrics": {
            "cpu_usage_cores": {"avg": 0.05 + _n("cpu" + seed, 20) / 100, "max": 0.49},
            "memory_working_set_bytes": {
                "avg": memory_limit // 2,
                "max": memory_limit - 1024 * _n("mem" + seed, 512),
                "limit": memory_limit,
            },
            "restarts_in_range": 2 + _n("restarts" + seed, 10),
            "oom_kills_in_range": _n("oom" + seed, 2),
        },
        "collection_time": _stamp(),
    }


_ACTIONS = ("restart_pod", "increase_memory_limit", "rollback_deployment", "scale_deployment")


def action_history(alert_type: str, namespace: str, limit: int) -> dict[str, Any]:
    total = 3 + _n(f"history|{alert_type}|{namespace}", 5)
    actions = []
    for i in range(min(total, max(0, limit))):
        seed = f"{alert_type}|{namespace}|{i}"
        ok = _n("outcome" + seed, 3) > 0
        actions.append(
            {
                "action": _ACTIONS[_n(f"action|{i}|{seed}", len(_ACTIONS))],
                "executed_at": _stamp(-3600 * (i + 1) * 6),
                "outcome": "success" if ok else "failed",
                "effectiveness": round(0.8 if ok else 0.2, 2),
            }
        )
    succeeded = sum(a["outcome"] == "success" for a in actions)
    return {
        "alert_type": alert_type,
        "context_hash": _digest("ctx", alert_type, namespace)[:16],
        "namespace": namespace,
        "history_data": {
            "total_actions": total,
            "actions": actions,
            "success_rate": round(succeeded / len(actions), 2) if actions else None,
        },
        "retrieved_time": _stamp(),
    }


DISCOVERY = [
    {"name": "kubernetes", "endpoint": "/api/v1/context/kubernetes/{namespace}/{resource}"},
    {"name": "metrics", "endpoint": "/api/v1/context/metrics/{namespace}/{resource}"},
    {"name": "action-history", "endpoint": "/api/v1/context/action-history/{alertType}"},
]


# --------------------------------------------------------------------------------------------
# The HTTP app
# --------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response[bytes]:
    return Response(content=msgspec.json.encode(data), status_code=status, media_type=_JSON)


def _error(status: int, error: str, message: str) -> Response[bytes]:
    return _json({"error": error, "message": message, "timestamp": _stamp()}, status)


class ContextState:
    def __init__(self, config: ContextConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": sum(self.by_endpoint.values()),
            "by_endpoint": dict(sorted(self.by_endpoint.items())),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
        }


def create_app(config: ContextConfig | None = None, **overrides: Any) -> Litestar:
    state = ContextState((config or ContextConfig()).updated(overrides))

    async def guarded(
        endpoint: str, request: Request[Any, Any, Any], answer: Any, resource: str | None = None
    ) -> Response[bytes]:
        """Count the request, apply injected failures and auth, then answer."""
        state.by_endpoint[endpoint] += 1
        cfg = state.config
        if cfg.latency_seconds:
            await asyncio.sleep(cfg.latency_seconds)
        response: Response[bytes]
        if cfg.down:
            response = _error(503, "Service unavailable", "context api is down (injected)")
        elif cfg.token and request.headers.get("authorization") != f"Bearer {cfg.token}":
            response = _error(401, "Unauthorized", "missing or wrong bearer token")
        elif resource is not None and resource in cfg.not_found:
            response = _error(404, "Not found", f"no such resource: {resource}")
        else:
            response = _json(answer())
        state.by_status[response.status_code or 0] += 1
        return response

    @get("/api/v1/context/kubernetes/{namespace:str}/{resource:str}")
    async def kubernetes(
        request: Request[Any, Any, Any], namespace: str, resource: str
    ) -> Response[bytes]:
        labels = parse_labels(request.query_params.get("labels"))
        return await guarded(
            "kubernetes",
            request,
            lambda: kubernetes_context(namespace, resource, labels),
            resource,
        )

    @get("/api/v1/context/metrics/{namespace:str}/{resource:str}")
    async def metrics(
        request: Request[Any, Any, Any], namespace: str, resource: str
    ) -> Response[bytes]:
        time_range = request.query_params.get("timeRange") or "5m"
        return await guarded(
            "metrics", request, lambda: metrics_context(namespace, resource, time_range), resource
        )

    @get("/api/v1/context/action-history/{alert_type:str}")
    async def history(request: Request[Any, Any, Any], alert_type: str) -> Response[bytes]:
        namespace = request.query_params.get("namespace") or ""
        try:
            limit = int(request.query_params.get("limit") or 10)
        except ValueError:
            return _error(400, "Bad request", "limit must be an integer")
        return await guarded(
            "action_history", request, lambda: action_history(alert_type, namespace, limit)
        )

    @get("/api/v1/context/discover")
    async def discover(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = {"available_types": DISCOVERY, "total_types": len(DISCOVERY), "timestamp": _stamp()}
        return await guarded("discover", request, lambda: body)

    @get("/api/v1/context/health")
    async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
        state.by_endpoint["health"] += 1
        if state.config.down:
            return _error(503, "Service unavailable", "context api is down (injected)")
        return _json({"status": "healthy", "service": "context-api", "version": "1.0.0"})

    @get("/_context/stats")
    async def stats() -> Response[bytes]:
        return _json(state.stats())

    @post("/_context/reset")
    async def reset() -> Response[bytes]:
        state.reset()
        return _json(state.stats())

    @get("/_context/config")
    async def get_config() -> Response[bytes]:
        return _json(dataclasses.asdict(state.config))

    @post("/_context/config")
    async def set_config(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            changes = msgspec.json.decode(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("a JSON object is expected")
            state.config = state.config.updated(changes)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return _error(400, "Bad request", str(exc))
        return _json(dataclasses.asdict(state.config))

    handlers = [kubernetes, metrics, history, discover, health]
    handlers += [stats, reset, get_config, set_config]
    return Litestar(route_handlers=handlers, openapi_config=None, debug=False)


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m holmes_stream.devstack.context_api")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18091)
    p.add_argument("--down", action="store_true", help="answer every context request with 503")
    p.add_argument("--config-json", default=None, help="ContextConfig fields as JSON (wins)")
    args = p.parse_args(argv)
    config = ContextConfig(down=args.down)
    if args.config_json:
        config = config.updated(json.loads(args.config_json))
    app = create_app(config)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


class ContextApiServer(ServerProcess):
    """The test server as a detached subprocess; ``config`` are ``ContextConfig`` fields."""

    module = "holmes_stream.devstack.context_api"
    stem = "context-api"
    label = "context API"

    def __init__(
        self,
        port: int = 18091,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        **config: Any,
    ) -> None:
        super().__init__(port, host, data_dir, config)
        ContextConfig().updated(config)  # fail early on a bad key

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change ``down``, ``latency_seconds``, ``token`` or ``not_found`` while running."""
        return self._call("POST", "/_context/config", changes)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_context/stats")

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/_context/reset", {})

    def _answers(self) -> bool:
        try:
            return "requests" in self._call("GET", "/_context/stats", timeout=1.0)
        except (OSError, ValueError):
            return False


if __name__ == "__main__":
    main()
