from __future__ import annotations

from parley_common.providers import ProviderSettings
from pydantic import Field


class WorkerSettings(ProviderSettings):
    worker_host: str = "127.0.0.1"
    worker_port: int = 8082
    # Comma-separated providers this process serves; empty = every configured one.
    worker_providers: str = ""
    # Concurrent turns per provider in this process (AMQP prefetch per queue).
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    provider_connect_timeout: float = Field(default=10.0, gt=0)
    # The longest silence allowed between two chunks of a provider stream.
    provider_idle_timeout: float = Field(default=60.0, gt=0)
    # The longest one generation may take, start to finish.
    max_generation_seconds: float = Field(default=300.0, gt=0)
    # On SIGTERM, how long running turns may take to finish before being failed.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
