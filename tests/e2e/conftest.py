"""The stack as real processes (`python -m ...`), each logging JSON to its own file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.infra import Infra
from tests.support.procs import wait_ready
from tests.support.stack import JWT_SECRET, drop_run


def sim_provider_env(sim_url: str) -> dict[str, str]:
    """Every provider configured against the simulator (each through its own SDK and
    wire protocol), as environment variables."""
    return {
        "GROQ_API_KEY": "sim-key",
        "GROQ_BASE_URL": f"{sim_url}/openai/v1",
        "OPENROUTER_API_KEY": "sim-key",
        "OPENROUTER_BASE_URL": f"{sim_url}/api/v1",
        "OPENAI_API_KEY": "sim-key",
        "OPENAI_BASE_URL": f"{sim_url}/v1",
        "ANTHROPIC_API_KEY": "sim-key",
        "ANTHROPIC_BASE_URL": sim_url,
        "CLAUDE_MODEL": "claude-sim-1",  # not a real model: the SDK warns about old ones
        "GOOGLE_API_KEY": "sim-key",
        "GOOGLE_BASE_URL": sim_url,
        "OLLAMA_HOST": sim_url,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ProcessStack:
    infra: Infra
    logdir: Path
    namespace: str = field(default_factory=lambda: f"e{secrets.token_hex(4)}.")
    db_name: str = field(default_factory=lambda: f"parley_e2e_{secrets.token_hex(4)}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # How each service was started, so that `restart` can start it again.
    spawned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Per-process environment additions (e.g. a second gateway's port).
    spawn_env: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Processes a test stopped on purpose (`sigterm`): their exit is not a failure.
    stopped: set[str] = field(default_factory=set)
    # What a test adds to every process's environment (`{sim}` in a value stands for
    # the simulator's URL), and the providers the worker serves (none: no worker).
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_providers: tuple[str, ...] = ("groq",)

    def env(self) -> dict[str, str]:
        return self._env

    async def start(self) -> None:
        ports = {name: free_port() for name in ("gateway", "history", "worker", "sim")}
        self.ports = ports
        self.url = f"http://127.0.0.1:{ports['gateway']}"
        sim = f"http://127.0.0.1:{ports['sim']}"
        base = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_HOST"))}
        self._env = (
            base
            | {
                "LOG_FORMAT": "json",
                "PARLEY_NAMESPACE": self.namespace,
                "RABBITMQ_URL": self.infra.rabbitmq_url,
                "REDIS_URL": self.infra.redis_url,
                "MONGODB_URL": f"{self.infra.mongodb_url}{self.db_name}",
                "GATEWAY_PORT": str(ports["gateway"]),
                "HISTORY_PORT": str(ports["history"]),
                "WORKER_PORT": str(ports["worker"]),
                "HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
                "HISTORY_SERVICE_TOKEN": "e2e-service-token",
                "AUTH_JWT_SECRET": JWT_SECRET,
                "GROQ_API_KEY": "sim-key",
                "GROQ_BASE_URL": f"{sim}/openai/v1",
            }
            | {name: value.replace("{sim}", sim) for name, value in self.extra_env.items()}
        )
        self._spawn("sim", "parley_sim", "--port", str(ports["sim"]))
        self._spawn("history", "parley_history")
        await self.wait_http(f"http://127.0.0.1:{ports['history']}/readyz")
        if self.worker_providers:
            providers = [arg for p in self.worker_providers for arg in ("--provider", p)]
            self._spawn("worker", "parley_worker", *providers)
            await self.wait_http(f"http://127.0.0.1:{ports['worker']}/readyz")
        self._spawn("gateway", "parley_gateway")
        await self.wait_http(f"{self.url}/readyz")

    def _spawn(
        self,
        name: str,
        module: str,
        *args: str,
        append: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start `python -m module args` as process `name`, logging to `<name>.log`;
        `env` adds to (or overrides) the stack's environment for this process only."""
        mode = "ab" if append else "wb"
        log = open(self.logdir / f"{name}.log", mode)  # noqa: SIM115 - closed with the process
        self.spawned[name] = (module, *args)
        if env is not None:
            self.spawn_env[name] = env
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self._env | self.spawn_env.get(name, {}),
            stdout=log,
            stderr=log,
        )

    async def add(
        self, name: str, module: str, *args: str, port_var: str, wait: bool = True
    ) -> str:
        """Start one more service process (a second gateway, another worker) on a port of
        its own and (unless `wait` is false) wait for its readiness probe; its base URL."""
        port = free_port()
        self.ports[name] = port
        self._spawn(name, module, *args, env={port_var: str(port)})
        url = f"http://127.0.0.1:{port}"
        if wait:
            await self.wait_http(f"{url}/readyz")
        return url

    def sigterm(self, name: str) -> None:
        self.stopped.add(name)
        self.procs[name].send_signal(signal.SIGTERM)

    async def exit_code(self, name: str, within: float) -> int:
        """The process's exit code; raises subprocess.TimeoutExpired if it runs on."""
        return await asyncio.to_thread(self.procs[name].wait, within)

    def records(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of one process, parsed."""
        return [json.loads(line) for line in self.log_lines(name) if line.startswith("{")]

    async def kill(self, name: str) -> int:
        """SIGKILL one service (no shutdown code runs, as in a crash); its exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.kill()
        return await asyncio.to_thread(proc.wait, 30)

    async def restart(self, name: str) -> None:
        """Start a service again as it was first started (its log goes on in the same file),
        and wait until its readiness probe answers."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"{name} is still running")
        module, *args = self.spawned[name]
        self.stopped.discard(name)
        self._spawn(name, module, *args, append=True)
        if name == "sim":
            return
        await self.wait_http(f"http://127.0.0.1:{self.ports[name]}/readyz")

    async def wait_http(self, url: str, seconds: float = 30) -> None:
        await wait_ready(url, self.procs, self.logdir, seconds, expected_down=self.stopped)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProcessStack]:
        """Started, then stopped and its queues, keys and database dropped."""
        try:
            await self.start()
            yield self
        finally:
            await self.stop()
            await drop_run(self.infra, self.db_name, self.namespace)

    def log_lines(self, name: str) -> list[str]:
        return (self.logdir / f"{name}.log").read_text().splitlines()

    async def stop(self) -> dict[str, int]:
        """SIGTERM every process (gateways, then workers, history, the simulator, each
        kind at once), and their exit codes (-9: killed after 30 s)."""
        codes: dict[str, int] = {}
        for kind in ("gateway", "worker", "history", "sim", ""):
            names = [n for n in self.procs if n not in codes and n.startswith(kind)]
            for name in names:
                if self.procs[name].poll() is None:
                    self.procs[name].send_signal(signal.SIGTERM)
            for name in names:
                proc = self.procs[name]
                try:
                    codes[name] = await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    codes[name] = -9
        return codes


@pytest.fixture
async def processes(infra: Infra, tmp_path: Path) -> AsyncIterator[ProcessStack]:
    async with ProcessStack(infra, tmp_path).running() as stack:
        yield stack
