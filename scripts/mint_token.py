"""Mint a development JWT: `make token USER=user-123`.

Signed HS256 with AUTH_JWT_SECRET (or the development secret `make run` uses
when none is set), valid for 24 hours.
"""

from __future__ import annotations

import os
import sys
import time

import jwt

DEV_SECRET = "parley-development-secret-do-not-use-in-production"  # noqa: S105 - documented development default


def main() -> None:
    user = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else "user-123"
    secret = os.environ.get("AUTH_JWT_SECRET") or DEV_SECRET
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + 24 * 3600}
    if aud := os.environ.get("AUTH_AUDIENCE"):
        claims["aud"] = aud
    if iss := os.environ.get("AUTH_ISSUER"):
        claims["iss"] = iss
    print(jwt.encode(claims, secret, algorithm="HS256"))


if __name__ == "__main__":
    main()
