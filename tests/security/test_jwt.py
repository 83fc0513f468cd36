"""JWT authentication (issue #7, point 1): algorithms pinned per key type, required
claims, audience and issuer, leeway, JWKS with a bounded refetch budget, and the
key-carrying headers (`jku`, `x5u`, `jwk`) ignored. Every refusal is a 401."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from packaging.version import Version
from parley_gateway.auth import AuthConfigError, Authenticator, check_auth_settings
from parley_gateway.errors import Unauthorized, Unavailable
from parley_gateway.jwks import JwksCache, parse_jwks
from parley_gateway.settings import GatewaySettings

from tests.security.conftest import AUDIENCE, ISSUER, IdentityProvider, status_of
from tests.support.history import uid
from tests.support.stack import JWT_SECRET, Stack

pytestmark = pytest.mark.security


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge_hs256(
    key: bytes, claims: dict[str, Any], header: dict[str, Any] | None = None, alg: str = "HS256"
) -> str:
    """An HMAC token made by hand (pyjwt refuses to sign HS256 with a PEM key)."""
    head = _b64(json.dumps({"alg": alg, "typ": "JWT", **(header or {})}).encode())
    body = _b64(json.dumps(claims).encode())
    digest = hashlib.sha512 if alg == "HS512" else hashlib.sha256
    sig = hmac.new(key, f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{_b64(sig)}"


def unsigned(alg: str, claims: dict[str, Any], **header: Any) -> str:
    head = _b64(json.dumps({"alg": alg, "typ": "JWT", **header}).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}."


def hs(stack: Stack, user: str, **claims: Any) -> str:
    """An HS256 token with the test secret, audience and issuer (override any claim)."""
    return stack.token(user, **({"aud": AUDIENCE, "iss": ISSUER} | claims))


def test_pyjwt_is_a_version_without_known_algorithm_confusion_flaws():
    # CVE-2022-29217 (algorithm confusion) was fixed in 2.4.0, CVE-2024-53861 (partial
    # issuer match) in 2.10.1.
    assert Version(jwt.__version__) >= Version("2.10.1")


async def test_valid_tokens_of_each_kind_are_accepted(sec_stack: Stack, idp: IdentityProvider):
    user = uid()
    assert await status_of(sec_stack, hs(sec_stack, user)) == 200
    assert await status_of(sec_stack, idp.rs256(user)) == 200
    assert await status_of(sec_stack, idp.es256(user)) == 200
    # A small clock skew is tolerated (AUTH_LEEWAY, 30 s by default).
    assert await status_of(sec_stack, idp.rs256(user, exp=int(time.time()) - 10)) == 200


def _rsa_public_pem(idp: IdentityProvider) -> bytes:
    return idp.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


BAD_TOKENS: dict[str, Any] = {
    "alg none": lambda s, i, u: jwt.encode(i.claims(u), None, algorithm="none"),
    "alg None, by hand": lambda s, i, u: unsigned("None", i.claims(u)),
    "alg NONE with the RSA kid": lambda s, i, u: unsigned("NONE", i.claims(u), kid="rsa-1"),
    "HS256 signed with the RS public key (PEM)": lambda s, i, u: forge_hs256(
        _rsa_public_pem(i), i.claims(u), {"kid": "rsa-1"}
    ),
    "HS256 signed with the RS public key (JWK JSON)": lambda s, i, u: forge_hs256(
        json.dumps(i.jwks()["keys"][0]).encode(), i.claims(u), {"kid": "rsa-1"}
    ),
    "HS256 with another secret": lambda s, i, u: jwt.encode(
        i.claims(u), "another-secret-that-is-32-bytes-long!", "HS256"
    ),
    "HS512 with the right secret": lambda s, i, u: forge_hs256(
        JWT_SECRET.encode(), i.claims(u), alg="HS512"
    ),
    "RS512 with the right key": lambda s, i, u: jwt.encode(
        i.claims(u), i.rsa_key, "RS512", headers={"kid": "rsa-1"}
    ),
    "PS256 with the right key": lambda s, i, u: jwt.encode(
        i.claims(u), i.rsa_key, "PS256", headers={"kid": "rsa-1"}
    ),
    "RS256 naming the EC key": lambda s, i, u: i.rs256(u, kid="ec-1"),
    "ES256 naming the RSA key": lambda s, i, u: i.es256(u, kid="rsa-1"),
    "RS256 without kid": lambda s, i, u: jwt.encode(i.claims(u), i.rsa_key, "RS256"),
    "missing exp": lambda s, i, u: i.rs256(u, exp=None),
    "missing iat": lambda s, i, u: i.rs256(u, iat=None),
    "missing sub": lambda s, i, u: i.rs256(u, sub=None),
    "HS256 missing exp": lambda s, i, u: hs(s, u, exp=None),
    "HS256 missing iat": lambda s, i, u: hs(s, u, iat=None),
    "expired": lambda s, i, u: i.rs256(u, exp=int(time.time()) - 120),
    "HS256 expired": lambda s, i, u: hs(s, u, exp=int(time.time()) - 120),
    "nbf in the future": lambda s, i, u: i.rs256(u, nbf=int(time.time()) + 120),
    "iat in the future": lambda s, i, u: i.rs256(u, iat=int(time.time()) + 120),
    "wrong aud": lambda s, i, u: i.rs256(u, aud="someone-else"),
    "no aud": lambda s, i, u: i.rs256(u, aud=None),
    "wrong iss": lambda s, i, u: i.rs256(u, iss="https://evil.test/"),
    "iss that contains the issuer": lambda s, i, u: i.rs256(u, iss=f"{ISSUER}evil"),
    "iss that the issuer contains": lambda s, i, u: i.rs256(u, iss="idp.parley.test"),
    "HS256 wrong iss": lambda s, i, u: hs(s, u, iss="https://evil.test/"),
    "empty sub": lambda s, i, u: i.rs256(u, sub=""),
    "numeric sub": lambda s, i, u: i.rs256(u, sub=12345),
    "sub with a newline": lambda s, i, u: i.rs256(u, sub="alice\r\nX-Evil: 1"),
    "sub of 300 characters": lambda s, i, u: i.rs256(u, sub="a" * 300),
    "exp not a number": lambda s, i, u: i.rs256(u, exp="tomorrow"),
    "signature stripped": lambda s, i, u: i.rs256(u).rsplit(".", 1)[0] + ".",
    "garbage": lambda s, i, u: "not.a.jwt",
    "long (under the header limit)": lambda s, i, u: "eyJ" + "A" * 8000,
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_401(sec_stack: Stack, idp: IdentityProvider, name: str):
    token = BAD_TOKENS[name](sec_stack, idp, uid())
    async with sec_stack.http.get(
        f"{sec_stack.url}/api/me/settings", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 401, (name, body)
    assert body["code"] == "unauthorized"
    assert token not in json.dumps(body)


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "bearer\tabc"],
)
async def test_missing_or_malformed_authorization_is_401(sec_stack: Stack, header: str):
    async with sec_stack.http.get(
        f"{sec_stack.url}/api/me/settings", headers={"Authorization": header}
    ) as resp:
        assert resp.status == 401


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../etc/passwd",
        "..",
        "/dev/null",
        "keys/rsa-1",
        "https://evil.test/jwks.json",
        "rsa-1\x00",
        "rsa-1 ",
        "k" * 200,
        "",
    ],
)
async def test_path_like_or_odd_kid_is_401_without_a_fetch(
    sec_stack: Stack, idp: IdentityProvider, kid: str
):
    before = sum(idp.hits.values())
    token = jwt.encode(idp.claims(uid()), idp.rsa_key, "RS256", headers={"kid": kid})
    assert await status_of(sec_stack, token) == 401
    assert sum(idp.hits.values()) == before


async def test_a_flood_of_random_kids_does_not_flood_the_key_endpoint(
    sec_stack: Stack, idp: IdentityProvider
):
    user = uid()
    assert await status_of(sec_stack, idp.rs256(user)) == 200  # keys are cached now
    before = idp.hits["/jwks.json"]
    tokens = [idp.rs256(user, kid=f"kid-{secrets.token_hex(8)}") for _ in range(300)]
    statuses = await asyncio.gather(*(status_of(sec_stack, t) for t in tokens))
    assert set(statuses) == {401}
    # At most one refetch per AUTH_JWKS_MIN_REFETCH_SECONDS (300 s here), whatever the flood.
    assert idp.hits["/jwks.json"] - before <= 1
    assert await status_of(sec_stack, idp.rs256(user)) == 200


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_headers_are_never_fetched(
    sec_stack: Stack, idp: IdentityProvider, header: str
):
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = f"/attacker/{header}.json"
    for kid in ("attacker-1", "rsa-1"):
        token = jwt.encode(
            idp.claims(uid()),
            attacker,
            "RS256",
            headers={"kid": kid, header: f"{idp.url}{path}"},
        )
        assert await status_of(sec_stack, token) == 401
    assert idp.hits[path] == 0


async def test_an_embedded_jwk_header_is_not_trusted(sec_stack: Stack, idp: IdentityProvider):
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    embedded = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    for kid in ("attacker-1", "rsa-1"):
        token = jwt.encode(
            idp.claims(uid()), attacker, "RS256", headers={"kid": kid, "jwk": embedded}
        )
        assert await status_of(sec_stack, token) == 401


async def test_a_forged_x_parley_user_header_cannot_pick_the_user(sec_stack: Stack):
    """The user is the token's `sub`; a client's X-Parley-User is ignored."""
    victim, attacker = uid("victim"), uid("attacker")
    headers = {"Authorization": f"Bearer {hs(sec_stack, victim)}"}
    async with sec_stack.http.put(
        f"{sec_stack.url}/api/me/settings", json={"default_provider": "groq"}, headers=headers
    ) as resp:
        assert resp.status == 200
    forged = {"Authorization": f"Bearer {hs(sec_stack, attacker)}", "X-Parley-User": victim}
    async with sec_stack.http.get(f"{sec_stack.url}/api/me/settings", headers=forged) as resp:
        assert (await resp.json()) == {"default_provider": None}
    async with sec_stack.http.get(
        f"{sec_stack.url}/api/me/settings", headers={"X-Parley-User": victim}
    ) as resp:
        assert resp.status == 401


# --- the key cache on its own ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_unknown_kids_share_one_fetch(idp: IdentityProvider):
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(session, f"{idp.url}/jwks.json", ttl=300, min_refetch=30)
        found = await asyncio.gather(*(cache.get(f"nope-{i}") for i in range(100)))
        assert found == [None] * 100
        assert cache.fetches == 1
        assert (await cache.get("rsa-1")) is not None
        assert cache.fetches == 1


async def test_a_rotated_key_is_found_after_the_refetch_interval(idp: IdentityProvider):
    clock = Clock()
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(session, f"{idp.url}/jwks.json", ttl=300, min_refetch=30, clock=clock)
        assert (await cache.get("rsa-1")) is not None
        idp.extra_keys.append(
            jwt.algorithms.RSAAlgorithm.to_jwk(new_key.public_key(), as_dict=True)
            | {"kid": "rsa-2"}
        )
        try:
            clock.now += 5
            assert (await cache.get("rsa-2")) is None  # inside the refetch budget
            clock.now += 30
            got = await cache.get("rsa-2")
            assert got is not None and got.algorithm == "RS256"
            assert cache.fetches == 2
            # Stale keys are refetched after the cache time even when the kid is known.
            clock.now += 301
            await cache.get("rsa-1")
            assert cache.fetches == 3
        finally:
            idp.extra_keys.clear()


def test_only_usable_signature_keys_are_taken():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = jwt.algorithms.RSAAlgorithm.to_jwk(strong.public_key(), as_dict=True)
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(strong))
    keys = parse_jwks(
        {
            "keys": [
                pub | {"kid": "good"},
                jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True)
                | {"kid": "weak"},
                pub | {"kid": "enc", "use": "enc"},
                pub | {"kid": "mislabelled", "alg": "HS256"},
                pub | {"kid": "../escape"},
                private | {"kid": "private"},
                {"kty": "oct", "k": _b64(b"x" * 32), "kid": "symmetric"},
                {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
                "not an object",
            ]
        }
    )
    assert list(keys) == ["good"]
    assert keys["good"].algorithm == "RS256"


async def test_identity_provider_down_before_any_fetch_is_503_not_401():
    settings = GatewaySettings(_env_file=None, auth_jwks_url="http://127.0.0.1:9/jwks.json")
    async with aiohttp.ClientSession() as session:
        auth = Authenticator(settings, session)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        token = jwt.encode(
            {"sub": "u", "iat": now, "exp": now + 60}, key, "RS256", headers={"kid": "k1"}
        )
        with pytest.raises(Unavailable):
            await auth.verify(token)
        # Within the refetch budget nothing is fetched again; still not a 401.
        with pytest.raises(Unavailable):
            await auth.verify(token)
        with pytest.raises(Unauthorized):
            await auth.verify(forge_hs256(b"x", {"sub": "u"}))  # no HS secret configured


@pytest.mark.parametrize(
    "settings",
    [
        {"auth_jwt_secret": "short-secret"},
        {"auth_jwks_url": "file:///etc/passwd"},
    ],
    ids=["HS256 secret under 32 bytes", "JWKS URL not http(s)"],
)
def test_unsafe_auth_settings_refuse_to_start(settings: dict[str, str]):
    with pytest.raises(AuthConfigError):
        check_auth_settings(GatewaySettings(_env_file=None, **settings))  # type: ignore[arg-type]


async def test_a_verified_token_is_remembered_no_longer_than_the_cache_time_or_its_exp():
    secret, rotated = "s" * 40, "r" * 40
    clock = Clock()
    clock.now = time.time()
    now = int(clock.now)

    def token(exp_in: int) -> str:
        return jwt.encode({"sub": "u", "iat": now, "exp": now + exp_in}, secret, "HS256")

    def authenticator(session: aiohttp.ClientSession, seconds: float) -> Authenticator:
        settings = GatewaySettings(
            _env_file=None,
            auth_jwt_secret=secret,  # type: ignore[arg-type]
            auth_leeway=0,
            auth_verified_cache_seconds=seconds,
        )
        return Authenticator(settings, session, clock=clock)

    async with aiohttp.ClientSession() as session:
        auth = authenticator(session, 60)
        long_lived, short_lived = token(3600), token(10)
        assert await auth.verify(long_lived) == "u"
        assert await auth.verify(short_lived) == "u"
        # The secret changes (a rotation): what was verified is still taken as verified...
        auth._secret = rotated
        assert await auth.verify(long_lived) == "u"
        assert await auth.verify(short_lived) == "u"
        # ...but never past its own exp (plus the leeway, 0 here)...
        clock.now += 11
        with pytest.raises(Unauthorized):
            await auth.verify(short_lived)
        assert await auth.verify(long_lived) == "u"
        # ...nor past the cache time: then it is checked again, and fails.
        clock.now += 50
        with pytest.raises(Unauthorized):
            await auth.verify(long_lived)

        # AUTH_VERIFIED_CACHE_SECONDS=0: every request's token is checked.
        auth = authenticator(session, 0)
        assert await auth.verify(long_lived) == "u"
        auth._secret = rotated
        with pytest.raises(Unauthorized):
            await auth.verify(long_lived)
