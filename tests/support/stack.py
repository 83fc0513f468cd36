"""The whole stack in the test's event loop: simulator, history, worker, gateway.

Every stack gets its own PARLEY_NAMESPACE (queues, exchanges, Redis keys) and
its own MongoDB database, and removes them when it stops.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import jwt
import redis.asyncio as aioredis
from aiohttp import web
from parley_common.providers import IMPLEMENTED
from parley_common.topology import Topology
from parley_gateway.app import create_app as create_gateway
from parley_gateway.settings import GatewaySettings
from parley_history.app import create_app as create_history
from parley_history.settings import HistorySettings
from parley_sim.server import STATE as SIM_STATE
from parley_sim.server import SimState
from parley_sim.server import create_app as create_sim
from parley_worker.consumer import Worker
from parley_worker.settings import WorkerSettings
from pymongo import AsyncMongoClient

from tests.support.infra import Infra
from tests.support.sse import SseEvent, parse_sse

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
SERVICE_TOKEN = "test-service-token-0123456789"


async def _serve(app: web.Application, **runner_kwargs: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class ChatResult:
    status: int
    headers: dict[str, str]
    events: list[SseEvent]
    raw: str
    json: Any = None

    def of(self, kind: str) -> list[SseEvent]:
        return [e for e in self.events if e.event == kind]

    @property
    def last(self) -> SseEvent:
        return self.events[-1]


@dataclass
class Stack:
    infra: Infra
    providers: tuple[str, ...] = ("ollama", "groq", "google", "claude", "openai", "openrouter")
    env: dict[str, Any] = field(default_factory=dict)
    namespace: str = field(default_factory=lambda: f"t{secrets.token_hex(4)}.")
    db_name: str = field(default_factory=lambda: f"parley_test_{secrets.token_hex(4)}")
    start_worker: bool = True
    # The simulator stops a handler when its client goes away (so that a `[[sim:hang]]`
    # the worker gave up on does not hold the simulator's shutdown for a minute).
    sim_handler_cancellation: bool = False
    # The gateway's own Redis URL (e.g. another ACL user), when not infra.redis_url.
    gateway_redis_url: str | None = None

    async def start(self) -> Stack:
        self._runners: list[web.AppRunner] = []
        self.sim_app = create_sim()
        sim_runner: dict[str, Any] = (
            {"handler_cancellation": True, "shutdown_timeout": 1.0}
            if self.sim_handler_cancellation
            else {}
        )
        runner, self.sim_url = await _serve(self.sim_app, **sim_runner)
        self._runners.append(runner)
        common: dict[str, Any] = {
            "_env_file": None,
            "rabbitmq_url": self.infra.rabbitmq_url,
            "redis_url": self.infra.redis_url,
            "parley_namespace": self.namespace,
            "history_service_token": SERVICE_TOKEN,
        }
        keys: dict[str, Any] = {}
        if "groq" in self.providers:
            keys |= {"groq_api_key": "sim-key", "groq_base_url": f"{self.sim_url}/openai/v1"}
        if "openrouter" in self.providers:
            keys |= {
                "openrouter_api_key": "sim-key",
                "openrouter_base_url": f"{self.sim_url}/api/v1",
            }
        if "openai" in self.providers:
            keys |= {"openai_api_key": "sim-key", "openai_base_url": f"{self.sim_url}/v1"}
        if "claude" in self.providers:
            # Not a real model name: the SDK warns about deprecated ones.
            keys |= {
                "anthropic_api_key": "sim-key",
                "anthropic_base_url": self.sim_url,
                "claude_model": "claude-sim-1",
            }
        if "google" in self.providers:
            keys |= {"google_api_key": "sim-key", "google_base_url": self.sim_url}
        if "ollama" in self.providers:
            keys |= {"ollama_host": self.sim_url}
        keys |= self.env.get("keys", {})
        self.mongodb_url = f"{self.infra.mongodb_url}{self.db_name}"
        self.history_settings = HistorySettings(
            **common, mongodb_url=self.mongodb_url, **self.env.get("history", {})
        )
        runner, self.history_url = await _serve(create_history(self.history_settings))
        self._runners.append(runner)
        self._history_runner: web.AppRunner | None = runner
        worker_env: dict[str, Any] = {"provider_retry_base_seconds": 0.02}
        worker_env |= self.env.get("worker", {})
        self.worker_settings = WorkerSettings(
            **common, history_url=self.history_url, **keys, **worker_env
        )
        self.worker: Worker | None = None
        if self.start_worker:
            await self.start_worker_now()
        gateway_common = common | (
            {"redis_url": self.gateway_redis_url} if self.gateway_redis_url else {}
        )
        self.gateway_settings = GatewaySettings(
            **gateway_common,
            history_url=self.history_url,
            auth_jwt_secret=JWT_SECRET,
            **keys,
            **self.env.get("gateway", {}),
        )
        runner, self.url = await _serve(create_gateway(self.gateway_settings))
        self._runners.append(runner)
        self.http = aiohttp.ClientSession()
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongodb_url)
        self.db = self.mongo[self.db_name]
        return self

    async def start_worker_now(self) -> Worker:
        names = [p for p in self.providers if p in IMPLEMENTED]
        self.worker = Worker(self.worker_settings, names)
        await self.worker.start()
        return self.worker

    async def stop_history(self) -> None:
        """Take the history service away (HTTP API and turn consumer), as a crash would."""
        runner = self._history_runner
        if runner is None:
            return
        self._history_runner = None
        self._runners.remove(runner)
        await runner.cleanup()

    async def start_history(self) -> None:
        """A new history instance at the same address the gateway and worker use."""
        if self._history_runner is not None:
            return
        port = int(self.history_url.rsplit(":", 1)[1])
        runner = web.AppRunner(create_history(self.history_settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._history_runner = runner
        self._runners.insert(1, runner)

    @property
    def history_app(self) -> web.Application:
        """The running history instance's application (its store, settings)."""
        assert self._history_runner is not None, "history is stopped"
        return self._history_runner.app

    @property
    def sim(self) -> SimState:
        return self.sim_app[SIM_STATE]

    async def stop(self) -> None:
        await self.http.close()
        if self.worker is not None:
            await self.worker.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        await self.mongo.drop_database(self.db_name)
        await self.mongo.close()
        await purge_namespace(self.infra, self.namespace)

    # --- client helpers -------------------------------------------------
    def token(self, user: str, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 600} | claims
        return jwt.encode({k: v for k, v in body.items() if v is not None}, JWT_SECRET, "HS256")

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    async def chat(
        self,
        user: str,
        body: dict[str, Any],
        *,
        stream: bool = True,
        headers: dict[str, str] | None = None,
        path: str = "/api/chat",
    ) -> ChatResult:
        h = self.auth(user) | (headers or {})
        if stream:
            h.setdefault("Accept", "text/event-stream")
        async with self.http.post(f"{self.url}{path}", json=body, headers=h) as resp:
            raw = await resp.text()
            ctype = resp.headers.get("Content-Type", "")
            events, _ = parse_sse(raw) if ctype.startswith("text/event-stream") else ([], [])
            js = None if events or not ctype.startswith("application/json") else await resp.json()
            return ChatResult(resp.status, dict(resp.headers), events, raw, js)

    async def messages_in_db(self, conversation_id: str) -> list[dict[str, Any]]:
        cursor = self.db["messages"].find({"conversation_id": conversation_id}).sort("seq", 1)
        return await cursor.to_list()


async def drop_run(infra: Infra, db_name: str, namespace: str) -> None:
    """Remove what one run of the stack left: its database, queues, exchanges and keys."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_url)
    try:
        await mongo.drop_database(db_name)
    finally:
        await mongo.close()
    await purge_namespace(infra, namespace)


async def purge_namespace(infra: Infra, namespace: str) -> None:
    """Delete every queue, exchange and Redis key this namespace created."""
    topo = Topology(namespace)
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        channel = await connection.channel()
        queues = [
            topo.jobs_queue(p)
            for p in ("ollama", "groq", "google", "claude", "openai", "openrouter")
        ]
        for q in [*queues, topo.dead_queue, topo.history_queue, topo.history_dead_queue]:
            await channel.queue_delete(q)
        for ex in (topo.jobs_exchange, topo.events_exchange, topo.dead_exchange):
            await channel.exchange_delete(ex)
    finally:
        await connection.close()
    redis = aioredis.from_url(infra.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{namespace}*", count=500)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
