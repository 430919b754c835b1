"""A worker's own tiny HTTP endpoint: ``/health`` for probes and ``/metrics`` for Prometheus.

Workers have no API; a full web framework would be dead weight for two fixed answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from holmes_stream import metrics


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_health(host: str, port: int, healthy: Callable[[], bool]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            path = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b"/"
            if path.startswith(b"/metrics"):
                out = _response("200 OK", generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path.startswith(b"/health"):
                ok = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                body = b'{"status":"ok"}' if ok else b'{"status":"unhealthy"}'
                out = _response(status, body, "application/json")
            else:
                out = _response("404 Not Found", b"", "text/plain")
            writer.write(out)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
