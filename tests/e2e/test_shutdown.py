"""Graceful shutdown of each service process on SIGTERM (issue #8, point 7): what a
client sees, and that the process exits 0 within its grace (SHUTDOWN_GRACE_SECONDS).

- gateway: stops accepting connections at once; a stream that ends within the grace
  ends normally; one still open after it gets `error` `gateway_shutdown` (no id) and
  resumes on another gateway with exactly the rest of the reply; a JSON request still
  waiting gets a 503 naming the conversation, where the reply is then saved.
- worker: takes no new job; a turn that ends within the grace ends normally; the
  unfinished ones go back to the queue, where another worker takes them (a turn that
  had streamed ends as `worker_lost` with what was shown; one that had not is
  generated there in full).
- history: stops consuming, and a turn result it is saving when the signal comes is
  saved and announced before it exits (MongoDB is paused mid-save to hold it there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from parley_common.topology import Topology
from pymongo import AsyncMongoClient

from tests.e2e.conftest import ProcessStack
from tests.faults.client import (
    Turn,
    assert_one_ordered_stream,
    bearer,
    open_turn,
    saved,
    summary,
    words,
)
from tests.faults.servers import PrivateMongo, queue_depth, wait_until
from tests.support.infra import Infra
from tests.support.metrics import scrape
from tests.support.sse import parse_sse
from tests.support.stack import drop_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GRACE = 2.0
# What a process may take beyond its grace to exit: closing connections, a last write.
EXIT_MARGIN = 6.0


@pytest.fixture
async def stack(infra: Infra, tmp_path: Path) -> AsyncIterator[ProcessStack]:
    s = ProcessStack(
        infra,
        tmp_path,
        extra_env={"SHUTDOWN_GRACE_SECONDS": str(GRACE), "REDELIVERY_GRACE_SECONDS": "1"},
    )
    async with s.running():
        yield s


async def refuses_connections(url: str) -> bool:
    """True once nothing accepts connections at `url` any more."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            await resp.read()
    except aiohttp.ClientConnectionError:
        return True
    return False


async def test_gateway_sigterm_finishes_short_streams_and_hands_long_ones_to_another_gateway(
    stack: ProcessStack,
):
    other = await stack.add("gateway-2", "parley_gateway", port_var="GATEWAY_PORT")
    # Turn lengths leave seconds of margin either side of the grace on a busy machine.
    short_text, long_text = "[[sim:tokens=6]] [[sim:delay-ms=100]]", "[[sim:tokens=90]]"
    long_text += " [[sim:delay-ms=100]]"
    json_text = "[[sim:tokens=60]] [[sim:delay-ms=100]]"
    async with aiohttp.ClientSession() as http:
        short = await open_turn(http, stack.url, "user-short", {"text": short_text})
        long = await open_turn(http, stack.url, "user-long", {"text": long_text})
        waiting = asyncio.create_task(_post_json(http, stack.url, "user-json", json_text))
        await short.deltas_seen(2)
        await long.deltas_seen(2)
        await wait_until(
            lambda: any(
                r.get("event") == "chat.accepted" and r.get("user_id") == "user-json"
                for r in stack.records("gateway")
            ),
            within=10,
            what="the JSON request waiting for its reply",
        )

        stack.sigterm("gateway")
        signalled = time.monotonic()
        # No new turn: the listener closes at once.
        await wait_until(lambda: refuses_connections(stack.url), within=5, what="listener closed")
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.post(f"{stack.url}/api/chat", json={"text": "late"}, headers=bearer("u"))

        # The short stream ends as if nothing happened.
        end = await short.finish(within=20)
        assert end.event == "done" and end.data["reply"] == words(6) == short.reply
        assert_one_ordered_stream(short.events)

        # The long one outlives the grace: it is told to resume, by an event with no id.
        end = await long.finish(within=20)
        moved_after = time.monotonic() - signalled
        assert end.event == "error" and end.id is None, end
        assert end.data["code"] == "gateway_shutdown"
        assert f"/api/chat/jobs/{long.job_id}/events" in end.data["error"]
        assert GRACE - 0.5 <= moved_after <= GRACE + 3, moved_after
        shown = long.events[:-1]
        assert [int(e.id or -1) for e in shown] == list(range(len(shown)))
        assert [e.event for e in shown] == ["meta"] + ["assistant"] * (len(shown) - 1)

        # The JSON request learns where its reply will be.
        status, headers, body = await waiting
        assert status == 503 and body["code"] == "gateway_shutdown", body
        assert int(headers["Retry-After"]) > 0
        assert body["conversation_id"].startswith("user-json:") and body["job_id"]

        # The gateway exits 0 within its grace.
        assert await stack.exit_code("gateway", within=GRACE + EXIT_MARGIN) == 0

        # Another gateway resumes the job from the last id the client saw, to its end.
        last = int(shown[-1].id or 0)
        headers = bearer("user-long") | {"Last-Event-ID": str(last)}
        async with (
            asyncio.timeout(60),
            http.get(f"{other}/api/chat/jobs/{long.job_id}/events", headers=headers) as resp,
        ):
            assert resp.status == 200
            rest = parse_sse(await resp.text())[0]
        assert [int(e.id or -1) for e in rest] == list(range(last + 1, last + 1 + len(rest)))
        assert rest[-1].event == "done"
        reply = long.reply + "".join(e.data["delta"] for e in rest if e.event == "assistant")
        assert reply == words(90) == rest[-1].data["reply"]

        # The JSON request's reply went on and is saved (read through the other gateway).
        async def saved_reply() -> object:
            url = f"{other}/api/chat/messages?conversation_id={body['conversation_id']}"
            async with http.get(url, headers=bearer("user-json")) as resp:
                messages = (await resp.json())["messages"]
            return messages[-1]["role"] == "assistant" and messages[-1]["content"]

        assert await wait_until(saved_reply, within=20, what="JSON reply saved") == words(60)
    records = stack.records("gateway")
    moved = [r for r in records if r.get("event") == "gateway.streams_moved"]
    assert [r["streams"] for r in moved] == [2]  # the long stream and the JSON request


