"""Publishes chat jobs to RabbitMQ with publisher confirms.

A job is accepted only when the broker confirms it; a publish that no queue
takes (no worker queue for that provider) raises instead of vanishing.
"""

from __future__ import annotations

import asyncio
import time

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError
from parley_common.amqp import (
    Exchanges,
    declare_exchanges,
    declare_job_queues,
    job_message,
    open_channel,
)
from parley_common.schemas import ChatJob
from parley_common.topology import Topology

from parley_gateway.errors import Unavailable
from parley_gateway.metrics import PUBLISH_FAILURES, PUBLISH_SECONDS

log = structlog.get_logger("parley_gateway.publisher")

PUBLISH_TIMEOUT = 5.0


class JobPublisher:
    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self.connection = connection
        self._topo = topo
        self._channel: AbstractChannel | None = None
        self._exchanges: Exchanges | None = None

    async def start(self, providers: list[str]) -> None:
        self._channel = await open_channel(self.connection)
        self._exchanges = await declare_exchanges(self._channel, self._topo)
        # Declaring the job queues here too means a job published before any
        # worker has started waits in its queue instead of being unroutable.
        await declare_job_queues(self._channel, self._topo, self._exchanges, providers)

    async def publish(self, job: ChatJob) -> None:
        assert self._exchanges is not None
        message = job_message(job)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                confirm = await self._exchanges.jobs.publish(
                    message, routing_key=job.provider, mandatory=True
                )
        except (DeliveryError, PublishError) as exc:
            log.error("job.unroutable", error_type=type(exc).__name__)
            PUBLISH_FAILURES.labels("job_unroutable").inc()
            raise Unavailable(
                f"no queue accepted the job for provider {job.provider}", code="job_unroutable"
            ) from exc
        except (
            AMQPError,
            aiormq.exceptions.AMQPError,
            # A channel closed by a lost connection (while aio-pika reconnects) raises this
            # RuntimeError subclass at once; without it the broker outage would be a 500.
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            log.error("job.publish_failed", error_type=type(exc).__name__)
            PUBLISH_FAILURES.labels("broker_down").inc()
            raise Unavailable("the job queue is unavailable", code="broker_down") from exc
        if not isinstance(confirm, aiormq.spec.Basic.Ack):
            log.error("job.nacked", confirm=type(confirm).__name__)
            PUBLISH_FAILURES.labels("broker_refused").inc()
            raise Unavailable("the job queue refused the job", code="broker_refused")
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
