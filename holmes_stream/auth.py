"""Who is calling: bearer JWTs, hashed API keys and the UI's short-lived page tokens.

- ``Authorization: Bearer <JWT>``: HS256 with ``auth.jwt_hs256_secret`` or RS256 with
  ``auth.jwt_public_key_file`` / ``auth.jwks_file``; ``exp`` is required, ``aud`` and ``iss`` are
  checked when configured. Scopes come from ``scope`` (space separated) or ``scopes``/``scp``
  (list); the tenant from the ``tenant`` claim.
- ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``: the key's SHA-256 digest is looked
  up in ``auth.api_keys``.
- ``?access_token=<page token>``: only on the read endpoints of one investigation, for the
  browser page (``EventSource`` cannot send headers); issued by
  ``POST /api/v1/investigations/{id}/access-token``, valid ``auth.page_token_ttl_seconds``.

Scopes: ``investigations:read``, ``investigations:write``, ``admin`` (everything, every tenant).
A principal with a tenant sees and submits only that tenant's investigations; one without a
tenant sees only investigations without one, unless it is ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK

from holmes_stream.settings import AuthSettings

log = logging.getLogger(__name__)

READ = "investigations:read"
WRITE = "investigations:write"
ADMIN = "admin"
ALL_SCOPES = frozenset({READ, WRITE, ADMIN})
PAGE_AUDIENCE = "holmes-stream:page"
_HMAC_ALGS = ["HS256"]
_PUBLIC_ALGS = ["RS256"]


class AuthError(Exception):
    """The caller could not be authenticated: answered 401."""

    def __init__(self, detail: str, error: str = "invalid_token") -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error


@dataclass(frozen=True)
class Principal:
    id: str
    kind: str  # jwt, api_key, page, anonymous
    scopes: frozenset[str] = field(default_factory=frozenset)
    tenant: str | None = None
    investigation_id: str | None = None  # page tokens: the one investigation they open

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def allows(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def can_see(self, record_tenant: str | None, investigation_id: str | None = None) -> bool:
        if self.investigation_id is not None and investigation_id != self.investigation_id:
            return False
        return self.is_admin or record_tenant == self.tenant


ANONYMOUS = Principal("anonymous", "anonymous", ALL_SCOPES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw: Any = claims.get("scope", claims.get("scopes", claims.get("scp", [])))
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(str(s) for s in raw)


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.disabled = settings.mode == "disabled"
        self._keys = {k.sha256.lower(): k for k in settings.api_keys}
        self._hs_secret = (
            settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else None
        )
        self._public_key: Any = None
        if settings.jwt_public_key_file is not None:
            self._public_key = _load_pem(settings.jwt_public_key_file.read_text())
        self._jwks: dict[str, Any] = {}
        if settings.jwks_file is not None:
            for entry in json.loads(settings.jwks_file.read_text()).get("keys", []):
                jwk = PyJWK.from_dict(entry)
                self._jwks[entry.get("kid", "")] = jwk.key
        if settings.page_token_secret is not None:
            self._page_secret = settings.page_token_secret.get_secret_value()
        elif self._hs_secret is not None:
            self._page_secret = "page:" + self._hs_secret
        else:
            self._page_secret = secrets.token_urlsafe(32)
            if not self.disabled:
                log.warning(
                    "auth.page_token_secret is not set: UI access tokens are valid on this"
                    " replica only"
                )

    # ------------------------------------------------------------------ credentials
    def authenticate(
        self, authorization: str | None, api_key: str | None, page_token: str | None
    ) -> Principal:
        if self.disabled:
            return ANONYMOUS
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise AuthError("the Authorization header must be `Bearer <token>`")
            credential = credential.strip()
            principal = self._api_key(credential)
            return principal if principal is not None else self._jwt(credential)
        if api_key:
            principal = self._api_key(api_key)
            if principal is None:
                raise AuthError("unknown API key")
            return principal
        if page_token:
            return self._page(page_token)
        raise AuthError("credentials required: a bearer token or an API key", "missing_token")

    def _api_key(self, key: str) -> Principal | None:
        digest = hash_key(key)
        for known, entry in self._keys.items():
            if hmac.compare_digest(known, digest):
                return Principal(
                    f"key:{entry.name}", "api_key", frozenset(entry.scopes), entry.tenant
                )
        return None

    def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        key: Any
        if alg in _HMAC_ALGS and self._hs_secret is not None:
            key = self._hs_secret
        elif alg in _PUBLIC_ALGS and (self._public_key is not None or self._jwks):
            key = self._jwks.get(header.get("kid", "")) if self._jwks else self._public_key
            if key is None and self._jwks:
                key = self._public_key
            if key is None:
                raise AuthError("unknown signing key (kid)")
        else:
            raise AuthError(f"tokens signed with {alg!r} are not accepted")
        claims = self._decode(token, key, alg, self.settings.audience, self.settings.issuer)
        if claims.get("aud") == PAGE_AUDIENCE:
            raise AuthError("a page token is not a bearer token")
        sub = str(claims.get("sub") or "")
        tenant = claims.get(self.settings.tenant_claim)
        return Principal(
            f"jwt:{claims.get('iss', '')}:{sub}",
            "jwt",
            _scopes(claims),
            str(tenant) if tenant else None,
        )

    def _decode(
        self, token: str, key: Any, alg: str, audience: str | None, issuer: str | None
    ) -> dict[str, Any]:
        require = ["exp"] + (["aud"] if audience else []) + (["iss"] if issuer else [])
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": require, "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token audience not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token issuer not accepted") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc

    # ------------------------------------------------------------------ page tokens
    def issue_page_token(
        self, principal: Principal, investigation_id: str, tenant: str | None
    ) -> tuple[str, int]:
        """A read-only token for one investigation, for the browser page; with its expiry."""
        expires = int(time.time()) + self.settings.page_token_ttl_seconds
        claims = {
            "sub": principal.id,
            "aud": PAGE_AUDIENCE,
            "inv": investigation_id,
            "tenant": tenant,
            "exp": expires,
        }
        return jwt.encode(claims, self._page_secret, algorithm="HS256"), expires

    def _page(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._page_secret,
                algorithms=["HS256"],
                audience=PAGE_AUDIENCE,
                options={"require": ["exp", "aud", "inv"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("access token expired: reload the page with a new link") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid access token: {exc}") from exc
        return Principal(
            f"page:{claims.get('sub', '')}",
            "page",
            frozenset({READ}),
            claims.get("tenant"),
            investigation_id=str(claims["inv"]),
        )


def _load_pem(pem: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem.encode())
