"""Typed settings shared by every service.

Field names are the environment variable names of CONTRACT.md (matched
case-insensitively). Precedence: process environment, then a `.env` file in the
working directory, then the defaults below.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_common.redact import secret_values


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    parley_namespace: str = ""
    # Redis connections per process, and how long a command waits for a free one when
    # all are busy (then it fails like an unreachable Redis).
    redis_max_connections: int = Field(default=64, ge=2, le=10_000)
    redis_pool_timeout: float = Field(default=5.0, gt=0)
    history_url: str = "http://127.0.0.1:8081"
    # Shared secret that gateway and workers present to history's internal API.
    history_service_token: SecretStr = SecretStr("")
    log_format: str = "json"
    log_level: str = "info"
    # How long a job's replay log stays in Redis after its last event (seconds).
    replay_log_ttl: int = Field(default=3600, ge=10)
    # The longest a job may take from publish to its last token (seconds).
    job_deadline_seconds: int = Field(default=600, ge=10)

    def redis_client(self, client_name: str | None = None) -> aioredis.Redis:
        """A client whose commands queue for a connection when all are busy, rather
        than fail: a burst of streams must not turn into errors."""
        pool = aioredis.BlockingConnectionPool.from_url(
            self.redis_url.get_secret_value(),
            max_connections=self.redis_max_connections,
            timeout=self.redis_pool_timeout,
            client_name=client_name,
        )
        return aioredis.Redis(connection_pool=pool)

    def secret_values(self) -> list[str]:
        """Every secret this process holds (keys, tokens, URL passwords), for scrubbing."""
        return secret_values(getattr(self, name) for name in type(self).model_fields)
