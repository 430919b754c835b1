"""The reference of the REST figure: a hello-world Litestar endpoint, served like the API.

python -m bench.hello_app --port P
"""

from __future__ import annotations

import argparse

from litestar import Litestar, get


@get("/hello/{name:str}")
async def hello(name: str) -> dict[str, str]:
    return {"hello": name}


app = Litestar(route_handlers=[hello], openapi_config=None, debug=False)


def main() -> None:
    import uvicorn

    from holmes_stream.cli import uvicorn_config

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    # The same server settings as `holmes-stream api`.
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", a.port)).run()


if __name__ == "__main__":
    main()
