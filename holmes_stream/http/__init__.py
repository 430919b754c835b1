"""The Litestar app: REST submit and lookup, SSE progress, health, readiness and metrics."""

from holmes_stream.http.app import create_app

__all__ = ["create_app"]
