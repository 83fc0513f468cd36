"""Signing keys of an identity provider (`AUTH_JWKS_URL`), fetched with aiohttp and cached.

- Keys are cached by `kid` for `AUTH_JWKS_CACHE_SECONDS`; an unknown `kid` may trigger a
  refetch (a rotated key), but fetches of any kind happen at most once per
  `AUTH_JWKS_MIN_REFETCH_SECONDS`, and concurrent requests share one fetch
  (single-flight). A flood of tokens with made-up `kid`s therefore costs the identity
  provider one request per interval, not one per token.
- Only signature keys of two types are taken: RSA (≥ 2048 bits) for RS256 and EC P-256
  for ES256. The key's type fixes its algorithm; a JWK's own `alg`, when present, must
  agree. Private parts, symmetric (`oct`) keys, `use: enc` keys and keys without a
  plain `kid` are skipped.
- A failed refetch keeps the keys already known (an outage of the identity provider
  does not log everyone out); the failure is logged.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
import structlog

log = structlog.get_logger("parley_gateway.jwks")

# A `kid` is an opaque token: letters, digits, `.`, `_`, `-`, not starting with a dot.
# Anything else (`../../etc/passwd`, URLs, 10 kB of junk) is refused before any lookup.
KID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str  # "RS256" or "ES256": decided by the key's type, never by a token
    jwk: jwt.PyJWK


def _algorithm_for(jwk: dict[str, Any]) -> str | None:
    if jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None
    match jwk.get("kty"), jwk.get("crv"):
        case "RSA", _:
            alg = "RS256"
        case "EC", "P-256":
            alg = "ES256"
        case _:
            return None
    if jwk.get("alg", alg) != alg:
        return None
    return alg


def parse_jwks(data: object) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document, by kid (unusable ones are skipped)."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, SigningKey] = {}
    for jwk in data["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        alg = _algorithm_for(jwk)
        if not isinstance(kid, str) or not KID_RE.match(kid) or alg is None:
            continue
        try:
            parsed = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if alg == "RS256" and getattr(parsed.key, "key_size", 0) < MIN_RSA_BITS:
            continue
        keys[kid] = SigningKey(kid, alg, parsed)
    return keys


class JwksCache:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        ttl: float,
        min_refetch: float,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._session = session
        self._url = url
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, successful or not
        self._generation = 0  # bumped by every attempt, so waiters see one happened
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def loaded(self) -> bool:
        return self._fetched_at is not None

    async def get(self, kid: str) -> SigningKey | None:
        """The key for `kid`, refetching the document when it is stale or the kid is
        new, within the refetch budget."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._ttl
        if stale or kid not in self._keys:
            await self._refresh()
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refetch

    async def _refresh(self) -> None:
        if not self._may_fetch(self._clock()):
            return
        seen = self._generation
        async with self._lock:
            if self._generation != seen or not self._may_fetch(self._clock()):
                return  # another request fetched while this one waited
            self._attempted_at = self._clock()
            self._generation += 1
            self.fetches += 1
            try:
                keys = await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "auth.jwks_fetch_failed", error_type=type(exc).__name__, kept=len(self._keys)
                )
                return
            self._keys = keys
            self._fetched_at = self._clock()
            log.info("auth.jwks_fetched", keys=len(keys))

    async def _fetch(self) -> dict[str, SigningKey]:
        async with self._session.get(
            self._url,
            timeout=self._timeout,
            max_redirects=3,
            headers={"Accept": "application/json"},
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"JWKS answered HTTP {resp.status}")
            raw = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError("JWKS is not JSON") from exc
        return parse_jwks(data)
