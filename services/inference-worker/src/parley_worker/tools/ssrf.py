"""The SSRF guard of web_fetch: which addresses a fetched URL may reach.

A model chooses the URLs web_fetch opens, and a page chooses where it redirects,
so neither may steer the worker into its own network: loopback, private (RFC 1918,
`fc00::/7` unique-local), link-local (`169.254.0.0/16` with the cloud metadata
service at 169.254.169.254, `fe80::/10`), unspecified, multicast, reserved and
other not-globally-routable ranges are refused, IPv4 and IPv6 alike, including
IPv4 addresses wrapped in IPv6 (IPv4-mapped `::ffff:a.b.c.d`, 6to4 `2002::/16`,
Teredo `2001::/32`, NAT64 `64:ff9b::/96`).

The check is on addresses, after DNS resolution, never on names: a
`VettingResolver` inside the HTTP client's connector resolves a host, refuses it
when any address is not allowed, and hands the connector exactly the addresses it
checked, so the connection goes to a vetted address (no second lookup, hence no
DNS-rebinding gap). IP-literal URLs never reach a resolver, so the fetcher checks
them with `AddressPolicy.check_host` itself; every redirect hop goes through both.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class BlockedAddress(Exception):
    """A URL's host is, or resolves to, an address web_fetch may not reach.

    Not an OSError on purpose: aiohttp wraps resolver OSErrors into connection
    errors, and this refusal must reach the tool as itself."""

    def __init__(self, host: str, address: str, kind: str) -> None:
        self.host = host
        self.address = address
        self.kind = kind
        if host == address:
            message = f"{address} is {a_kind(kind)}"
        else:
            message = f"{host} resolves to {address}, {a_kind(kind)}"
        super().__init__(message)


def a_kind(kind: str) -> str:
    """`an IPv4-mapped loopback address`, `a private address`."""
    article = "an" if kind.startswith(("IPv4", "unspecified")) else "a"
    return f"{article} {kind} address"


def classify(ip: IPAddress) -> str | None:
    """The kind of non-public address `ip` is, or None for a public (global) address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            label, v4 = embedded
            inner = classify(v4)
            if inner is not None:
                return f"{label} {inner}"
            # e.g. ::ffff:8.8.8.8 is 8.8.8.8; the wrapping itself is no reason to refuse
            return None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_ip(host: str) -> IPAddress | None:
    """`host` as an IP address (brackets and an IPv6 zone allowed), or None for a name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if "%" in bare:
        try:
            return ipaddress.ip_address(bare.split("%", 1)[0])
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses web_fetch may connect to.

    `allow_private` (WEB_FETCH_ALLOW_PRIVATE, tests only) allows every address.
    `allowed` is an explicit list of networks let through despite their kind (a
    test's own loopback server); production passes none.
    """

    allow_private: bool = False
    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` is refused (its kind), or None when it may be reached."""
        if self.allow_private:
            return None
        kind = classify(ip)
        if kind is None:
            return None
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        return kind

    def check(self, host: str, address: str) -> None:
        """Raise BlockedAddress unless `address` (what `host` is or resolves to) is allowed."""
        ip = parse_ip(address)
        if ip is None:
            raise BlockedAddress(host, address, "unparsable")
        kind = self.refusal(ip)
        if kind is not None:
            raise BlockedAddress(host, address, kind)

    def check_host(self, host: str) -> bool:
        """Check an IP-literal host; False when `host` is a name (the resolver checks it)."""
        if parse_ip(host) is None:
            return False
        bare = host.strip("[]")
        self.check(bare, bare)
        return True


class VettingResolver(AbstractResolver):
    """Resolves with `inner`, then refuses the host if any address is not allowed.

    Refusing on *any* (not dropping the bad ones) keeps a name that mixes public
    and private addresses from being half-trusted. What it returns is exactly
    what it checked, and the connector connects to those addresses (with the
    hostname kept for the Host header, SNI and certificate checks).
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner

    def _resolver(self) -> AbstractResolver:
        if self._inner is None:
            # Made on first use: it binds the running loop.
            from aiohttp.resolver import ThreadedResolver

            self._inner = ThreadedResolver()
        return self._inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver().resolve(host, port, family)
        vet(self._policy, host, (r["host"] for r in results))
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def vet(policy: AddressPolicy, host: str, addresses: Iterable[str]) -> None:
    seen = False
    for address in addresses:
        seen = True
        policy.check(host, address)
    if not seen:
        raise OSError(f"{host} resolves to no address")
