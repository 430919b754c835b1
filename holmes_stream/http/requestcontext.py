"""Per-request log context: every log line of a request carries its request id."""

from __future__ import annotations

import os
import re

from litestar.types import Scope

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's request id is kept when it is a plain token; anything else is replaced.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_ID.match(text):
                return text
            break
    return os.urandom(16).hex()  # as uuid4().hex, without building a UUID
