"""web_search backends: a SearXNG-compatible JSON endpoint, or the keyed Brave Search API.

The backend is the operator's own configuration (often a SearXNG inside the same
cluster), so it is reached directly, not through web_fetch's SSRF guard. What it
returns is written by third parties and is treated as untrusted data.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL

_TAGS = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True, slots=True)
class SearchHit:
    url: str
    title: str
    snippet: str


class SearchError(Exception):
    """The search backend did not answer usefully; the message is for the model."""


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, limit: int) -> list[SearchHit]: ...

    async def aclose(self) -> None: ...


def _plain(value: Any, limit: int) -> str:
    """Text of a title or snippet: tags and entities removed, whitespace collapsed."""
    text = html.unescape(_TAGS.sub("", str(value or "")))
    return " ".join(text.split())[:limit]


def _hits(items: Any, limit: int, snippet_key: str) -> list[SearchHit]:
    out: list[SearchHit] = []
    seen: set[str] = set()
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        url = str(item.get("url") or "").strip()
        if not url.startswith(("http://", "https://")) or url in seen:
            continue
        seen.add(url)
        out.append(
            SearchHit(
                url=url[:2000],
                title=_plain(item.get("title"), 300) or url[:300],
                snippet=_plain(item.get(snippet_key), 600),
            )
        )
        if len(out) >= limit:
            break
    return out


class _HttpBackend:
    name = "search"

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get_json(self, url: URL, headers: dict[str, str] | None = None) -> Any:
        try:
            async with self._client().get(url, headers=headers) as resp:
                if resp.status != 200:
                    raise SearchError(f"the search backend answered HTTP {resp.status}")
                return await resp.json(content_type=None)
        except TimeoutError as exc:
            raise SearchError("the search backend timed out") from exc
        except aiohttp.ClientError as exc:
            raise SearchError(f"the search backend is unreachable ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise SearchError("the search backend answered something that is not JSON") from exc


class SearxngSearch(_HttpBackend):
    """`GET <WEB_SEARCH_URL>/search?q=…&format=json` → `results[]` of `{url, title, content}`."""

    name = "searxng"

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout)
        url = URL(base_url.strip())
        self.endpoint = url if url.path.rstrip("/").endswith("/search") else url / "search"

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        data = await self._get_json(
            self.endpoint.update_query(q=query, format="json"),
            headers={"Accept": "application/json"},
        )
        results = data.get("results") if isinstance(data, dict) else None
        return _hits(results, limit, "content")


class BraveSearch(_HttpBackend):
    """Brave Search API: `GET …/web/search?q=…&count=N` with `X-Subscription-Token`;
    `web.results[]` of `{url, title, description}`."""

    name = "brave"

    def __init__(self, url: str, api_key: str, timeout: float) -> None:
        super().__init__(timeout)
        self.endpoint = URL(url.strip())
        self._key = api_key

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        data = await self._get_json(
            self.endpoint.update_query(q=query, count=str(limit)),
            headers={"Accept": "application/json", "X-Subscription-Token": self._key},
        )
        web = data.get("web") if isinstance(data, dict) else None
        results = web.get("results") if isinstance(web, dict) else None
        return _hits(results, limit, "description")
