"""/readyz of the real service processes follows their dependencies (issue #8, point 6).

The stack runs as processes against a private RabbitMQ, Redis and mongod. Each
dependency in turn is stopped: every service that depends on it answers 503 naming
exactly that dependency, every other service stays ready, and all are ready again once
it is back. Each service checks its own dependencies only:

| service | checks |
|---|---|
| gateway | RabbitMQ, Redis, history |
| worker | RabbitMQ, Redis (it never calls history: results reach history through RabbitMQ) |
| history | MongoDB, RabbitMQ, Redis (it announces `done` in Redis) |
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import ProcessStack
from tests.faults.servers import PrivateMongo, PrivateRabbit, PrivateRedis, wait_until
from tests.support.infra import Infra
from tests.support.stack import drop_run

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

SERVICES = ("gateway", "worker", "history")
# Long enough for aio-pika's reconnect (every 5 s) after a broker restart.
RECOVERY = 60.0

Servers = tuple[PrivateRabbit, PrivateRedis, PrivateMongo]


@pytest.fixture
async def private_stack(
    infra: Infra,
    tmp_path: Path,
    private_rabbit: PrivateRabbit,
    private_redis: PrivateRedis,
    private_mongo: PrivateMongo,
) -> AsyncIterator[tuple[ProcessStack, Servers]]:
    servers = (private_rabbit, private_redis, private_mongo)
    private = dataclasses.replace(
        infra,
        rabbitmq_url=private_rabbit.url,
        redis_url=private_redis.url,
        mongodb_url=private_mongo.url,
        source="private servers",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = ProcessStack(private, logs)
    try:
        await stack.start()
        yield stack, servers
    finally:
        for server in servers:  # so that the services can shut down cleanly
            if not server.running:
                await server.start()
        await stack.stop()
        await drop_run(private, stack.db_name, stack.namespace)


async def readiness(stack: ProcessStack) -> dict[str, tuple[int, Any]]:
    """Each service's /readyz: (status, the dependencies it named as failed)."""
    out: dict[str, tuple[int, Any]] = {}
    async with aiohttp.ClientSession() as http:
        for name in SERVICES:
            async with http.get(f"http://127.0.0.1:{stack.ports[name]}/readyz") as resp:
                body = await resp.json()
                out[name] = (resp.status, set(body.get("failed", {})) or None)
    return out


async def expect(stack: ProcessStack, want: dict[str, set[str] | None], what: str) -> None:
    """Wait until every service's readiness is as `want` says (None: 200)."""
    expected = {n: (200, None) if w is None else (503, w) for n, w in want.items()}
    last: dict[str, tuple[int, Any]] = {}

    async def matches() -> bool:
        nonlocal last
        last = await readiness(stack)
        return last == expected

    try:
        await wait_until(matches, within=RECOVERY, interval=0.25, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{what}: {last}") from exc


ALL_READY: dict[str, set[str] | None] = {"gateway": None, "worker": None, "history": None}


async def test_readyz_fails_while_a_dependency_is_down_and_recovers_when_it_returns(
    private_stack: tuple[ProcessStack, Servers],
):
    stack, (rabbit, redis, mongo) = private_stack
    await expect(stack, ALL_READY, "everything ready at start")

    await rabbit.stop()
    down = {"rabbitmq"}
    await expect(stack, dict.fromkeys(SERVICES, down), "RabbitMQ down: every service unready")
    await rabbit.start()
    await expect(stack, ALL_READY, "RabbitMQ back")

    await redis.terminate()
    down = {"redis"}
    await expect(stack, dict.fromkeys(SERVICES, down), "Redis down: every service unready")
    await redis.start()
    await expect(stack, ALL_READY, "Redis back")

    await mongo.stop()
    await expect(stack, ALL_READY | {"history": {"mongodb"}}, "MongoDB down: history unready")
    await mongo.start()
    await expect(stack, ALL_READY, "MongoDB back")

    stack.sigterm("history")
    assert await stack.exit_code("history", within=20) == 0
    gateway_only = {"gateway": {"history"}, "worker": None}
    expected = {n: (200, None) if w is None else (503, w) for n, w in gateway_only.items()}

    async def history_down_seen() -> bool:
        async with aiohttp.ClientSession() as http:
            got = {}
            for name in gateway_only:
                async with http.get(f"http://127.0.0.1:{stack.ports[name]}/readyz") as resp:
                    body = await resp.json()
                    got[name] = (resp.status, set(body.get("failed", {})) or None)
        return got == expected

    await wait_until(history_down_seen, within=RECOVERY, what="history down: gateway unready")
    await stack.restart("history")
    await expect(stack, ALL_READY, "history back")
