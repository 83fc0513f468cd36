"""Probe and metrics routes every service serves: /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadyCheck = Callable[[], Awaitable[object]]


def add_probe_routes(app: web.Application, checks: Mapping[str, ReadyCheck]) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        failed: dict[str, str] = {}
        for name, check in checks.items():
            try:
                async with asyncio.timeout(2):
                    await check()
            except Exception as exc:  # a probe reports, it never raises
                failed[name] = type(exc).__name__
        if failed:
            return web.json_response(
                {"error": "dependencies not ready", "failed": failed}, status=503
            )
        return web.json_response({"ok": True, "checked": sorted(checks)})

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
