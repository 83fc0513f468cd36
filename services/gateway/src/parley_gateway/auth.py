"""Bearer JWT authentication. The user id is the `sub` claim.

Algorithms are pinned per key type and never mixed:

- HS256, only with the shared secret `AUTH_JWT_SECRET`;
- RS256 / ES256, only with a key from the identity provider's JWKS (`AUTH_JWKS_URL`),
  chosen by `kid`; the key's own type decides which one algorithm it verifies.

The token header only says which of the configured families to try; it never supplies
a key: `jku`, `x5u`, `jwk` and `x5c` headers are ignored (nothing is ever fetched from a
URL a token names). So `alg: none`, HS256 signed with an RSA public key, and tokens
signed with any other key are all refused.

Claims: `exp`, `iat` and `sub` are required; `nbf` is honoured; `aud` and `iss` are
checked when AUTH_AUDIENCE / AUTH_ISSUER are set; clock skew up to AUTH_LEEWAY seconds.
Every refusal is a 401 with a short reason that never repeats the token.

A verified token is remembered (by its SHA-256) for AUTH_VERIFIED_CACHE_SECONDS, never
past its own `exp` plus the leeway, so a client's next requests skip the signature
check; only tokens that passed every check are remembered. A key removed from the JWKS
is trusted for as long already (the key document is cached for longer).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import structlog
from aiohttp import web

from parley_gateway.errors import Unauthorized, Unavailable
from parley_gateway.jwks import KID_RE, JwksCache, SigningKey
from parley_gateway.settings import GatewaySettings

log = structlog.get_logger("parley_gateway.auth")

HS_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ["exp", "iat", "sub"]
MAX_TOKEN_BYTES = 8192
MAX_SUB_CHARS = 256
MIN_SECRET_BYTES = 32
# Verified tokens remembered at most; the oldest is forgotten first.
VERIFIED_CACHE_SIZE = 4096


class AuthConfigError(ValueError):
    """The gateway's auth settings are unusable (it refuses to start)."""


def check_auth_settings(settings: GatewaySettings) -> None:
    secret = settings.auth_jwt_secret
    if secret is not None and len(secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
        raise AuthConfigError(f"AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
    url = settings.auth_jwks_url
    if url is not None and not url.startswith(("https://", "http://")):
        raise AuthConfigError("AUTH_JWKS_URL must be an http(s) URL")


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthorized("invalid token")
    return token


class Authenticator:
    def __init__(
        self,
        settings: GatewaySettings,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_auth_settings(settings)
        self._clock = clock
        self._remember_seconds = settings.auth_verified_cache_seconds
        # SHA-256 of a verified token -> (its user, until when it is taken as verified).
        self._verified: dict[bytes, tuple[str, float]] = {}
        secret = settings.auth_jwt_secret
        self._secret = secret.get_secret_value() if secret else None
        self._audience = settings.auth_audience
        self._issuer = settings.auth_issuer
        self._leeway = settings.auth_leeway
        self.jwks: JwksCache | None = None
        if settings.auth_jwks_url:
            self.jwks = JwksCache(
                session,
                settings.auth_jwks_url,
                ttl=settings.auth_jwks_cache_seconds,
                min_refetch=settings.auth_jwks_min_refetch_seconds,
            )

    async def user_id(self, request: web.Request) -> str:
        return await self.verify(bearer_token(request))

    async def verify(self, token: str) -> str:
        """The `sub` of a valid token; Unauthorized otherwise."""
        if self._remember_seconds <= 0:
            return (await self._verify(token))[0]
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        known = self._verified.get(digest)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[digest]
        sub, expires = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[digest] = (sub, min(expires + self._leeway, now + self._remember_seconds))
        return sub

    async def _verify(self, token: str) -> tuple[str, float]:
        """The signature and claims checked: the token's `sub` and `exp`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid token") from exc
        key: Any
        alg = header.get("alg")
        if alg in HS_ALGORITHMS and self._secret is not None:
            key, algorithms = self._secret, list(HS_ALGORITHMS)
        elif alg in JWKS_ALGORITHMS and self.jwks is not None:
            signing = await self._jwks_key(header.get("kid"))
            key, algorithms = signing.jwk, [signing.algorithm]
        else:
            raise Unauthorized("invalid token: algorithm not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_aud": self._audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid token") from exc
        return _checked_sub(claims.get("sub")), float(claims["exp"])

    async def _jwks_key(self, kid: object) -> SigningKey:
        assert self.jwks is not None
        if not isinstance(kid, str) or not KID_RE.match(kid):
            raise Unauthorized("invalid token: bad kid")
        signing = await self.jwks.get(kid)
        if signing is None:
            if not self.jwks.loaded:
                raise Unavailable(
                    "the identity provider's keys are unavailable", code="auth_keys_unavailable"
                )
            raise Unauthorized("invalid token: unknown kid")
        return signing


def _checked_sub(sub: object) -> str:
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
        raise Unauthorized("invalid token: bad sub claim")
    if any(ord(c) < 0x20 or c == "\x7f" for c in sub) or sub != sub.strip():
        raise Unauthorized("invalid token: bad sub claim")
    return sub
