"""GET a JSON document with a time limit, a few retries with backoff, and a circuit breaker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import httpx

from holmes_stream.enrichment.breaker import CircuitBreaker

# Worth another try: the service is overloaded or restarting, not telling us we asked wrong.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class SourceError(Exception):
    """A source could not answer; the message is recorded as ``failed: <message>``."""


async def get_json(
    client: httpx.AsyncClient,
    path: str,
    params: Mapping[str, str | int] | None = None,
    *,
    retries: int,
    backoff_seconds: float,
    breaker: CircuitBreaker | None = None,
) -> Any:
    """The decoded JSON body of ``GET path``; raises ``SourceError`` or ``CircuitOpenError``.

    One call counts once for the breaker, whatever its retries: the threshold means
    "N investigations in a row found the service down", not N HTTP requests.
    """
    if breaker is not None:
        breaker.check()
    problem = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff_seconds * 2 ** (attempt - 1))
        try:
            response = await client.get(path, params=params)
        except httpx.TimeoutException:
            problem = "timeout"
            continue
        except httpx.TransportError as exc:
            problem = f"connection error ({type(exc).__name__})"
            continue
        if response.status_code in RETRY_STATUSES:
            problem = f"HTTP {response.status_code}"
            continue
        if response.status_code >= 400:
            # The service answered: it is up, we asked for something it does not have.
            if breaker is not None:
                breaker.record_success()
            raise SourceError(f"HTTP {response.status_code}: {_excerpt(response.text)}")
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            problem = "invalid JSON in the answer"
            break
        if breaker is not None:
            breaker.record_success()
        return data
    if breaker is not None:
        breaker.record_failure()
    raise SourceError(problem)


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
