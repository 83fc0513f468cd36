"""The stack under benchmark: each service a real process, and what each one costs.

Every Parley process (simulator, history, worker, gateway) runs as `python -m …`
with its own namespace and database on the shared RabbitMQ, Redis and MongoDB, the
way it runs in production. CPU time is read from `/proc/<pid>/stat` (user + system)
before and after each scenario, for Parley's processes and for the RabbitMQ, Redis
and MongoDB servers (found by the port they listen on). Linux only.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt

from tests.support.infra import Infra
from tests.support.procs import wait_ready
from tests.support.stack import drop_run

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"  # noqa: S105 - local only
PROVIDER = "groq"  # OpenAI-compatible Chat Completions, through the openai SDK
# What the benchmark sets beyond addresses and credentials (recorded with the results).
# Per-user limits stay at their defaults: every client stream is a user of its own.
SERVICE_ENV = {
    # One worker process takes every concurrent turn of the 256-stream scenario.
    "WORKER_CONCURRENCY": "256",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (from /proc, no tools needed)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except FileNotFoundError:
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                m = re.fullmatch(r"socket:\[(\d+)\]", link)
                if m and m.group(1) in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": user, "iat": now, "exp": now + 6 * 3600}, BENCH_SECRET, algorithm="HS256"
    )


@dataclass(frozen=True)
class Proxy:
    """Another OpenAI-compatible proxy, run in front of the same simulator and driven
    with the direct baseline's load: `command` is a shell command, in which `{sim_url}`
    becomes the simulator's OpenAI base URL and `{port}` the port to listen on; the
    proxy is asked at `http://127.0.0.1:{port}{path}/chat/completions` for `model`,
    with `key` as its bearer token."""

    command: str
    model: str = "sim-model"
    key: str = "sim-key"
    path: str = "/v1"


@dataclass
class BenchStack:
    infra: Infra
    logdir: Path
    # Extra environment for every Parley process (e.g. knobs under test).
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    with_worker: bool = True
    namespace: str = field(default_factory=lambda: f"b{secrets.token_hex(4)}.")
    db_name: str = field(default_factory=lambda: f"parley_bench_{secrets.token_hex(4)}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    proxy: Proxy | None = None
    _proxy_proc: subprocess.Popen[bytes] | None = None
    _proxy_pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sim']}"

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.ports['proxy']}{self.proxy.path}"

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_HOST"))}
        return (
            base
            | {
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "warning",  # log lines would be measured too
                "PARLEY_NAMESPACE": self.namespace,
                "RABBITMQ_URL": self.infra.rabbitmq_url,
                "REDIS_URL": self.infra.redis_url,
                "MONGODB_URL": f"{self.infra.mongodb_url}{self.db_name}",
                "GATEWAY_PORT": str(self.ports["gateway"]),
                "HISTORY_PORT": str(self.ports["history"]),
                "HISTORY_URL": f"http://127.0.0.1:{self.ports['history']}",
                "HISTORY_SERVICE_TOKEN": "bench-service-token",
                "AUTH_JWT_SECRET": BENCH_SECRET,
                "GROQ_API_KEY": "sim-key",
                "GROQ_BASE_URL": f"{self.sim_url}/openai/v1",
                "GROQ_MODEL": "sim-model",
            }
            | SERVICE_ENV
            | self.extra_env
        )

    async def start(self) -> BenchStack:
        self.ports = {"gateway": free_port(), "history": free_port(), "sim": free_port()}
        env = self.env()
        self._spawn("sim", env, "parley_sim", "--port", str(self.ports["sim"]))
        self._spawn("history", env, "parley_history")
        await self.wait_ready(f"http://127.0.0.1:{self.ports['history']}/readyz")
        if self.with_worker:
            for i in range(self.workers):
                port = free_port()
                self.ports[f"worker{i}"] = port
                self._spawn(
                    f"worker{i}", env | {"WORKER_PORT": str(port)}, "parley_worker",
                    "--provider", PROVIDER,
                )  # fmt: skip
                await self.wait_ready(f"http://127.0.0.1:{port}/readyz")
        self._spawn("gateway", env, "parley_gateway")
        await self.wait_ready(f"{self.url}/readyz")
        if self.proxy is not None:
            await self._start_proxy(self.proxy)
        return self

    def _spawn_proxy(self, command: str) -> subprocess.Popen[bytes]:
        log = open(self.logdir / "proxy.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(  # noqa: S602 - the operator's own command line
            command, shell=True, stdout=log, stderr=log, start_new_session=True
        )

    async def _start_proxy(self, proxy: Proxy, seconds: float = 180) -> None:
        port = self.ports["proxy"] = free_port()
        command = proxy.command.format(sim_url=f"{self.sim_url}/openai/v1", port=port)
        self._proxy_proc = self._spawn_proxy(command)
        deadline = time.monotonic() + seconds
        while (pid := listener_pid(port)) is None:
            if self._proxy_proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.logdir / "proxy.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"proxy did not listen on {port}: {command}\n{tail}")
            await asyncio.sleep(0.5)
        self._proxy_pid = pid

    def proxy_cpu(self) -> float:
        """CPU seconds of the proxy's listening process."""
        assert self._proxy_pid is not None
        return cpu_seconds(self._proxy_pid)

    def _spawn(self, name: str, env: dict[str, str], module: str, *args: str) -> None:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, stdout=log, stderr=log, cwd=ROOT
        )

    async def wait_ready(self, url: str, seconds: float = 60) -> None:
        await wait_ready(url, self.procs, self.logdir, seconds)

    def pids(self) -> dict[str, int]:
        """Every process whose CPU is reported: Parley's and the servers'."""
        out = {name: proc.pid for name, proc in self.procs.items()}
        for name, url in (
            ("rabbitmq", self.infra.rabbitmq_url),
            ("redis", self.infra.redis_url),
            ("mongodb", self.infra.mongodb_url),
        ):
            parts = urlsplit(url)
            default = {"rabbitmq": 5672, "redis": 6379, "mongodb": 27017}[name]
            if parts.hostname in ("127.0.0.1", "localhost"):
                pid = listener_pid(parts.port or default)
                if pid is not None:
                    out[name] = pid
        return out

    def cpu(self) -> dict[str, float]:
        # The load generator (this process) too: it shares the machine's two cores.
        out: dict[str, float] = {"load_generator": cpu_seconds(os.getpid())}
        for name, pid in self.pids().items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                continue
        return out

    async def stop(self) -> dict[str, int | None]:
        if self._proxy_proc is not None and self._proxy_proc.poll() is None:
            os.killpg(self._proxy_proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self._proxy_proc.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proxy_proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        await drop_run(self.infra, self.db_name, self.namespace)
        return codes


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if name in before}
