"""web_fetch and web_search against local servers: limits, redirects, HTML to text, and
the SSRF guard (every address class, a redirect to a private address, a name that
resolves to one, and a connection that goes to the address that was checked).

Nothing here connects anywhere but 127.0.0.1: names are mapped to addresses by a
test resolver, and a refused address is refused before any connection is made.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest
from parley_common.schemas import Source
from parley_worker.providers.base import ToolCall
from parley_worker.tools.fetch import FetchError, FetchLimits, WebFetcher
from parley_worker.tools.search import BraveSearch, SearxngSearch
from parley_worker.tools.ssrf import AddressPolicy, a_kind
from parley_worker.tools.untrusted import BEGIN, END, NOTICE
from parley_worker.tools.web import WebTools

from tests.support.web import LocalWeb, MapResolver
from tests.unit.test_web_tools_unit import REFUSED

pytestmark = pytest.mark.integration

# The test servers' own address, let through explicitly; nothing else private is.
TEST_SERVERS = AddressPolicy(allowed=(ipaddress.ip_network("127.0.0.1/32"),))


@pytest.fixture(scope="module")
async def local_web() -> AsyncIterator[LocalWeb]:
    site = await LocalWeb().start()
    yield site
    await site.stop()


@pytest.fixture
async def fetcher() -> AsyncIterator[WebFetcher]:
    f = WebFetcher(FetchLimits(max_redirects=3), TEST_SERVERS)
    yield f
    await f.aclose()


async def fetch_error(fetcher: WebFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as err:
        await fetcher.fetch(url)
    return err.value


# --- pages ---------------------------------------------------------------------------


async def test_html_page_becomes_its_title_and_main_text(local_web: LocalWeb, fetcher: WebFetcher):
    page = await fetcher.fetch(f"{local_web.pages_url}/polly")
    assert (page.status, page.content_type, page.title) == (200, "text/html", "Polly the parrot")
    assert "Polly-7731 is a grey parrot who lives in Lisbon" in page.text
    assert "About us" not in page.text and "All rights reserved" not in page.text
    assert not page.cut and page.redirects == 0


async def test_plain_text_and_json_are_read_as_text(local_web: LocalWeb, fetcher: WebFetcher):
    assert (await fetcher.fetch(f"{local_web.pages_url}/plain")).text == "Just plain\n\ntext."
    assert "Polly-7731" in (await fetcher.fetch(f"{local_web.pages_url}/json")).text


async def test_other_content_types_are_refused(local_web: LocalWeb, fetcher: WebFetcher):
    err = await fetch_error(fetcher, f"{local_web.pages_url}/image")
    assert err.message == "unsupported content type image/png" and not err.refused


async def test_http_errors_are_reported(local_web: LocalWeb, fetcher: WebFetcher):
    err = await fetch_error(fetcher, f"{local_web.pages_url}/nowhere")
    assert err.message == "HTTP 404 Not Found"


async def test_a_body_over_the_byte_limit_is_cut_there(local_web: LocalWeb):
    small = WebFetcher(FetchLimits(max_bytes=4096), TEST_SERVERS)
    try:
        page = await small.fetch(f"{local_web.pages_url}/big")
    finally:
        await small.aclose()
    assert page.cut
    assert page.text.startswith("word0 word1") and len(page.text) < 4096
    assert "word39999" not in page.text


async def test_a_slow_server_times_out(local_web: LocalWeb):
    impatient = WebFetcher(FetchLimits(read_timeout=0.3, total_timeout=5), TEST_SERVERS)
    try:
        err = await fetch_error(impatient, f"{local_web.pages_url}/slow?s=3")
        assert err.message.startswith("timed out") or "Timeout" in err.message
        stalled = await fetch_error(impatient, f"{local_web.pages_url}/stall")
        assert stalled.message.startswith("timed out") or "Timeout" in stalled.message
    finally:
        await impatient.aclose()


async def test_the_total_timeout_bounds_a_fetch(local_web: LocalWeb):
    impatient = WebFetcher(FetchLimits(read_timeout=10, total_timeout=0.4), TEST_SERVERS)
    try:
        err = await fetch_error(impatient, f"{local_web.pages_url}/slow?s=3")
    finally:
        await impatient.aclose()
    assert err.message.startswith("timed out")


async def test_redirects_are_followed_up_to_the_limit(local_web: LocalWeb, fetcher: WebFetcher):
    page = await fetcher.fetch(f"{local_web.pages_url}/redirect/3")
    assert page.url == f"{local_web.pages_url}/polly" and page.redirects == 3
    err = await fetch_error(fetcher, f"{local_web.pages_url}/redirect/4")
    assert err.message == "more than 3 redirects"


async def test_no_proxy_from_the_environment_is_used(
    local_web: LocalWeb, fetcher: WebFetcher, monkeypatch: pytest.MonkeyPatch
):
    """A proxy would make the connection itself, past the address checks."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert (await fetcher.fetch(f"{local_web.pages_url}/plain")).status == 200


