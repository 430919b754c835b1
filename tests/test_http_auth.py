"""Authentication, scopes, tenant isolation, page tokens and the shared rate limit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from holmes_stream.auth import hash_key
from holmes_stream.settings import ApiKey, AuthSettings, Settings
from tests.conftest import free_port, fresh, load_fixture, make_settings

SECRET = "test-secret-of-at-least-32-bytes-length"
ISSUER = "https://idp.example"
AUDIENCE = "holmes-stream"
KEYS = {
    "key-a": ApiKey(name="a", sha256=hash_key("key-a"), tenant="acme"),
    "key-b": ApiKey(name="b", sha256=hash_key("key-b"), tenant="globex"),
    "key-admin": ApiKey(name="ops", sha256=hash_key("key-admin"), scopes=["admin"]),
    "key-ro": ApiKey(name="ro", sha256=hash_key("key-ro"), scopes=["investigations:read"]),
}


def token(
    key: Any = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any
) -> str:
    body = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
        "scope": "investigations:read investigations:write",
    } | claims
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers=headers
    )


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[Any, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk | {"kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return private, jwks


def secured(stack: Any, uid: str, jwks: Path | None = None, **auth: Any) -> Settings:
    settings = make_settings(stack, uid)
    settings.auth = AuthSettings(
        mode="required",
        jwt_hs256_secret=SECRET,
        jwks_file=jwks,
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway_seconds=0,
        api_keys=list(KEYS.values()),
        protect_metrics=True,
        **auth,
    )
    return settings


async def test_authentication_matrix(stack, uid: str, start_api, rsa_key) -> None:
    private, jwks = rsa_key
    api = await start_api(secured(stack, uid, jwks))
    url = "/api/v1/investigations"
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        unauthorized = {
            "missing": {},
            "not bearer": {"Authorization": "Basic YWxpY2U6cHc="},
            "empty bearer": {"Authorization": "Bearer"},
            "malformed": bearer("abc.def"),
            "garbage jwt": bearer("eyJhbGciOiJIUzI1NiJ9.e30.xxxx"),
            "unknown api key": {"X-API-Key": "nope"},
            "expired": bearer(token(exp=int(time.time()) - 60)),
            "no exp": bearer(token(exp=None)),
            "wrong audience": bearer(token(aud="someone-else")),
            "no audience": bearer(token(aud=None)),
            "wrong issuer": bearer(token(iss="https://evil.example")),
            "wrong secret": bearer(token(key="another-secret-of-at-least-32-bytes")),
            "alg none": bearer(
                jwt.encode(
                    {"sub": "x", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60},
                    None,
                    algorithm="none",
                )
            ),
            "rs256 unknown kid": bearer(token(private, "RS256", headers={"kid": "k9"})),
        }
        for name, headers in unauthorized.items():
            response = await client.get(url, headers=headers)
            assert response.status_code == 401, (name, response.text)
            assert response.headers["content-type"].startswith("application/problem+json"), name
            assert response.headers["www-authenticate"].startswith("Bearer"), name

        ok = {
            "hs256": bearer(token()),
            "rs256 via jwks": bearer(token(private, "RS256", headers={"kid": "k1"})),
            "api key as bearer": bearer("key-a"),
            "api key header": {"X-API-Key": "key-b"},
        }
        for name, headers in ok.items():
            response = await client.get(url, headers=headers)
            assert response.status_code == 200, (name, response.text)

        forbidden = await client.post(url, json={}, headers={"X-API-Key": "key-ro"})
        assert forbidden.status_code == 403 and "investigations:write" in forbidden.json()["detail"]
        no_scope = await client.get(url, headers=bearer(token(scope="")))
        assert no_scope.status_code == 403

        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/docs/openapi.json")).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"X-API-Key": "key-a"})).status_code == 403
        assert (await client.get("/metrics", headers={"X-API-Key": "key-admin"})).status_code == 200


async def _sse_status(url: str, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, headers=headers) as response:
            return response.status_code


async def test_tenants_are_isolated(stack, uid: str, start_api) -> None:
    api = await start_api(secured(stack, uid))
    a, b, admin = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}, {"X-API-Key": "key-admin"}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        alert = fresh(load_fixture("single-alert.json"), uid)
        submitted = await client.post("/api/v1/investigations", json=alert, headers=a)
        assert submitted.status_code == 202, submitted.text
        inv = submitted.json()["investigations"][0]["id"]
        assert inv.startswith("acme.")
        # The same alert from tenant B is another investigation: B's own.
        theirs = await client.post("/api/v1/investigations", json=alert, headers=b)
        b_id = theirs.json()["investigations"][0]["id"]
        assert b_id.startswith("globex.") and b_id != inv

        assert (await client.get(f"/api/v1/investigations/{inv}", headers=a)).json()[
            "tenant"
        ] == "acme"
        for request in (
            client.get(f"/api/v1/investigations/{inv}", headers=b),
            client.post(f"/api/v1/investigations/{inv}/cancel", headers=b),
            client.post(f"/api/v1/investigations/{inv}/access-token", headers=b),
        ):
            response = await request
            assert response.status_code == 404, response.text
        assert await _sse_status(f"{api}/api/v1/investigations/{inv}/events", b) == 404

        listed_b = (await client.get("/api/v1/investigations", headers=b)).json()["items"]
        assert [r["id"] for r in listed_b] == [b_id]
        listed_a = (await client.get("/api/v1/investigations", headers=a)).json()["items"]
        assert [r["id"] for r in listed_a] == [inv]
        sneaky = await client.get("/api/v1/investigations", params={"tenant": "acme"}, headers=b)
        assert sneaky.status_code == 403
        # A token without a tenant sees only untenanted investigations.
        assert (await client.get("/api/v1/investigations", headers=bearer(token()))).json()[
            "items"
        ] == []
        assert (
            await client.get(f"/api/v1/investigations/{inv}", headers=bearer(token()))
        ).status_code == 404

        everything = (await client.get("/api/v1/investigations", headers=admin)).json()["items"]
        assert {r["id"] for r in everything} == {inv, b_id}
        only_acme = (
            await client.get("/api/v1/investigations", params={"tenant": "acme"}, headers=admin)
        ).json()
        assert [r["id"] for r in only_acme["items"]] == [inv]

        # A tenant cannot submit on behalf of another; the JWT's tenant claim counts like a key's.
        request = {"kind": "investigation_request", "alert": alert, "tenant": "globex"}
        assert (
            await client.post("/api/v1/investigations", json=request, headers=a)
        ).status_code == 403
        claim = bearer(token(tenant="acme"))
        assert (await client.get(f"/api/v1/investigations/{inv}", headers=claim)).status_code == 200
        assert (
            await client.get(f"/api/v1/investigations/{b_id}", headers=claim)
        ).status_code == 404

        # Page tokens: read-only, one investigation, never a bearer token.
        issued = await client.post(f"/api/v1/investigations/{inv}/access-token", headers=a)
        assert issued.status_code == 201, issued.text
        page = issued.json()
        assert page["page_url"].endswith(
            f"/ui/investigations/{inv}?access_token={page['access_token']}"
        )
        q = {"access_token": page["access_token"]}
        assert (await client.get(f"/api/v1/investigations/{inv}", params=q)).status_code == 200
        assert (await client.get(f"/api/v1/investigations/{b_id}", params=q)).status_code == 403
        assert (await client.get("/api/v1/investigations", params=q)).status_code == 401
        assert (
            await client.post(f"/api/v1/investigations/{inv}/cancel", params=q)
        ).status_code == 401
        assert (
            await client.get(f"/api/v1/investigations/{inv}", headers=bearer(page["access_token"]))
        ).status_code == 401
        assert (
            await _sse_status(
                f"{api}/api/v1/investigations/{inv}/events?access_token={page['access_token']}", {}
            )
            == 200
        )
        assert (
            await client.post(f"/api/v1/investigations/{inv}/cancel", headers=a)
        ).status_code == 202


async def test_two_replicas_enforce_one_rate_limit(stack, uid: str, start_api) -> None:
    settings = secured(stack, uid)
    settings.ratelimit.enabled = True
    settings.ratelimit.routes = {"GET /api/v1/investigations": 6}
    other = settings.model_copy(deep=True)
    other.api.port = free_port()
    first, second = await start_api(settings), await start_api(other)
    a = {"X-API-Key": "key-a"}
    async with httpx.AsyncClient(timeout=30) as client:
        codes = []
        for i in range(10):
            base = first if i % 2 == 0 else second
            response = await client.get(f"{base}/api/v1/investigations", headers=a)
            codes.append(response.status_code)
            if response.status_code == 429:
                limited = response
        assert codes[:6] == [200] * 6 and codes[6:] == [429] * 4, codes
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "6 requests per 60s" in limited.json()["detail"]
        # Another principal, and another route of the same principal, have their own budgets.
        assert (
            await client.get(f"{first}/api/v1/investigations", headers={"X-API-Key": "key-b"})
        ).status_code == 200
        assert (await client.get(f"{second}/api/v1/investigations/x", headers=a)).status_code == 404
        ok = await client.get(f"{first}/api/v1/investigations", headers={"X-API-Key": "key-b"})
        assert ok.headers["ratelimit-limit"] == "6" and ok.headers["ratelimit-remaining"] == "4"


def test_auth_defaults_to_required_and_disabled_is_loud() -> None:
    import logging

    from holmes_stream.http.app import _warn_if_open

    assert AuthSettings().mode == "required"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("holmes_stream.http.app")
    logger.addHandler(handler)
    try:
        _warn_if_open(Settings(auth=AuthSettings(mode="disabled")))
        _warn_if_open(Settings(auth=AuthSettings(mode="required")))
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "AUTHENTICATION IS DISABLED" in records[0].getMessage()


def test_rs256_public_key_file_and_no_hs256_without_its_secret(tmp_path: Path, rsa_key) -> None:
    from cryptography.hazmat.primitives import serialization

    from holmes_stream.auth import Authenticator, AuthError

    private, _ = rsa_key
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    auth = Authenticator(
        AuthSettings(jwt_public_key_file=tmp_path / "key.pem", audience=AUDIENCE, issuer=ISSUER)
    )
    principal = auth.authenticate(f"Bearer {token(private, 'RS256', tenant='acme')}", None, None)
    assert principal.tenant == "acme" and principal.allows("investigations:write")
    assert not principal.is_admin
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {token(SECRET)}", None, None)  # no HS256 secret configured
