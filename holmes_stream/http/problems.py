"""RFC 7807 problem+json answers for every error the API gives."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiokafka.errors import KafkaError
from faststream.exceptions import IncorrectState
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(HTTPException):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.title = title
        self.members = extra  # extra members of the problem document


def problem_response(
    status: int,
    title: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    out = dict(headers or {})
    if "retry_after" in extra:
        out["Retry-After"] = str(extra["retry_after"])
    elif status in (429, 503):
        out.setdefault("Retry-After", "5")
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=out)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _on_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[dict[str, Any]]:
    return problem_response(
        exc.status_code, exc.title, exc.detail, request.url.path, exc.headers, **exc.members
    )


def _field_errors(exc: ValidationException) -> list[dict[str, Any]]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    return [e for e in errors if isinstance(e, dict)]


def _where(error: dict[str, Any]) -> str:
    key = error.get("key")
    return "(body)" if key in (None, "", "data") else str(key)


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status, title, detail = exc.status_code, _title(exc.status_code), exc.detail
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc)
        if errors:
            extra["errors"] = errors
            detail = "; ".join(f"{_where(e)}: {e.get('message', 'invalid')}" for e in errors[:5])
            # An unreadable body is the client's request, a readable but invalid one is content.
            if all(e.get("source") in (None, "body") for e in errors):
                status, title = 422, "Invalid request body"
            else:
                title = "Invalid request parameter"
        else:
            title = "Invalid request"
    elif status == 413:
        detail = f"the request body exceeds the limit of {request.app.request_max_body_size} bytes"
    return problem_response(status, title, detail, request.url.path, exc.headers, **extra)


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
    IncorrectState: _on_unavailable,
    ConnectionError: _on_unavailable,
    TimeoutError: _on_unavailable,
    Exception: _on_unexpected,
}
