"""Structured JSON logs; ``extra`` fields such as investigation_id are carried through.

Every record also carries the log context (``holmes_stream.logcontext``): investigation id,
alert fingerprint, tenant, request id, and the trace and span ids when tracing is on.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from holmes_stream.logcontext import ContextFilter
from holmes_stream.redaction import RedactingFilter

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    # Both filters sit on the handler, so they see every record, the libraries' too: the context
    # first, then the redaction of secrets (which never reach the logs).
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries log every request or step at INFO.
    for noisy in (
        "aiokafka",
        "httpx",
        "LiteLLM",
        "litellm",
        "faststream",
        "holmes",
        "uvicorn.access",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
