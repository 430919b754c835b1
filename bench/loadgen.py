# ruff: noqa: E501, RUF002, RUF046, ASYNC110, ASYNC230
"""A small, efficient HTTP/1.1 load generator on raw asyncio sockets (keep-alive, uvloop).

    python -m bench.loadgen http --port P --paths FILE --connections 32 --seconds 5
    python -m bench.loadgen post --port P --path /api/v1/investigations --bodies FILE --connections 16
    python -m bench.loadgen sse --port P --ids FILE --clients 1000 --expect N

Prints one JSON line. Runs in its own process so that its CPU is not the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from datetime import UTC, datetime
from typing import Any


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    if i >= 0:
        n = int(lower[i + 15 : lower.find(b"\r\n", i)])
        await reader.readexactly(n)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def http_load(
    port: int, requests: list[bytes], connections: int, seconds: float, max_requests: int | None
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = {"next": 0}
    stop_at = time.perf_counter() + seconds

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                k = counter["next"]
                if max_requests is not None and k >= max_requests:
                    return
                counter["next"] = k + 1
                t = time.perf_counter()
                writer.write(requests[k % len(requests)])
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(connections)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "seconds": wall,
        "rps": len(latencies) / wall,
        "p50_ms": (_pct(latencies, 50) or 0) * 1000,
        "p99_ms": (_pct(latencies, 99) or 0) * 1000,
        "statuses": statuses,
    }


def _get(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def _post(path: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def sse_clients(
    port: int, ids: list[str], clients: int, timeout: float, ready_file: str | None
) -> dict[str, Any]:
    """``clients`` streams over ``ids``; delivery latency = arrival − the event's ``at``."""
    latencies: list[float] = []
    connected = 0
    finished = 0
    errors: dict[str, int] = {}

    async def client(i: int) -> None:
        nonlocal connected, finished
        inv = ids[i % len(ids)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        try:
            writer.write(_get(f"/api/v1/investigations/{inv}/events", port))
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                errors[head[9:12].decode()] = errors.get(head[9:12].decode(), 0) + 1
                return
            connected += 1
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    now = datetime.now(UTC)
                    event = json.loads(line[5:])
                    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
                    latencies.append((now - at).total_seconds())
                    if event["type"] in ("completed", "failed", "cancelled", "skipped"):
                        finished += 1
                        break
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            writer.close()

    tasks = []
    for i in range(clients):
        tasks.append(asyncio.create_task(client(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # no SYN flood: the backlog of one listener is finite
    deadline = time.monotonic() + 60
    while connected + sum(errors.values()) < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(str(connected))
    await asyncio.wait(tasks, timeout=timeout)
    return {
        "clients": clients,
        "connected": connected,
        "finished": finished,
        "errors": errors,
        "events": len(latencies),
        "p50_ms": (_pct(latencies, 50) or 0) * 1000,
        "p99_ms": (_pct(latencies, 99) or 0) * 1000,
        "max_ms": (max(latencies or [0])) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["http", "post", "sse"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--paths")
    p.add_argument("--path")
    p.add_argument("--bodies")
    p.add_argument("--ids")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--max-requests", type=int)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--ready-file")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if a.mode == "http":
        paths = open(a.paths).read().split()
        reqs = [_get(x, a.port) for x in paths]
        out = asyncio.run(http_load(a.port, reqs, a.connections, a.seconds, a.max_requests))
    elif a.mode == "post":
        bodies = open(a.bodies, "rb").read().splitlines()
        reqs = [_post(a.path, a.port, b) for b in bodies]
        out = asyncio.run(http_load(a.port, reqs, a.connections, a.seconds, len(reqs)))
    else:
        ids = open(a.ids).read().split()
        out = asyncio.run(sse_clients(a.port, ids, a.clients, a.timeout, a.ready_file))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
