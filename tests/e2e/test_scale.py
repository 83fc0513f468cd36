"""Horizontal scale on one machine (issue #8, point 8): two gateway processes and two
worker processes per provider (all six, each provider through its own SDK against the
simulator), sharing one RabbitMQ, Redis and MongoDB.

Concurrent turns go to both gateways. Every turn completes with the right text from
the provider it asked for, and each provider's jobs are spread over both of its
workers: every worker process handled at least one (read from its own /metrics), and
the two together handled exactly that provider's turns. Each worker takes one turn at
a time (WORKER_CONCURRENCY=1) and the turns overlap, so a worker that is busy leaves
the next job to its peer, as a fleet scaled out on queue depth would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from parley_common.topology import PROVIDERS

from tests.e2e.conftest import ProcessStack, sim_provider_env
from tests.faults.client import bearer
from tests.support.infra import Infra
from tests.support.metrics import scrape
from tests.support.sse import parse_sse
from tests.support.stack import drop_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

TURNS_PER_PROVIDER = 4
WORKERS = [f"worker-{provider}-{n}" for provider in PROVIDERS for n in (1, 2)]


@pytest.fixture
async def fleet(infra: Infra, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Simulator, history, two gateways and twelve workers; their base URLs by name."""
    stack = ProcessStack(
        infra,
        tmp_path,
        worker_providers=(),
        extra_env=sim_provider_env("{sim}") | {"WORKER_CONCURRENCY": "1"},
    )
    try:
        await stack.start()  # simulator, history, gateway
        urls = {"gateway": stack.url}
        urls["gateway-2"] = await stack.add(
            "gateway-2", "parley_gateway", port_var="GATEWAY_PORT", wait=False
        )
        for name in WORKERS:
            provider = name.split("-")[1]
            urls[name] = await stack.add(
                name, "parley_worker", "--provider", provider, port_var="WORKER_PORT", wait=False
            )
        await asyncio.gather(*(stack.wait_http(f"{url}/readyz", 60) for url in urls.values()))
        yield urls
        codes = await stack.stop()
        assert set(codes.values()) == {0}, codes
    finally:
        await stack.stop()
        await drop_run(infra, stack.db_name, stack.namespace)


async def one_turn(
    http: aiohttp.ClientSession, gateway: str, provider: str, n: int
) -> tuple[str, str, dict[str, object]]:
    """A streamed turn; (what was asked, the provider asked, the `done` event's data)."""
    text = f"turn {n} for {provider} via {gateway.rsplit(':', 1)[1]}"
    async with http.post(
        f"{gateway}/api/chat",
        # Each word is 40 ms apart, so that turns overlap on their workers.
        json={"text": f"{text} [[sim:delay-ms=40]]", "provider": provider},
        headers=bearer(f"user-{provider}-{n}") | {"Accept": "text/event-stream"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        events = parse_sse(await resp.text())[0]
    assert events[-1].event == "done", events[-1].data
    return text, provider, events[-1].data


async def test_turns_to_two_gateways_spread_over_two_workers_per_provider(
    fleet: dict[str, str],
):
    gateways = [fleet["gateway"], fleet["gateway-2"]]
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(
                one_turn(http, gateways[n % 2], provider, n)
                for provider in PROVIDERS
                for n in range(TURNS_PER_PROVIDER)
            )
        )
        metrics = {name: await scrape(http, url) for name, url in fleet.items()}

    for text, provider, done in results:
        assert done["reply"] == f"Echo: {text}", (provider, done)
        assert done["provider"] == provider
    # Both gateways took their half.
    for gateway in ("gateway", "gateway-2"):
        published = metrics[gateway].matching("parley_gateway_jobs_published_total")
        assert sum(published.values()) == len(PROVIDERS) * TURNS_PER_PROVIDER / 2, published
    # Every worker process did some of its provider's turns; the pair did all of them.
    handled = {
        name: metrics[name].get(
            "parley_worker_turns_total", provider=name.split("-")[1], status="complete"
        )
        for name in WORKERS
    }
    assert all(count >= 1 for count in handled.values()), handled
    for provider in PROVIDERS:
        pair = handled[f"worker-{provider}-1"] + handled[f"worker-{provider}-2"]
        assert pair == TURNS_PER_PROVIDER, (provider, handled)
