"""The services as separate processes: entry points, log correlation, clean shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import ProcessStack
from tests.support.sse import parse_sse

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def mint(secret: str, user: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mint_token.py"), user],
        env={"AUTH_JWT_SECRET": secret, "PATH": ""},
        capture_output=True,
        check=True,
        text=True,
    )
    return out.stdout.strip()


async def test_turn_across_processes_logs_one_request_and_job_id_everywhere(
    processes: ProcessStack,
):
    token = mint(processes.env()["AUTH_JWT_SECRET"], "user-e2e")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{processes.url}/api/chat",
            json={"text": "across processes", "provider": "groq"},
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        ) as resp,
    ):
        assert resp.status == 200
        request_id = resp.headers["X-Request-ID"]
        events, _ = parse_sse(await resp.text())
    assert events[-1].event == "done"
    assert events[-1].data["reply"] == "Echo: across processes"
    job_id = events[0].data["job_id"]

    codes = await processes.stop()
    assert codes == {"gateway": 0, "worker": 0, "history": 0, "sim": 0}

    for service in ("gateway", "worker", "history"):
        records = []
        for line in processes.log_lines(service):
            if line.startswith("{"):
                records.append(json.loads(line))
        mine = [r for r in records if r.get("job_id") == job_id]
        assert mine, f"{service} logged nothing for the job"
        assert all(r["request_id"] == request_id for r in mine), service
        assert all(r["service"] == service for r in mine)
        # Once a turn's request id is known, it never appears without the job id.
        for r in records:
            if r.get("request_id") == request_id:
                assert r.get("job_id") == job_id, (service, r)
