"""Where the real RabbitMQ, Redis and MongoDB for a test run are.

With a working Docker engine, testcontainers starts them; otherwise the URLs
from the environment (or the local defaults CONTRACT names) are used, and
`make test` has already started the embedded mongod.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Infra:
    rabbitmq_url: str
    redis_url: str
    mongodb_url: str  # without a database name
    source: str


def docker_available() -> bool:
    if os.environ.get("PARLEY_TEST_NO_DOCKER") or shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def provide_infra() -> Iterator[Infra]:
    if not docker_available():
        yield Infra(
            rabbitmq_url=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            mongodb_url=os.environ.get("MONGODB_URL", "mongodb://127.0.0.1:27017/").rsplit("/", 1)[
                0
            ]
            + "/",
            source="local servers",
        )
        return
    from testcontainers.mongodb import MongoDbContainer
    from testcontainers.rabbitmq import RabbitMqContainer
    from testcontainers.redis import RedisContainer

    with ExitStack() as stack:
        rabbit = stack.enter_context(RabbitMqContainer("rabbitmq:3.13"))
        redis = stack.enter_context(RedisContainer("redis:7"))
        mongo = stack.enter_context(MongoDbContainer("mongo:6"))
        yield Infra(
            rabbitmq_url=(
                f"amqp://guest:guest@{rabbit.get_container_host_ip()}:"
                f"{rabbit.get_exposed_port(5672)}/"
            ),
            redis_url=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
            mongodb_url=mongo.get_connection_url().rstrip("/") + "/",
            source="testcontainers",
        )