async def _post_json(
    http: aiohttp.ClientSession, url: str, user: str, text: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with http.post(f"{url}/api/chat", json={"text": text}, headers=bearer(user)) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_worker_sigterm_finishes_what_it_can_and_returns_the_rest_to_the_queue(
    stack: ProcessStack,
):
    worker_url = f"http://127.0.0.1:{stack.ports['worker']}"
    texts = {
        "short": "[[sim:tokens=8]] [[sim:delay-ms=100]]",
        # Streaming for 10 s: still running when the grace ends.
        "streamed": "[[sim:tokens=100]] [[sim:delay-ms=100]]",
        # Its first token comes after 5 s: nothing streamed when the grace ends.
        "silent": "[[sim:tokens=1]] [[sim:delay-ms=5000]]",
    }
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.infra.mongodb_url)
    try:
        async with aiohttp.ClientSession() as http:
            turns: dict[str, Turn] = {
                name: await open_turn(http, stack.url, f"user-{name}", {"text": text})
                for name, text in texts.items()
            }
            await turns["short"].deltas_seen(1)
            await turns["streamed"].deltas_seen(2)
            await wait_until(
                lambda: _in_flight(http, worker_url, 3), within=10, what="three turns running"
            )

            stack.sigterm("worker")
            signalled = time.monotonic()
            # Draining: not ready, and it takes no new job.
            await wait_until(
                lambda: _draining(http, worker_url), within=5, what="worker /readyz draining"
            )
            await wait_until(  # logged once its consumers are cancelled
                lambda: any(r.get("event") == "worker.draining" for r in stack.records("worker")),
                within=5,
                what="worker consumers cancelled",
            )
            late = await open_turn(http, stack.url, "user-late", {"text": "after the signal"})

            end = await turns["short"].finish(within=20)
            assert end.event == "done" and end.data["reply"] == words(8)
            assert await stack.exit_code("worker", within=GRACE + EXIT_MARGIN) == 0
            assert time.monotonic() - signalled >= GRACE  # it did wait for the grace

            # The unfinished jobs are back in the queue, with the one that came late.
            queue = Topology(stack.namespace).jobs_queue("groq")
            assert await queue_depth(stack.infra.rabbitmq_url, queue) == 3
            records = stack.records("worker")
            returned = {r["job_id"] for r in records if r.get("event") == "job.returned"}
            assert returned == {turns["streamed"].job_id, turns["silent"].job_id}
            started = {r["job_id"] for r in records if r.get("event") == "job.started"}
            assert late.job_id not in started

            # Another worker takes them.
            await stack.add(
                "worker-2", "parley_worker", "--provider", "groq", port_var="WORKER_PORT"
            )
            streamed = turns["streamed"]
            end = await streamed.finish(within=30)
            assert end.event == "error" and end.data["code"] == "worker_lost", end.data
            assert words(100).startswith(streamed.reply) and streamed.reply
            assert_one_ordered_stream(streamed.events)
            end = await turns["silent"].finish(within=30)
            assert end.event == "done" and end.data["reply"] == words(1) == turns["silent"].reply
            end = await late.finish(within=30)
            assert end.event == "done" and end.data["reply"] == "Echo: after the signal"
            for t in (*turns.values(), late):
                t.close()

        # What history holds is what each client was shown.
        db = mongo[stack.db_name]
        assert summary(await saved(db, streamed.conversation_id))[-1] == (
            "assistant",
            "error",
            streamed.reply,
        )
        assert summary(await saved(db, turns["silent"].conversation_id))[-1] == (
            "assistant",
            "complete",
            words(1),
        )
    finally:
        await mongo.close()


