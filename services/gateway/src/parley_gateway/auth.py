"""Bearer JWT authentication. The user id is the `sub` claim.

Algorithms are pinned: HS256 with `AUTH_JWT_SECRET`. The token header's `alg`
is never trusted to choose a key type, so `alg: none` and tokens signed with any
other key or algorithm are refused.
"""

from __future__ import annotations

import jwt
from aiohttp import web

from parley_gateway.errors import Unauthorized
from parley_gateway.settings import GatewaySettings

HS_ALGORITHMS = ["HS256"]
MAX_TOKEN_BYTES = 8192


class Authenticator:
    def __init__(self, settings: GatewaySettings) -> None:
        secret = settings.auth_jwt_secret
        self._secret = secret.get_secret_value() if secret else None
        self._audience = settings.auth_audience
        self._issuer = settings.auth_issuer
        self._leeway = settings.auth_leeway

    def user_id(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token")
        token = token.strip()
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("invalid token")
        if self._secret is None:
            raise Unauthorized("no token verification key is configured")
        required = ["exp", "sub"]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=HS_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid token") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 256:
            raise Unauthorized("invalid token: bad sub claim")
        if any(ord(c) < 0x20 or c == "\x7f" for c in sub):
            raise Unauthorized("invalid token: bad sub claim")
        return sub
