"""Metrics and logs of the real service processes (issue #8, point 5).

Four turns take the paths the metrics name (a slow one, one retried after a 429, one
that falls back to another provider, one the provider rejects); each service's
/metrics is scraped before, during and after them. Every named series exists and
moved by exactly what those turns did (each service is its own process, so nothing
else moves its counters). Then the JSON logs: every line any service wrote about a
turn carries the same request, user, conversation, job and provider.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import ProcessStack
from tests.faults.client import Turn, open_turn, words
from tests.faults.servers import wait_until
from tests.support.infra import Infra
from tests.support.metrics import Samples, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHAT = {"method": "POST", "route": "/api/chat", "status": "200"}


@pytest.fixture
async def observed(infra: Infra, tmp_path: Path) -> AsyncIterator[ProcessStack]:
    """The stack as processes; one worker serves groq and openrouter, with groq falling
    back to openrouter, and one quick retry before that."""
    stack = ProcessStack(
        infra,
        tmp_path,
        worker_providers=("groq", "openrouter"),
        extra_env={
            "OPENROUTER_API_KEY": "sim-key",
            "OPENROUTER_BASE_URL": "{sim}/api/v1",
            "FALLBACK_CHAIN": "groq,openrouter",
            "PROVIDER_MAX_RETRIES": "1",
            "PROVIDER_RETRY_BASE_SECONDS": "0.05",
        },
    )
    async with stack.running():
        yield stack


def urls(stack: ProcessStack) -> dict[str, str]:
    return {
        "gateway": stack.url,
        "worker": f"http://127.0.0.1:{stack.ports['worker']}",
        "history": f"http://127.0.0.1:{stack.ports['history']}",
    }


async def scrape_all(http: aiohttp.ClientSession, stack: ProcessStack) -> dict[str, Samples]:
    return {name: await scrape(http, url) for name, url in urls(stack).items()}


async def turn(http: aiohttp.ClientSession, stack: ProcessStack, text: str) -> Turn:
    t = await open_turn(http, stack.url, f"user-{secrets.token_hex(3)}", {"text": text})
    await t.finish()
    t.close()
    return t


async def test_a_turn_moves_every_named_series_on_each_service(observed: ProcessStack):
    stack = observed
    async with aiohttp.ClientSession() as http:
        before = await scrape_all(http, stack)

        # A: slow enough to be watched while it streams.
        slow = await open_turn(
            http,
            stack.url,
            "user-slow",
            {"text": "[[sim:tokens=30]] [[sim:delay-ms=60]]", "provider": "groq"},
        )
        await slow.deltas_seen(3)
        during = await scrape_all(http, stack)
        await slow.finish()
        slow.close()
        assert slow.events[-1].data["reply"] == words(30)

        # B: a 429 before the first token, retried once.
        retried = await turn(http, stack, "[[sim:status=429]] [[sim:fail-times=1]] again")
        assert retried.events[-1].event == "done", retried.events[-1].data
        # C: groq keeps failing (503): one retry, then the turn falls back to openrouter.
        fell = await turn(http, stack, "[[sim:status=503]] [[sim:fail-only=groq]] elsewhere")
        assert fell.events[-1].event == "done", fell.events[-1].data
        assert fell.events[-1].data["provider"] == "openrouter"
        # D: a 400, which is neither retried nor handed on.
        rejected = await turn(http, stack, "[[sim:status=400]] nonsense")
        assert rejected.events[-1].event == "error"
        assert rejected.events[-1].data["code"] == "provider_rejected"

        # A streamed request is counted when its handler returns, a moment after the
        # client read the last event: wait for the gateway to have counted all four.
        async def gateway_done() -> bool:
            scraped = await scrape(http, stack.url)
            counted = scraped.get("parley_gateway_requests_total", **CHAT)
            return counted - before["gateway"].get("parley_gateway_requests_total", **CHAT) >= 4

        await wait_until(gateway_done, within=10, what="the gateway to count the four turns")
        after = await scrape_all(http, stack)

    g0, g1, gm = before["gateway"], after["gateway"], during["gateway"]
    w0, w1, wm = before["worker"], after["worker"], during["worker"]
    h0, h1 = before["history"], after["history"]

    def moved(s0: Samples, s1: Samples, name: str, **labels: str) -> float:
        assert s1.has(name, **labels), (name, labels, sorted(s1.names()))
        return s1.get(name, **labels) - s0.get(name, **labels)

    # Gateway: request latency by route and status, streams, time to first token and
    # stream duration by provider, queue publish latency.
    assert moved(g0, g1, "parley_gateway_requests_total", **CHAT) == 4
    assert moved(g0, g1, "parley_gateway_request_seconds_count", **CHAT) == 4
    assert moved(g0, g1, "parley_gateway_request_seconds_sum", **CHAT) > 30 * 0.06
    assert g0.get("parley_gateway_streams_open") == 0
    assert gm.get("parley_gateway_streams_open") == 1
    assert g1.get("parley_gateway_streams_open") == 0
    # A, B and C showed a token (C's came from openrouter, on a turn begun for groq).
    assert moved(g0, g1, "parley_gateway_first_token_seconds_count", provider="groq") == 3
    done = {"provider": "groq", "outcome": "done"}
    assert moved(g0, g1, "parley_gateway_stream_seconds_count", **done) == 3
    assert moved(g0, g1, "parley_gateway_stream_seconds_sum", **done) > 30 * 0.06
    failed = {"provider": "groq", "outcome": "error"}
    assert moved(g0, g1, "parley_gateway_stream_seconds_count", **failed) == 1
    assert moved(g0, g1, "parley_gateway_job_publish_seconds_count") == 4
    assert moved(g0, g1, "parley_gateway_jobs_published_total", provider="groq") == 4

    # Worker: turns, their duration, tokens out, jobs in flight, queue wait, retries,
    # fallbacks and errors by provider; its own probe requests.
    assert moved(w0, w1, "parley_worker_turns_total", provider="groq", status="complete") == 2
    assert moved(w0, w1, "parley_worker_turns_total", provider="groq", status="error") == 2
    assert moved(w0, w1, "parley_worker_turns_total", provider="openrouter", status="complete") == 1
    assert moved(w0, w1, "parley_worker_turn_seconds_count", provider="groq") == 4
    assert moved(w0, w1, "parley_worker_tokens_total", provider="groq", kind="output") >= 30
    assert wm.get("parley_worker_turns_in_flight", provider="groq") == 1
    assert w1.get("parley_worker_turns_in_flight", provider="groq") == 0
    assert moved(w0, w1, "parley_worker_queue_wait_seconds_count", provider="groq") == 4
    assert moved(w0, w1, "parley_worker_retries_total", provider="groq") == 2  # B, C
    assert moved(w0, w1, "parley_worker_fallbacks_total", provider="groq", to="openrouter") == 1
    assert (
        moved(w0, w1, "parley_worker_turn_errors_total", provider="groq", code="provider_rejected")
        == 1
    )
    probes = {"method": "GET", "route": "/metrics", "status": "200"}
    assert moved(w0, w1, "parley_worker_requests_total", **probes) == 2
    assert moved(w0, w1, "parley_worker_request_seconds_count", **probes) == 2

    # History: its request latency by route and status, write latency, saved turns.
    begin = {"method": "POST", "route": "/internal/v1/turns", "status": "201"}
    assert moved(h0, h1, "parley_history_requests_total", **begin) == 4
    assert moved(h0, h1, "parley_history_request_seconds_count", **begin) == 4
    assert moved(h0, h1, "parley_history_write_seconds_count", op="begin_turn") == 4
    assert moved(h0, h1, "parley_history_write_seconds_count", op="save_result") == 4
    assert moved(h0, h1, "parley_history_write_seconds_sum", op="save_result") > 0
    assert moved(h0, h1, "parley_history_turns_saved_total", status="complete") == 3
    assert moved(h0, h1, "parley_history_turns_saved_total", status="error") == 1
    assert h1.has("parley_history_results_in_flight")
    assert h1.get("parley_history_results_in_flight") == 0

    # Logs: every line about turn A, in every service, carries the whole context.
    expected = {
        "job_id": slow.job_id,
        "conversation_id": slow.conversation_id,
        "user_id": "user-slow",
        "provider": "groq",
    }
    for service in ("gateway", "worker", "history"):
        records = [json.loads(line) for line in stack.log_lines(service) if line.startswith("{")]
        mine = [r for r in records if r.get("job_id") == slow.job_id]
        assert len(mine) >= 2, (service, mine)
        request_ids = {r.get("request_id") for r in mine}
        assert len(request_ids) == 1 and None not in request_ids, (service, request_ids)
        for record in mine:
            seen: dict[str, Any] = {k: record.get(k) for k in expected}
            assert seen == expected, (service, record)