async def _in_flight(http: aiohttp.ClientSession, url: str, n: int) -> bool:
    samples = await scrape(http, url)
    return samples.get("parley_worker_turns_in_flight", provider="groq") == n


async def _draining(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as resp:
        body = await resp.json()
        return resp.status == 503 and body.get("failed") == {"process": "draining"}


@pytest.fixture
async def mongo_stack(infra: Infra, tmp_path: Path) -> AsyncIterator[tuple[ProcessStack, Any]]:
    mongo = PrivateMongo(tmp_path / "mongo")
    await mongo.start()
    private = dataclasses.replace(infra, mongodb_url=mongo.url, source="private mongod")
    s = ProcessStack(private, tmp_path / "logs")
    s.logdir.mkdir()
    try:
        await s.start()
        yield s, mongo
    finally:
        if mongo.proc is not None:
            os.kill(mongo.proc.pid, signal.SIGCONT)
        await s.stop()
        await drop_run(private, s.db_name, s.namespace)
        await mongo.close()


async def test_history_sigterm_saves_the_result_it_is_handling_before_it_exits(
    mongo_stack: tuple[ProcessStack, PrivateMongo],
):
    stack, mongo = mongo_stack
    assert mongo.proc is not None
    history_url = f"http://127.0.0.1:{stack.ports['history']}"
    async with aiohttp.ClientSession() as http:
        turn = await open_turn(
            http, stack.url, "user-h", {"text": "[[sim:tokens=6]] [[sim:delay-ms=100]]"}
        )
        await turn.deltas_seen(1)
        # MongoDB stops answering (paused, not gone): the save of this turn's result
        # will wait inside history.
        os.kill(mongo.proc.pid, signal.SIGSTOP)
        try:

            async def saving() -> bool:
                samples = await scrape(http, history_url)
                return samples.get("parley_history_results_in_flight") == 1

            await wait_until(saving, within=15, what="history saving the result")
            stack.sigterm("history")
            await wait_until(
                lambda: any(r.get("event") == "history.draining" for r in stack.records("history")),
                within=5,
                what="history draining",
            )
            assert stack.procs["history"].poll() is None  # waiting for the save
        finally:
            os.kill(mongo.proc.pid, signal.SIGCONT)
        end = await turn.finish(within=20)
        turn.close()
    assert end.event == "done" and end.data["reply"] == words(6) == turn.reply
    assert await stack.exit_code("history", within=10 + EXIT_MARGIN) == 0
    events = [r.get("event") for r in stack.records("history")]
    assert "history.drain_incomplete" not in events
    assert events.index("history.draining") < events.index("turn.saved")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    try:
        docs = await saved(client[stack.db_name], turn.conversation_id)
    finally:
        await client.close()
    assert summary(docs)[-1] == ("assistant", "complete", words(6))
