"""web_fetch: read one http(s) page for the model, within limits, behind the SSRF guard.

- Only `http` and `https` URLs without credentials; every hop's host is checked
  by the SSRF guard (`ssrf.py`): IP literals here, names by the connector's
  `VettingResolver` after resolution, and the connection goes to the addresses
  it checked.
- Redirects are followed by hand, at most `max_redirects`, each one checked again.
- Connect, read (silence) and total timeouts; no proxy from the environment, no
  cookies kept between fetches.
- At most `max_bytes` of (decompressed) body are read; a longer page is cut there.
- Only the allowed content types (HTML, XHTML, plain text, Markdown, JSON by
  default); HTML becomes readable text with trafilatura (main content, without
  navigation and boilerplate), off the event loop.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import aiohttp
import structlog
import trafilatura
from aiohttp.abc import AbstractResolver
from trafilatura.utils import load_html
from yarl import URL

from parley_worker.tools.ssrf import AddressPolicy, BlockedAddress, VettingResolver

log = structlog.get_logger("parley_worker.tools.fetch")

DEFAULT_CONTENT_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "text/plain", "text/markdown", "application/json"}
)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t\r\f\v]+")


@dataclass(frozen=True, slots=True)
class FetchLimits:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 20.0
    max_bytes: int = 2 * 1024 * 1024
    max_redirects: int = 5
    content_types: frozenset[str] = DEFAULT_CONTENT_TYPES
    user_agent: str = "ParleyBot/0.1 (web_fetch tool of a chat assistant)"


@dataclass(frozen=True, slots=True)
class Page:
    url: str  # after redirects
    status: int
    content_type: str
    title: str
    text: str
    # The body was longer than `max_bytes` and was cut there.
    cut: bool = False
    redirects: int = 0


class FetchError(Exception):
    """A fetch that produced no page; the message is written for the model.

    `refused` marks a refusal by the SSRF guard (or of a URL's form), as opposed
    to a page that failed to load."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused


@dataclass(slots=True)
class _Body:
    data: bytearray = field(default_factory=bytearray)
    cut: bool = False


class WebFetcher:
    """Owns one HTTP client whose every connection passes the SSRF guard.

    `resolver` replaces the system resolver (tests map names to chosen addresses);
    it is always wrapped in the guard's `VettingResolver`.
    """

    def __init__(
        self,
        limits: FetchLimits | None = None,
        policy: AddressPolicy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.limits = limits or FetchLimits()
        self.policy = policy or AddressPolicy()
        self._resolver = VettingResolver(self.policy, resolver)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            lim = self.limits
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
                # Every connection resolves (and so is vetted) afresh: no name cache.
                use_dns_cache=False,
                limit=32,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=lim.total_timeout,
                    connect=lim.connect_timeout,
                    sock_connect=lim.connect_timeout,
                    sock_read=lim.read_timeout,
                ),
                # No HTTP(S)_PROXY from the environment: a proxy would make the
                # connection, and the address checks would guard nothing.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": lim.user_agent},
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._resolver.close()  # the connector leaves a resolver it was given open

    def check_url(self, raw: str | URL) -> URL:
        """The URL if web_fetch may open it, else FetchError (refused)."""
        try:
            url = raw if isinstance(raw, URL) else URL(raw.strip())
        except (ValueError, TypeError) as exc:
            raise FetchError(f"not a valid URL: {str(raw)[:200]}", refused=True) from exc
        if url.scheme not in ("http", "https"):
            raise FetchError(
                f"only http and https URLs can be fetched, not {url.scheme or 'a relative URL'!r}",
                refused=True,
            )
        if not url.host:
            raise FetchError("the URL has no host", refused=True)
        if url.user is not None or url.password is not None:
            raise FetchError("URLs with credentials are not fetched", refused=True)
        try:
            self.policy.check_host(url.host)
        except BlockedAddress as exc:
            raise FetchError(_refused(exc), refused=True) from exc
        return url.with_fragment(None)

    async def fetch(self, raw_url: str) -> Page:
        url = self.check_url(raw_url)
        try:
            async with asyncio.timeout(self.limits.total_timeout):
                return await self._fetch(url)
        except BlockedAddress as exc:
            raise FetchError(_refused(exc), refused=True) from exc
        except TimeoutError as exc:
            raise FetchError(f"timed out reading {url.host}") from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise FetchError(f"could not resolve {url.host}") from exc
        except aiohttp.InvalidURL as exc:
            raise FetchError(f"not a valid URL: {exc}", refused=True) from exc
        except aiohttp.ClientError as exc:
            raise FetchError(f"could not load the page: {type(exc).__name__}") from exc

    async def _fetch(self, url: URL) -> Page:
        session = self._client()
        lim = self.limits
        hops = 0
        while True:
            async with session.get(
                url,
                allow_redirects=False,
                headers={"Accept": ", ".join([*sorted(lim.content_types), "*/*;q=0.1"])},
            ) as resp:
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError(f"HTTP {resp.status} redirect without a Location")
                    if hops >= lim.max_redirects:
                        raise FetchError(f"more than {lim.max_redirects} redirects")
                    hops += 1
                    url = self.check_url(url.join(URL(location)))
                    log.debug("web_fetch.redirect", to=str(url.origin()))
                    continue
                if resp.status >= 400:
                    raise FetchError(f"HTTP {resp.status} {resp.reason or ''}".strip())
                ctype = resp.content_type.lower()
                if ctype not in lim.content_types:
                    raise FetchError(f"unsupported content type {ctype}")
                body = await _read_limited(resp, lim.max_bytes)
                charset = resp.charset
                status = resp.status
                break
        title, text = await asyncio.to_thread(page_text, bytes(body.data), ctype, charset)
        return Page(
            url=str(url),
            status=status,
            content_type=ctype,
            title=title,
            text=text,
            cut=body.cut,
            redirects=hops,
        )


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> _Body:
    """Read the body as it streams, and stop at `limit` bytes (the rest is never read)."""
    body = _Body()
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        room = limit - len(body.data)
        if len(chunk) > room:
            body.data += chunk[:room]
            body.cut = True
            break
        body.data += chunk
    return body


def _refused(exc: BlockedAddress) -> str:
    return f"refused: {exc} (web_fetch does not reach private or local networks)"


def page_text(body: bytes, content_type: str, charset: str | None) -> tuple[str, str]:
    """The title and readable text of a page (blocking: run it off the event loop)."""
    if content_type not in _HTML_TYPES:
        return "", _tidy(_decode(body, charset))
    source: str | bytes = _decode(body, charset) if charset else body
    tree = load_html(source)
    if tree is None:
        return "", ""
    title = " ".join(str(tree.findtext(".//title") or "").split())
    text = trafilatura.extract(
        tree,
        output_format="txt",
        include_comments=False,
        include_tables=True,
        favor_recall=True,
    )
    if not text:
        # Too little for main-content extraction (a short page): all its text.
        text = trafilatura.html2txt(load_html(source) or source)
    return title[:300], _tidy(text or "")


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return body.decode("utf-8", errors="replace")


def _tidy(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
