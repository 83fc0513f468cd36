"""Fixtures for fault tests: private servers to break, and stacks wired to them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ProcessStack
from tests.faults.servers import PrivateMongo, PrivateRabbit, PrivateRedis, rabbitmq_scripts
from tests.support.infra import Infra
from tests.support.stack import Stack

TEARDOWN_TIMEOUT = 60.0


Made = list[tuple[Stack, list[Any]]]


async def _stop_stacks(made: Made) -> None:
    """Stop the stacks (and remove their namespaces and databases), each with its private
    servers running again first, so that its shutdown and clean-up can reach them."""
    while made:
        stack, private = made.pop()
        for server in private:
            if not server.running:
                await server.start()
        await asyncio.wait_for(stack.stop(), TEARDOWN_TIMEOUT)


async def _retire(server: PrivateRedis | PrivateMongo | PrivateRabbit, made: Made) -> None:
    """A private server's teardown: the stacks using it stop first; the server stops
    whatever happened to them."""
    try:
        await _stop_stacks(made)
    finally:
        await server.close()


@pytest.fixture
async def _stacks() -> AsyncIterator[Made]:
    made: Made = []
    yield made
    await _stop_stacks(made)


@pytest.fixture
async def private_redis(tmp_path: Path, _stacks: Made) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    try:
        yield await server.start()
    finally:
        await _retire(server, _stacks)


@pytest.fixture
async def private_mongo(tmp_path: Path, _stacks: Made) -> AsyncIterator[PrivateMongo]:
    server = PrivateMongo(tmp_path / "mongo")
    try:
        yield await server.start()
    finally:
        await _retire(server, _stacks)


@pytest.fixture
async def private_rabbit(tmp_path: Path, _stacks: Made) -> AsyncIterator[PrivateRabbit]:
    if rabbitmq_scripts() is None:
        pytest.skip("rabbitmq-server is not installed, so no private broker can be stopped")
    server = PrivateRabbit(tmp_path / "rabbitmq")
    try:
        yield await server.start()
    finally:
        await _retire(server, _stacks)


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(infra: Infra, _stacks: Made) -> StackFactory:
    """`await make_stack(rabbitmq=..., redis=..., mongo=..., **stack_kwargs)`: an in-process
    stack on the shared servers except the private ones given; stopped (and its namespace
    and database removed) after the test, before its private servers are."""

    async def make(
        *,
        rabbitmq: PrivateRabbit | None = None,
        redis: PrivateRedis | None = None,
        mongo: PrivateMongo | None = None,
        **kwargs: Any,
    ) -> Stack:
        changes: dict[str, str] = {}
        if rabbitmq is not None:
            changes["rabbitmq_url"] = rabbitmq.url
        if redis is not None:
            changes["redis_url"] = redis.url
        if mongo is not None:
            changes["mongodb_url"] = mongo.url
        private = [s for s in (rabbitmq, redis, mongo) if s is not None]
        stack = Stack(dataclasses.replace(infra, **changes, source="private servers"), **kwargs)
        await stack.start()
        _stacks.append((stack, private))
        return stack

    return make


@pytest.fixture(scope="module")
async def processes(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ProcessStack]:
    """The stack as real processes (gateway, history, one groq worker, simulator), shared
    by a module's tests: a test that kills a process starts it again before it ends."""
    async with ProcessStack(infra, tmp_path_factory.mktemp("processes")).running() as stack:
        yield stack
