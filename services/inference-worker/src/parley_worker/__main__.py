"""`python -m parley_worker [--provider NAME ...]`: run an inference worker."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog
from aiohttp import web
from parley_common.http import add_probe_routes, amqp_connected, request_metrics
from parley_common.logging import configure_logging
from parley_common.runtime import freeze_startup_heap, full_collections, loop_factory

from parley_worker.consumer import Worker
from parley_worker.metrics import REQUEST_SECONDS, REQUESTS
from parley_worker.providers.registry import SUPPORTED
from parley_worker.settings import WorkerSettings

log = structlog.get_logger("parley_worker")


def choose_providers(settings: WorkerSettings, asked: list[str]) -> list[str]:
    names = [p.strip() for a in asked for p in a.split(",") if p.strip()]
    if not names and settings.worker_providers:
        names = [p.strip() for p in settings.worker_providers.split(",") if p.strip()]
    configured = settings.configured_providers()
    if not names:
        names = [p for p in configured if p in SUPPORTED]
    for name in names:
        if name not in configured:
            raise SystemExit(f"provider {name!r} is not configured (set its key)")
        if name not in SUPPORTED:
            raise SystemExit(f"provider {name!r} is not supported by this worker")
    if not names:
        raise SystemExit("no provider configured: set a provider key (see README)")
    return names


async def serve(settings: WorkerSettings, providers: list[str]) -> None:
    worker = Worker(settings, providers)
    await worker.start()

    async def amqp_ready() -> object:
        return await amqp_connected(worker.connection)

    async def redis_ready() -> object:
        assert worker.redis is not None
        return await worker.redis.ping()

    # Its own dependencies only: the worker never calls history (results reach it
    # through RabbitMQ), so history being down does not make a worker unready.
    app = web.Application(middlewares=[request_metrics(REQUESTS, REQUEST_SECONDS)])
    add_probe_routes(
        app, {"rabbitmq": amqp_ready, "redis": redis_ready}, draining=lambda: worker.stopping
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.worker_host, settings.worker_port).start()
    log.info("worker.started", providers=providers, port=settings.worker_port)
    freeze_startup_heap()  # now with the provider clients (see parley_common.runtime)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with full_collections():
        await stop.wait()
    # Probes and metrics stay up while running turns finish (/readyz answers 503).
    log.info("worker.stopping", running=worker.running)
    await worker.stop()
    await runner.cleanup()
    log.info("worker.stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley_worker")
    parser.add_argument(
        "--provider", action="append", default=[], help="provider to serve (repeatable)"
    )
    args = parser.parse_args(argv)
    settings = WorkerSettings()
    configure_logging(
        "worker", settings.log_format, settings.log_level, secrets=settings.secret_values()
    )
    try:
        providers = choose_providers(settings, args.provider)
    except SystemExit as exc:
        log.error("worker.config_error", error=str(exc))
        sys.exit(2)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(settings, providers))


if __name__ == "__main__":
    main()