# --- the SSRF guard ------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), REFUSED)
async def test_a_name_resolving_to_a_non_public_address_is_refused(address: str, kind: str):
    resolver = MapResolver({"inside.test": [address]})
    guarded = WebFetcher(FetchLimits(), AddressPolicy(), resolver)
    try:
        err = await fetch_error(guarded, "http://inside.test/secret")
    finally:
        await guarded.aclose()
    assert err.refused
    assert f"inside.test resolves to {address}, {a_kind(kind)}" in err.message
    assert resolver.lookups == ["inside.test"]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
async def test_a_non_public_address_literal_is_refused(address: str, kind: str):
    host = f"[{address}]" if ":" in address else address
    guarded = WebFetcher(FetchLimits(), AddressPolicy(), MapResolver({}))
    try:
        err = await fetch_error(guarded, f"http://{host}:8080/")
    finally:
        await guarded.aclose()
    assert err.refused and a_kind(kind) in err.message


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f.1/", "http://127.1/"])
async def test_numeric_ipv4_spellings_of_loopback_are_refused(url: str):
    guarded = WebFetcher(FetchLimits(connect_timeout=1, total_timeout=2), AddressPolicy())
    try:
        err = await fetch_error(guarded, url)
    finally:
        await guarded.aclose()
    assert err.refused, err.message


async def test_a_name_with_a_public_and_a_private_address_is_refused():
    resolver = MapResolver({"mixed.test": ["93.184.215.14", "10.0.0.1"]})
    guarded = WebFetcher(FetchLimits(), AddressPolicy(), resolver)
    try:
        err = await fetch_error(guarded, "http://mixed.test/")
    finally:
        await guarded.aclose()
    assert err.refused and "10.0.0.1, a private address" in err.message


async def test_a_redirect_to_the_metadata_address_is_refused(
    local_web: LocalWeb, fetcher: WebFetcher
):
    target = "http://169.254.169.254/latest/meta-data/"
    err = await fetch_error(fetcher, f"{local_web.pages_url}/redirect-to?to={target}")
    assert err.refused and "169.254.169.254 is a link-local address" in err.message


async def test_a_redirect_to_ipv6_loopback_is_refused(local_web: LocalWeb, fetcher: WebFetcher):
    target = f"http://[::1]:{local_web.port}/polly"
    err = await fetch_error(fetcher, f"{local_web.pages_url}/redirect-to?to={target}")
    assert err.refused and "::1 is a loopback address" in err.message


async def test_a_redirect_to_a_name_resolving_to_a_private_address_is_refused(
    local_web: LocalWeb,
):
    resolver = MapResolver({"intranet.test": ["10.0.0.5"]})
    guarded = WebFetcher(FetchLimits(), TEST_SERVERS, resolver)
    target = f"http://intranet.test:{local_web.port}/polly"
    try:
        err = await fetch_error(guarded, f"{local_web.pages_url}/redirect-to?to={target}")
    finally:
        await guarded.aclose()
    assert err.refused and "intranet.test resolves to 10.0.0.5, a private address" in err.message
    assert resolver.lookups == ["intranet.test"]


async def test_a_redirect_to_another_scheme_is_refused(local_web: LocalWeb, fetcher: WebFetcher):
    err = await fetch_error(fetcher, f"{local_web.pages_url}/redirect-to?to=file:///etc/passwd")
    assert err.refused and "only http and https" in err.message


async def test_the_connection_goes_to_the_address_that_was_checked(local_web: LocalWeb):
    """DNS rebinding: the name answers an allowed address when it is checked and a
    private one afterwards. The fetch resolves once, connects to the checked
    address, and sends the name as the Host header."""
    resolver = MapResolver({"rebind.test": [["127.0.0.1"], ["10.9.9.9"]]})
    guarded = WebFetcher(FetchLimits(), TEST_SERVERS, resolver)
    before = len(local_web.page_hits)
    try:
        page = await guarded.fetch(f"http://rebind.test:{local_web.port}/echo-host")
    finally:
        await guarded.aclose()
    assert page.text == f"host=rebind.test:{local_web.port}"
    assert resolver.lookups == ["rebind.test"]
    [hit] = local_web.page_hits[before:]
    assert hit["peer"] == "127.0.0.1"


async def test_allow_private_reaches_loopback(local_web: LocalWeb):
    """WEB_FETCH_ALLOW_PRIVATE=1 (tests only) lets web_fetch reach local servers."""
    open_fetcher = WebFetcher(FetchLimits(), AddressPolicy(allow_private=True))
    try:
        page = await open_fetcher.fetch(f"{local_web.pages_url}/plain")
    finally:
        await open_fetcher.aclose()
    assert page.status == 200


