"""`make run`'s supervisor: the whole stack from one command, keyless, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import free_port
from tests.support.infra import Infra
from tests.support.sse import parse_sse
from tests.support.stack import drop_run

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
async def test_make_run_answers_through_the_simulator_and_stops_cleanly(
    infra: Infra, tmp_path: Path
):
    namespace = f"r{secrets.token_hex(4)}."
    db = f"parley_run_{secrets.token_hex(4)}"
    ports = {k: free_port() for k in ("GATEWAY_PORT", "HISTORY_PORT", "WORKER_PORT", "SIM_PORT")}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_HOST")) and k != "AUTH_JWT_SECRET"
    }
    env |= {k: str(v) for k, v in ports.items()} | {
        "HISTORY_URL": f"http://127.0.0.1:{ports['HISTORY_PORT']}",
        "PARLEY_NAMESPACE": namespace,
        "RABBITMQ_URL": infra.rabbitmq_url,
        "REDIS_URL": infra.redis_url,
        "MONGODB_URL": f"{infra.mongodb_url}{db}",
        "LOG_FORMAT": "json",
    }
    log = tmp_path / "run.log"
    out = await asyncio.to_thread(open, log, "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "devstack.py"),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so cleanup reaches the children
    )
    out.close()
    try:
        url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while "Parley is up" not in log.read_text(errors="replace"):
                    assert proc.returncode is None, log.read_text()
                    await asyncio.sleep(0.2)  # waiting for a separate process to boot
            banner = log.read_text()
            assert "SIMULATOR" in banner and "NO PROVIDER KEY" in banner
            minter = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "scripts" / "mint_token.py"),
                "user-run",
                env={"PATH": ""},
                stdout=subprocess.PIPE,
            )
            token = (await minter.communicate())[0].decode().strip()
            async with http.post(
                f"{url}/api/chat",
                json={"text": "hello from make run"},
                headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
            ) as resp:
                events, _ = parse_sse(await resp.text())
        assert events[0].data["provider"] == "openai"
        assert events[-1].event == "done"
        assert events[-1].data["reply"] == "Echo: hello from make run"
        # Keyless, `web: true` is served by the simulator's search as well.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/api/chat",
                json={"text": "search please", "web": True},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["reply"] == "Echo: search please"
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/api/chat",
                json={"text": "parrots [[sim:tool=web_search]]", "web": True},
                headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
            ) as resp,
        ):
            events, _ = parse_sse(await resp.text())
        statuses = [e.data["message"] for e in events if e.event == "status"]
        assert any("Searching the web" in m for m in statuses), statuses
        assert events[-1].event == "done", events[-1].data
        assert "simulated search result" in events[-1].data["reply"]
        assert events[-1].data["sources"][0]["url"].startswith("https://example.org/")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert "stopping" in log.read_text()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await drop_run(infra, db, namespace)
