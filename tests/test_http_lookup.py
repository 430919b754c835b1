"""The lookup's direct path (holmes_stream/http/middleware.py) answers as the Litestar handler.

A query string sends a lookup through the handler, so each request below is made both ways
and the answers must match: status, body and headers (but the date, the request id and the
remaining rate-limit budget, which the first of the two requests spent).
"""

from __future__ import annotations

import httpx

from holmes_stream.settings import Settings
from tests.conftest import free_port, fresh, load_fixture, make_settings
from tests.test_http_auth import bearer, secured, token

ROUTE = "/api/v1/investigations/{investigation_id}"
UNCOMPARED = ("date", "x-request-id", "ratelimit-remaining")


def _comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in UNCOMPARED]
    return response.status_code, response.content, headers


async def _both(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    direct = await client.get(path, headers=headers)
    handler = await client.get(path, params={"via": "handler"}, headers=headers)
    assert _comparable(direct) == _comparable(handler), (path, headers)
    return direct, handler


async def test_direct_lookup_matches_the_handler(stack, uid: str, start_api) -> None:
    settings = secured(stack, uid)
    settings.ratelimit.enabled = True
    settings.ratelimit.routes = {f"GET {ROUTE}": 1000}
    api = await start_api(settings)
    a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        submitted = await client.post(
            "/api/v1/investigations", json=fresh(load_fixture("single-alert.json"), uid), headers=a
        )
        assert submitted.status_code == 202, submitted.text
        inv = submitted.json()["investigations"][0]["id"]
        path = f"/api/v1/investigations/{inv}"
        cases = {
            "owner": (a, 200),
            "owner by bearer api key": (bearer("key-a"), 200),
            "admin": ({"X-API-Key": "key-admin"}, 200),
            "tenant claim": (bearer(token(tenant="acme")), 200),
            "other tenant": (b, 404),
            "no tenant": (bearer(token()), 404),
            "missing": ({}, 401),
            "not bearer": ({"Authorization": "Basic YWxpY2U6cHc="}, 401),
            "unknown key": ({"X-API-Key": "nope"}, 401),
            "expired": (bearer(token(exp=1)), 401),
            "no read scope": (bearer(token(scope="", tenant="acme")), 403),
        }
        for name, (headers, status) in cases.items():
            direct, _ = await _both(client, path, headers)
            assert direct.status_code == status, (name, direct.text)
            if status == 200:
                assert direct.json()["id"] == inv
                assert direct.headers["content-type"] == "application/json"
                assert direct.headers["ratelimit-limit"] == "1000"
            else:
                assert direct.headers["content-type"].startswith("application/problem+json")
                assert direct.json()["status"] == status
            if status == 401:
                assert direct.headers["www-authenticate"].startswith("Bearer"), name
            assert direct.headers["x-content-type-options"] == "nosniff"
        await _both(client, f"/api/v1/investigations/{'x' * 301}", a)  # 400 from validation

        # The caller's request id is echoed; a new one otherwise.
        echoed = await client.get(path, headers=a | {"X-Request-ID": f"req-{uid}"})
        assert echoed.headers["x-request-id"] == f"req-{uid}"
        assert len((await client.get(path, headers=a)).headers["x-request-id"]) == 32

        text = (await client.get("/metrics", headers={"X-API-Key": "key-admin"})).text
    for status in (200, 401, 403, 404):
        labels = f'method="GET",route="{ROUTE}",status="{status}"'
        assert f"holmes_stream_http_requests_total{{{labels}}}" in text, status


async def test_direct_lookup_rate_limit(stack, uid: str, start_api) -> None:
    settings = secured(stack, uid)
    settings.ratelimit.enabled = True
    settings.ratelimit.routes = {f"GET {ROUTE}": 4}
    api = await start_api(settings)
    a = {"X-API-Key": "key-a"}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        codes = []
        for i in range(6):  # direct and handler paths share one budget
            params = {"via": "handler"} if i % 2 else {}
            response = await client.get(f"/api/v1/investigations/x{uid}", params=params, headers=a)
            codes.append(response.status_code)
            if response.status_code == 404:
                assert response.headers["ratelimit-remaining"] == str(3 - i)
        assert codes == [404] * 4 + [429] * 2, codes
        assert response.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["ratelimit-remaining"] == "0"
        assert "4 requests per 60s" in response.json()["detail"]


async def test_direct_lookup_answers_503_when_redis_is_away(stack, uid: str, start_api) -> None:
    settings: Settings = make_settings(stack, uid)
    settings.redis.url = f"redis://127.0.0.1:{free_port()}/0"
    api = await start_api(settings)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        direct, _ = await _both(client, "/api/v1/investigations/some-id", {})
    assert direct.status_code == 503
    assert direct.headers["content-type"].startswith("application/problem+json")
    assert "Redis" in direct.json()["detail"] and int(direct.headers["retry-after"]) > 0
