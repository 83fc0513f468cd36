"""RabbitMQ topology, declared idempotently by every service at start-up.

- `chat.jobs` (direct) → quorum queue `chat.jobs.<provider>` per provider, with a
  delivery limit and at-least-once dead-lettering to `chat.jobs.dlx` → `chat.jobs.dead`.
- `chat.events` (topic) → quorum queue `history.turn-events` bound to `turn.*`.

Channels are opened with publisher confirms and `on_return_raises`, so a publish
that no queue takes raises instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from parley_common.schemas import ChatJob, TurnResult
from parley_common.schemas.jobs import JOB_TYPE, TURN_TYPE
from parley_common.topology import Topology

# A job delivered this many times without an ack is dead-lettered (poison job).
DELIVERY_LIMIT = 3


@dataclass(frozen=True, slots=True)
class Exchanges:
    jobs: AbstractExchange
    events: AbstractExchange
    dead: AbstractExchange


async def declare_exchanges(channel: AbstractChannel, topo: Topology) -> Exchanges:
    jobs = await channel.declare_exchange(
        topo.jobs_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    events = await channel.declare_exchange(
        topo.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(
        topo.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_q = await channel.declare_queue(
        topo.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_q.bind(dead)
    return Exchanges(jobs=jobs, events=events, dead=dead)


async def declare_job_queue(
    channel: AbstractChannel, topo: Topology, exchanges: Exchanges, provider: str
) -> AbstractQueue:
    queue = await channel.declare_queue(
        topo.jobs_queue(provider),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": topo.dead_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    await queue.bind(exchanges.jobs, routing_key=provider)
    return queue


async def declare_job_queues(
    channel: AbstractChannel, topo: Topology, exchanges: Exchanges, providers: Iterable[str]
) -> dict[str, AbstractQueue]:
    return {p: await declare_job_queue(channel, topo, exchanges, p) for p in providers}


async def declare_history_queue(
    channel: AbstractChannel, topo: Topology, exchanges: Exchanges
) -> AbstractQueue:
    queue = await channel.declare_queue(
        topo.history_queue,
        durable=True,
        # No delivery limit: a turn result that cannot be saved yet (MongoDB down) is
        # retried with backoff until it can; one that can never be parsed is rejected
        # explicitly and dead-lettered.
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": topo.dead_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    await queue.bind(exchanges.events, routing_key="turn.*")
    return queue


async def declare_dead_jobs_queue(
    channel: AbstractChannel, topo: Topology, exchanges: Exchanges
) -> AbstractQueue:
    """History's copy of every dead-lettered message (the DLX is a fanout), so that the
    client of a poison job gets an `error` and the copy in `chat.jobs.dead` stays for
    operators to inspect."""
    queue = await channel.declare_queue(
        topo.history_dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchanges.dead)
    return queue


async def open_channel(
    connection: aio_pika.abc.AbstractRobustConnection, prefetch: int = 0
) -> AbstractChannel:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    if prefetch:
        await channel.set_qos(prefetch_count=prefetch)
    return channel


def job_message(job: ChatJob) -> aio_pika.Message:
    """A chat job as its AMQP message (persistent, typed, with tracing headers)."""
    return _message(job, JOB_TYPE)


def result_message(result: TurnResult) -> aio_pika.Message:
    """A turn result as its AMQP message (the same tracing headers as its job)."""
    return _message(result, TURN_TYPE)


def _message(payload: ChatJob | TurnResult, type_: str) -> aio_pika.Message:
    return aio_pika.Message(
        body=payload.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=payload.job_id,
        correlation_id=payload.conversation_id,
        type=type_,
        headers={
            "request_id": payload.request_id,
            "schema_version": payload.v,
            "user_id": payload.user_id,
            "provider": payload.provider,
        },
    )


def log_context(message: AbstractIncomingMessage) -> dict[str, str]:
    """The log fields a job or turn message carries in its metadata (readable before,
    and whether or not, its body parses): `request_id`, `user_id` and `provider` from
    the headers, `job_id` from `message_id`, `conversation_id` from `correlation_id`."""
    headers = message.headers or {}
    fields = {
        "request_id": headers.get("request_id"),
        "user_id": headers.get("user_id"),
        "provider": headers.get("provider"),
        "job_id": message.message_id,
        "conversation_id": message.correlation_id,
    }
    return {k: str(v) for k, v in fields.items() if v}
