"""The two web tools a `web: true` turn offers: `web_search(query)` and `web_fetch(url)`.

`WebTools` declares them (`specs`), says what a step is doing in words a person
reads (`describe`, sent as a `status` event), and runs a call (`run`), which never
raises: a failure or a refusal becomes a tool error the model reads, so it can
try something else or answer without.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from parley_common.schemas import Source
from yarl import URL

from parley_worker.providers.base import ToolCall, ToolResult, ToolSpec
from parley_worker.settings import WorkerSettings
from parley_worker.tools.fetch import FetchError, FetchLimits, WebFetcher
from parley_worker.tools.search import (
    BraveSearch,
    SearchBackend,
    SearchError,
    SearxngSearch,
)
from parley_worker.tools.ssrf import AddressPolicy
from parley_worker.tools.untrusted import truncate, wrap

log = structlog.get_logger("parley_worker.tools")

WEB_SEARCH = ToolSpec(
    name="web_search",
    description=(
        "Search the web. Returns the titles, URLs and snippets of the top results. Use it "
        "for recent events and for facts you are not sure of, then read the most relevant "
        "result with web_fetch."
    ),
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to search for."}},
        "required": ["query"],
    },
)
WEB_FETCH = ToolSpec(
    name="web_fetch",
    description=(
        "Read a web page: fetches an http or https URL and returns its title and main text. "
        "Use it for a search result or a URL the user gave."
    ),
    parameters={
        "type": "object",
        "properties": {"url": {"type": "string", "description": "The http(s) URL to read."}},
        "required": ["url"],
    },
)
# Sources listed with one reply, at most.
MAX_SOURCES = 20


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: ToolResult
    sources: tuple[Source, ...] = ()
    # Refused by the SSRF guard or the URL rules (not a page that failed to load).
    refused: bool = False


@dataclass(slots=True)
class WebTools:
    fetcher: WebFetcher
    search_backend: SearchBackend | None = None
    max_steps: int = 4
    max_chars: int = 12_000
    max_results: int = 5
    specs: tuple[ToolSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.specs = (WEB_SEARCH, WEB_FETCH) if self.search_backend is not None else (WEB_FETCH,)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> WebTools:
        backend: SearchBackend | None = None
        match settings.web_search_backend():
            case "searxng":
                assert settings.web_search_url is not None
                backend = SearxngSearch(settings.web_search_url, settings.web_search_timeout)
            case "brave":
                assert settings.brave_search_api_key is not None
                backend = BraveSearch(
                    settings.brave_search_url,
                    settings.brave_search_api_key.get_secret_value(),
                    settings.web_search_timeout,
                )
            case None:
                log.warning("web_tools.no_search_backend")
        fetcher = WebFetcher(
            FetchLimits(
                connect_timeout=settings.web_fetch_connect_timeout,
                read_timeout=settings.web_fetch_read_timeout,
                total_timeout=settings.web_fetch_total_timeout,
                max_bytes=settings.web_fetch_max_bytes,
                max_redirects=settings.web_fetch_max_redirects,
                content_types=settings.fetch_content_types(),
            ),
            AddressPolicy(allow_private=settings.web_fetch_allow_private),
        )
        return cls(
            fetcher=fetcher,
            search_backend=backend,
            max_steps=settings.web_max_tool_steps,
            max_chars=settings.web_fetch_max_chars,
            max_results=settings.web_search_max_results,
        )

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        if self.search_backend is not None:
            await self.search_backend.aclose()

    def describe(self, call: ToolCall) -> str:
        """What the step is doing, for a `status` event."""
        if call.name == WEB_SEARCH.name:
            query = _short(_arg(call, "query"), 80)
            return f"Searching the web for “{query}”…" if query else "Searching the web…"
        if call.name == WEB_FETCH.name:
            return f"Reading {_site(_arg(call, 'url'))}…"
        return f"Running {_short(call.name, 40)}…"

    async def run(self, call: ToolCall) -> ToolOutcome:
        try:
            if call.name == WEB_SEARCH.name and self.search_backend is not None:
                return await self._search(call)
            if call.name == WEB_FETCH.name:
                return await self._fetch(call)
            return _error(call, f"there is no tool named {_short(call.name, 60)!r}")
        except Exception as exc:  # a tool must never end the turn
            log.exception("web_tool.crashed", tool=call.name, error_type=type(exc).__name__)
            return _error(call, "the tool failed unexpectedly")

    async def _search(self, call: ToolCall) -> ToolOutcome:
        assert self.search_backend is not None
        query = _arg(call, "query").strip()
        if not query:
            return _error(call, "web_search needs a non-empty `query`")
        try:
            hits = await self.search_backend.search(query[:400], self.max_results)
        except SearchError as exc:
            log.warning("web_search.failed", error=str(exc))
            return _error(call, f"web_search failed: {exc}")
        log.info("web_search.done", backend=self.search_backend.name, results=len(hits))
        if not hits:
            return ToolOutcome(_ok(call, f'No results for "{_short(query, 200)}".'))
        listing = "\n\n".join(
            f"{i}. {hit.title}\n   URL: {hit.url}" + (f"\n   {hit.snippet}" if hit.snippet else "")
            for i, hit in enumerate(hits, 1)
        )
        content = f'Search results for "{_short(query, 200)}":\n' + wrap(
            truncate(listing, self.max_chars)
        )
        sources = tuple(Source(url=h.url, title=h.title) for h in hits)
        return ToolOutcome(_ok(call, content), sources)

    async def _fetch(self, call: ToolCall) -> ToolOutcome:
        url = _arg(call, "url").strip()
        if not url:
            return _error(call, "web_fetch needs a `url`")
        try:
            page = await self.fetcher.fetch(url)
        except FetchError as exc:
            log.info("web_fetch.failed", refused=exc.refused, error=exc.message)
            failed = _error(call, f"web_fetch failed: {exc.message}")
            return ToolOutcome(failed.result, refused=exc.refused)
        log.info(
            "web_fetch.done",
            status=page.status,
            content_type=page.content_type,
            chars=len(page.text),
            cut=page.cut,
            redirects=page.redirects,
        )
        header = f"Page {page.url} (HTTP {page.status}, {page.content_type})"
        if page.title:
            header += f"\nTitle: {page.title}"
        if page.cut:
            header += f"\n[the page is longer than {self.fetcher.limits.max_bytes} bytes; cut]"
        text = truncate(page.text, self.max_chars) if page.text else "[no readable text]"
        title = page.title or _site(page.url)
        source = Source(url=page.url, title=title)
        return ToolOutcome(_ok(call, f"{header}\n{wrap(text)}"), (source,))


def merge_sources(into: list[Source], new: tuple[Source, ...]) -> None:
    """Add sources not listed yet (by URL), up to MAX_SOURCES."""
    known = {s.url for s in into}
    for source in new:
        if len(into) >= MAX_SOURCES:
            return
        if source.url not in known:
            known.add(source.url)
            into.append(source)


def _arg(call: ToolCall, name: str) -> str:
    value: Any = call.arguments.get(name)
    return value if isinstance(value, str) else ""


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _site(raw: str) -> str:
    """The host (and a non-default port) a person recognises, e.g. `example.com`."""
    try:
        url = URL(raw.strip())
    except ValueError:
        url = None
    if url is None or not url.host:
        return _short(raw, 60) or "a page"
    host = url.host.removeprefix("www.")
    if url.explicit_port is not None:
        host = f"{host}:{url.explicit_port}"
    return _short(host, 80)


def _ok(call: ToolCall, content: str) -> ToolResult:
    return ToolResult(call_id=call.id, name=call.name, content=content)


def _error(call: ToolCall, message: str) -> ToolOutcome:
    return ToolOutcome(ToolResult(call_id=call.id, name=call.name, content=message, is_error=True))