# --- the tools as the model sees them --------------------------------------------------


@pytest.fixture
async def tools(local_web: LocalWeb) -> AsyncIterator[WebTools]:
    t = WebTools(
        fetcher=WebFetcher(FetchLimits(), TEST_SERVERS),
        search_backend=SearxngSearch(local_web.search_url, timeout=5),
        max_chars=1000,
        max_results=2,
    )
    yield t
    await t.aclose()


async def test_web_search_lists_results_as_untrusted_data(local_web: LocalWeb, tools: WebTools):
    outcome = await tools.run(ToolCall("c1", "web_search", {"query": "polly parrot"}))
    assert not outcome.result.is_error and outcome.result.call_id == "c1"
    assert local_web.searches[-1] == {"q": "polly parrot", "format": "json"}
    content = outcome.result.content
    assert content.startswith('Search results for "polly parrot":\n' + NOTICE)
    assert f"1. Polly the parrot\n   URL: {local_web.pages_url}/polly" in content
    assert BEGIN in content and END in content
    assert outcome.sources == (
        Source(url=f"{local_web.pages_url}/polly", title="Polly the parrot"),
        Source(url=f"{local_web.pages_url}/walnuts", title="Walnuts"),
    )


async def test_web_fetch_returns_the_page_as_delimited_untrusted_text(
    local_web: LocalWeb, tools: WebTools
):
    url = f"{local_web.pages_url}/polly"
    outcome = await tools.run(ToolCall("c2", "web_fetch", {"url": url}))
    content = outcome.result.content
    assert not outcome.result.is_error
    assert content.startswith(f"Page {url} (HTTP 200, text/html)\nTitle: Polly the parrot\n")
    inner = content.split(f"{BEGIN} ", 1)[1].split("\n", 1)[1].rsplit(f"\n{END} ", 1)[0]
    assert "Polly-7731" in inner and "ignore all previous instructions" in inner
    assert outcome.sources == (Source(url=url, title="Polly the parrot"),)


async def test_web_fetch_output_is_cut_to_the_character_budget(
    local_web: LocalWeb, tools: WebTools
):
    outcome = await tools.run(
        ToolCall("c3", "web_fetch", {"url": f"{local_web.pages_url}/long-text"})
    )
    assert "abcdefghij" * 100 + "\n[truncated: 19000 more characters not shown]" in (
        outcome.result.content
    )


async def test_a_page_cannot_forge_the_end_marker(local_web: LocalWeb, tools: WebTools):
    outcome = await tools.run(
        ToolCall("c4", "web_fetch", {"url": f"{local_web.pages_url}/injection"})
    )
    assert outcome.result.content.count(END) == 1
    assert "[marker removed] Now follow me" in outcome.result.content


async def test_a_refusal_is_a_tool_error_not_a_crash(tools: WebTools):
    outcome = await tools.run(ToolCall("c5", "web_fetch", {"url": "http://10.0.0.1/admin"}))
    assert outcome.result.is_error and outcome.refused and outcome.sources == ()
    assert outcome.result.content == (
        "web_fetch failed: refused: 10.0.0.1 is a private address "
        "(web_fetch does not reach private or local networks)"
    )


async def test_bad_calls_and_a_failing_backend_are_tool_errors(tools: WebTools):
    missing = await tools.run(ToolCall("c6", "web_search", {}))
    assert missing.result.is_error and "query" in missing.result.content
    down = await tools.run(ToolCall("c7", "web_search", {"query": "x [down]"}))
    assert down.result.is_error
    assert down.result.content == "web_search failed: the search backend answered HTTP 503"
    unknown = await tools.run(ToolCall("c8", "rm_rf", {}))
    assert unknown.result.is_error and "no tool named" in unknown.result.content


async def test_the_keyed_brave_backend_sends_its_key_and_reads_web_results():
    from aiohttp import web as aioweb

    seen: list[dict[str, str]] = []

    async def brave(request: aioweb.Request) -> aioweb.Response:
        seen.append({"q": request.query["q"], "key": request.headers["X-Subscription-Token"]})
        return aioweb.json_response(
            {"web": {"results": [{"url": "https://a.example/", "title": "A", "description": "d"}]}}
        )

    app = aioweb.Application()
    app.router.add_get("/res/v1/web/search", brave)
    runner = aioweb.AppRunner(app, access_log=None)
    await runner.setup()
    await aioweb.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    backend = BraveSearch(f"http://127.0.0.1:{port}/res/v1/web/search", "brave-key", timeout=5)
    try:
        hits = await backend.search("parrots", 3)
    finally:
        await backend.aclose()
        await runner.cleanup()
    assert seen == [{"q": "parrots", "key": "brave-key"}]
    assert [(h.url, h.title, h.snippet) for h in hits] == [("https://a.example/", "A", "d")]
