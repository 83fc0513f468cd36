"""Which web search backend serves `web: true` turns (gateway and worker both ask).

`WEB_SEARCH_URL` names a SearXNG-compatible server (`/search?q=…&format=json`);
without it, a keyed search API may serve instead (`BRAVE_SEARCH_API_KEY`). With
neither, the gateway refuses `web: true` with a 400, and a worker offers no
`web_search` tool.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from parley_common.settings import CommonSettings

SearchBackend = Literal["searxng", "brave"]


class WebSearchSettings(CommonSettings):
    # A SearXNG-compatible server: its base URL, or its `/search` endpoint.
    web_search_url: str | None = None
    # Brave Search API (keyed), used when WEB_SEARCH_URL is not set.
    brave_search_api_key: SecretStr | None = None
    brave_search_url: str = "https://api.search.brave.com/res/v1/web/search"

    def web_search_backend(self) -> SearchBackend | None:
        """The backend web search uses, or None when none is configured."""
        if self.web_search_url and self.web_search_url.strip():
            return "searxng"
        key = self.brave_search_api_key
        if key is not None and key.get_secret_value().strip():
            return "brave"
        return None
