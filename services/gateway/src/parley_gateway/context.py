"""The gateway's long-lived collaborators, built once per app and reached by AppKey."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from parley_common.jobs import JobRegistry

from parley_gateway.adapters.event_stream import EventHub
from parley_gateway.adapters.history_client import HistoryClient
from parley_gateway.adapters.idempotency import Idempotency
from parley_gateway.adapters.job_publisher import JobPublisher
from parley_gateway.auth import Authenticator
from parley_gateway.drain import Drain
from parley_gateway.ratelimit import RateLimits
from parley_gateway.settings import GatewaySettings


@dataclass(slots=True)
class Services:
    settings: GatewaySettings
    auth: Authenticator
    history: HistoryClient
    publisher: JobPublisher
    hub: EventHub
    registry: JobRegistry
    idempotency: Idempotency
    redis: aioredis.Redis
    limits: RateLimits
    drain: Drain


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
