"""A worker killed with SIGKILL mid-turn: the job is redelivered to a new worker process,
and its client ends with one consistent reply or a clear error, never two attempts mixed."""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from tests.e2e.conftest import ProcessStack
from tests.faults.client import (
    assert_one_ordered_stream,
    open_turn,
    resume,
    same_events,
    saved,
    sim_requests,
    summary,
    words,
)
from tests.faults.servers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def job_starts(processes: ProcessStack, job_id: str) -> list[bool]:
    """`redelivered` of every `job.started` the worker logged for this job, in order."""
    out = []
    for line in processes.log_lines("worker"):
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == "job.started" and record.get("job_id") == job_id:
            out.append(bool(record.get("redelivered")))
    return out


async def sim_calls(http: aiohttp.ClientSession, processes: ProcessStack, text: str) -> int:
    """How many provider calls the simulator received for this exact prompt."""
    return len(await sim_requests(http, f"http://127.0.0.1:{processes.ports['sim']}", text))


async def test_worker_killed_after_tokens_ends_in_worker_lost_with_exactly_what_was_streamed(
    processes: ProcessStack,
) -> None:
    user = f"user-{secrets.token_hex(3)}"
    total = 60
    text = f"[[sim:tokens={total}]] [[sim:delay-ms=80]]"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(processes.infra.mongodb_url)
    try:
        async with aiohttp.ClientSession() as http:
            turn = await open_turn(http, processes.url, user, {"text": text, "provider": "groq"})
            await turn.deltas_seen(3)
            assert await processes.kill("worker") == -9
            await processes.restart("worker")
            end = await turn.finish(within=60)
            turn.close()

            # The client: meta, the first attempt's deltas, then one error. No `done`.
            assert_one_ordered_stream(turn.events)
            kinds = turn.kinds
            assert kinds == ["meta"] + ["assistant"] * (len(kinds) - 2) + ["error"], kinds
            assert end.data["code"] == "worker_lost", end.data
            assert end.data["message_id"] == f"msg-{turn.job_id}-a"
            shown = turn.reply
            assert len(turn.of("assistant")) >= 3
            # One attempt's words, in order: a strict prefix of the single full reply.
            assert words(total).startswith(shown) and len(shown) < len(words(total)), shown

            # The job was delivered twice, and the second delivery did not call the
            # provider again: it ended the turn with what the first had streamed.
            assert job_starts(processes, turn.job_id) == [False, True]
            assert await sim_calls(http, processes, text) == 1

            # A client resuming from the start replays exactly what this client saw.
            replay = await resume(http, processes.url, user, turn.job_id)
            assert same_events(replay, turn.events)

        # What was saved: the user message and the partial reply, marked as an error,
        # equal to the deltas the client received.
        db = mongo[processes.db_name]
        docs = await saved(db, turn.conversation_id)
        assert summary(docs) == [("user", "complete", text), ("assistant", "error", shown)]
        assert docs[1]["_id"] == end.data["message_id"]
        assert await db["messages"].count_documents({"job_id": turn.job_id}) == 2
    finally:
        await mongo.close()


async def test_worker_killed_before_first_token_regenerates_one_consistent_reply(
    processes: ProcessStack,
) -> None:
    user = f"user-{secrets.token_hex(3)}"
    text = "hi [[sim:delay-ms=1500]]"  # 1.5 s before each chunk: time to kill the worker
    sim = f"http://127.0.0.1:{processes.ports['sim']}"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(processes.infra.mongodb_url)
    try:
        async with aiohttp.ClientSession() as http:
            turn = await open_turn(http, processes.url, user, {"text": text, "provider": "groq"})
            # The provider call has begun; no token has been streamed yet.
            await wait_until(lambda: sim_requests(http, sim, text), within=10, what="provider call")
            assert await processes.kill("worker") == -9
            assert turn.kinds == ["meta"]
            await processes.restart("worker")
            end = await turn.finish(within=60)
            turn.close()

            # The client: one regenerated reply, its deltas continuing the sequence.
            assert_one_ordered_stream(turn.events)
            assert turn.kinds == ["meta", "assistant", "assistant", "done"], turn.kinds
            assert end.data["reply"] == turn.reply == "Echo: hi"
            assert end.data["message_id"] == f"msg-{turn.job_id}-a"

            # Two deliveries, two provider calls: the second attempt regenerated.
            assert job_starts(processes, turn.job_id) == [False, True]
            assert await sim_calls(http, processes, text) == 2

            replay = await resume(http, processes.url, user, turn.job_id)
            assert same_events(replay, turn.events)

        # Saved: exactly one user and one assistant message, the reply the client got.
        db = mongo[processes.db_name]
        docs = await saved(db, turn.conversation_id)
        assert summary(docs) == [("user", "complete", text), ("assistant", "complete", "Echo: hi")]
        assert docs[1]["_id"] == end.data["message_id"]
    finally:
        await mongo.close()
