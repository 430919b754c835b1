"""The live progress page of one investigation: plain HTML, one script, one style sheet.

The page itself holds no data, so it is served without credentials; its script reads the
record and follows the events with the page token from ``?access_token=`` (see
``POST /api/v1/investigations/{id}/access-token``), which it then removes from the address bar.
Nothing is fetched from outside this origin (the Content-Security-Policy forbids it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from litestar import Controller, Response, get
from litestar.params import PathParameter
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"


class UIController(Controller):
    path = "/ui"
    tags = ["ui"]
    include_in_schema = False

    @get("/investigations/{investigation_id:str}", media_type="text/html")
    async def investigation_page(
        self, investigation_id: Annotated[str, PathParameter(max_length=300)]
    ) -> Response[bytes]:
        html = (STATIC_DIR / "investigation.html").read_bytes()
        return Response(
            html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"}
        )


static_router = create_static_files_router(
    path="/ui/static", directories=[STATIC_DIR], name="ui-static", include_in_schema=False
)
