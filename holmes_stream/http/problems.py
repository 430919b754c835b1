"""RFC 7807 problem+json answers for every error the API gives."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(HTTPException):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(status_code=status, detail=detail)
        self.title = title
        self.extra = extra


def problem_response(
    status: int, title: str, detail: str, instance: str | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    headers = {"Retry-After": "5"} if status in (429, 503) and "retry_after" not in extra else {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _on_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[dict[str, Any]]:
    return problem_response(exc.status_code, exc.title, exc.detail, request.url.path, **exc.extra)


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    title = "Invalid request" if exc.status_code == 400 else "Error"
    return problem_response(exc.status_code, title, exc.detail, request.url.path, **extra)


def _on_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("dependency unavailable on %s: %s", request.url.path, exc)
    which = "Redis" if isinstance(exc, RedisError) else "Kafka"
    return problem_response(
        503, "Service unavailable", f"{which} is unreachable; retry later", request.url.path
    )


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return problem_response(500, "Internal error", "unexpected error", request.url.path)


exception_handlers: dict[Any, Any] = {
    Problem: _on_problem,
    HTTPException: _on_http,
    RedisError: _on_unavailable,
    KafkaError: _on_unavailable,
    ConnectionError: _on_unavailable,
    TimeoutError: _on_unavailable,
    Exception: _on_unexpected,
}
