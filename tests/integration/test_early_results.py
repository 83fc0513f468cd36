"""A new conversation's first job is queued while history stores the conversation
(ADR 10), so a reply that fails at once can reach history before its conversation
does. History puts such a result back and saves it once the conversation is stored;
a result whose conversation was deleted, or whose turn the gateway gave up on, is
announced at once instead of being held.

Real RabbitMQ (the result goes through `chat.events` to history's queue), Redis (the
registry, the job's channel) and MongoDB."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import aio_pika
import pytest
import redis.asyncio as aioredis
from parley_common.amqp import result_message
from parley_common.ids import new_conversation_id
from parley_common.jobs import JobRegistry
from parley_common.schemas import EventEnvelope, TurnStatus, decode_batch
from parley_common.topology import TURN_CANCELLED, TURN_COMPLETED, Topology
from parley_history.metrics import RESULTS_EARLY

from tests.faults.servers import wait_until
from tests.support.history import store_of, turn_result, uid
from tests.support.stack import SERVICE_TOKEN, Stack

pytestmark = pytest.mark.integration


def _job() -> str:
    return f"job-{secrets.token_hex(12)}"


def _early() -> float:
    return RESULTS_EARLY._value.get()  # in-process: the stack's history runs here


async def _publish(stack: Stack, body: aio_pika.Message, routing_key: str) -> None:
    connection = await aio_pika.connect(stack.infra.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(stack.namespace).events_exchange)
        await exchange.publish(body, routing_key=routing_key, mandatory=True)


async def _terminal(pubsub: aioredis.client.PubSub) -> EventEnvelope:
    """The job's `done` or `error`, as history announces it on the job's channel."""
    async with asyncio.timeout(20):
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            for env in decode_batch(message["data"]):
                if env.terminal:
                    return env
    raise AssertionError("the job's channel closed")


@contextlib.asynccontextmanager
async def _following(stack: Stack, job: str) -> AsyncIterator[aioredis.client.PubSub]:
    redis = aioredis.Redis.from_url(stack.infra.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(Topology(stack.namespace).job_channel(job))
    try:
        yield pubsub
    finally:
        await pubsub.aclose()
        await redis.aclose()


@pytest.fixture
async def registry(stack: Stack) -> AsyncIterator[JobRegistry]:
    redis = aioredis.Redis.from_url(stack.infra.redis_url)
    yield JobRegistry(redis, Topology(stack.namespace))
    await redis.aclose()


async def test_a_reply_that_comes_before_its_new_conversation_is_saved_once_it_is(
    stack: Stack, registry: JobRegistry
):
    user, job = uid(), _job()
    conv = new_conversation_id(user, "web")
    # As the gateway does: the job is listed as running when it is queued.
    await registry.register(job, user, conv, "groq", 600)
    early = _early()
    async with _following(stack, job) as pubsub:
        await _publish(
            stack, result_message(turn_result(user, conv, job, "fast reply")), TURN_COMPLETED
        )
        await wait_until(lambda: _early() > early, what="the result put back")
        begun = await store_of(stack).begin_turn(
            user_id=user,
            conversation_id=None,
            new_conversation_id=conv,
            channel="web",
            text="first question",
            image=None,
            provider="groq",
            job_id=job,
        )
        assert begun.conversation_id == conv and begun.created
        done = await _terminal(pubsub)
    assert done.type == "done", done.payload()
    assert done.payload()["message_id"] == f"msg-{job}-a"
    assert done.payload()["reply"] == "fast reply"
    docs = await stack.messages_in_db(conv)
    assert [(d["seq"], d["role"], d["content"]) for d in docs] == [
        (1, "user", "first question"),
        (2, "assistant", "fast reply"),
    ]
    stored = await stack.db["conversations"].find_one({"_id": conv})
    assert stored is not None and stored["active_job"] is None  # the lock is released


async def test_a_reply_whose_turn_the_gateway_gave_up_on_is_not_held(
    stack: Stack, registry: JobRegistry
):
    """The gateway could not store the message (history down) and finished the job in
    the registry: its cancelled result has nowhere to go, and is said so at once."""
    user, job = uid(), _job()
    conv = new_conversation_id(user, "web")
    await registry.register(job, user, conv, "groq", 600)
    await registry.finish(job, conv)
    early = _early()
    async with _following(stack, job) as pubsub:
        result = turn_result(user, conv, job, "", status=TurnStatus.cancelled)
        await _publish(stack, result_message(result), TURN_CANCELLED)
        end = await _terminal(pubsub)
    assert end.type == "error" and end.payload()["code"] == "conversation_deleted"
    assert _early() == early  # not put back even once
    assert await stack.db["messages"].count_documents({"conversation_id": conv}) == 0
    assert await stack.db["conversations"].count_documents({"_id": conv}) == 0


async def test_a_gateway_chosen_id_outside_the_users_namespace_is_refused(stack: Stack):
    user, job = uid(), _job()
    async with stack.http.post(
        f"{stack.history_url}/internal/v1/turns",
        json={
            "new_conversation_id": new_conversation_id(uid(), "web"),  # someone else's
            "text": "hi",
            "provider": "groq",
            "job_id": job,
        },
        headers={"X-Parley-User": user, "Authorization": f"Bearer {SERVICE_TOKEN}"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 400 and "new_conversation_id" in body["error"]
    assert await stack.db["messages"].count_documents({"user_id": user}) == 0


async def test_a_gateway_named_conversation_is_answered_without_its_context(stack: Stack):
    """The gateway holds a first message's context (its image included) already: history
    does not send it back."""
    user, job = uid(), _job()
    conv = new_conversation_id(user, "web")
    image = {"mime": "image/png", "data_base64": "aGVsbG8=" * 1000}
    async with stack.http.post(
        f"{stack.history_url}/internal/v1/turns",
        json={
            "new_conversation_id": conv,
            "text": "look",
            "image": image,
            "provider": "groq",
            "job_id": job,
        },
        headers={"X-Parley-User": user, "Authorization": f"Bearer {SERVICE_TOKEN}"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 201, body
    assert body == {"conversation_id": conv, "user_message_id": f"msg-{job}-u", "created": True}
    [stored] = await stack.messages_in_db(conv)
    assert stored["content"] == "look" and stored["image"] == image
