"""MongoDB stopped mid-turn and started again: the reply still streams, its turn result
waits (history retries it with backoff) and is saved after recovery, and only then is
the client told `done`. A turn begun during the outage is refused with 503."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from parley_common.schemas import TurnResult
from parley_history.app import STORE

from tests.faults.client import assert_one_ordered_stream, bearer, open_turn, saved, summary, words
from tests.faults.conftest import StackFactory
from tests.faults.servers import PrivateMongo, wait_until
from tests.support.stack import Stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def spy_on_saves(stack: Stack) -> list[tuple[str, str]]:
    """Record every save history attempts: (job id, "saved" or the exception's name)."""
    store = stack.history_app[STORE]
    original = store.save_result
    calls: list[tuple[str, str]] = []

    async def save_result(result: TurnResult) -> Any:
        try:
            out = await original(result)
        except Exception as exc:
            calls.append((result.job_id, type(exc).__name__))
            raise
        calls.append((result.job_id, "saved"))
        return out

    store.save_result = save_result  # type: ignore[method-assign]
    return calls


async def refused_turn(stack: Stack, user: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with stack.http.post(
        f"{stack.url}/api/chat",
        json={"text": "during the outage", "provider": "groq"},
        headers=bearer(user),
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_mongodb_outage_mid_turn_saves_the_reply_after_recovery(
    make_stack: StackFactory, private_mongo: PrivateMongo
) -> None:
    stack = await make_stack(mongo=private_mongo)
    saves = spy_on_saves(stack)
    user = f"user-{secrets.token_hex(3)}"
    total = 20
    text = f"[[sim:tokens={total}]] [[sim:delay-ms=50]]"

    turn = await open_turn(stack.http, stack.url, user, {"text": text, "provider": "groq"})
    await turn.deltas_seen(2)
    await private_mongo.stop()

    refused_user = f"user-{secrets.token_hex(3)}"
    refused = asyncio.create_task(refused_turn(stack, refused_user))

    # Generation does not need MongoDB: every delta arrives.
    await turn.deltas_seen(total)
    # The result reached history, which could not save it and will try again.
    await wait_until(
        lambda: any(job == turn.job_id and outcome != "saved" for job, outcome in saves),
        within=30,
        what="a failed save of the turn result",
    )
    assert all(outcome != "saved" for _, outcome in saves), saves
    assert turn.kinds == ["meta"] + ["assistant"] * total  # no `done`: nothing is saved yet

    # A turn begun while MongoDB is down cannot store its user message: 503, retry later.
    status, body, headers = await refused
    assert status == 503, body
    assert body["code"] == "history_down"
    assert int(headers["Retry-After"]) > 0

    await private_mongo.start()
    end = await turn.finish(within=60)
    turn.close()

    # The client: every delta once and in order, then `done` carrying exactly that reply.
    assert_one_ordered_stream(turn.events)
    assert end.event == "done", end.data
    assert end.data["reply"] == turn.reply == words(total)

    # History tried while MongoDB was down, then saved the result once.
    mine = [outcome for job, outcome in saves if job == turn.job_id]
    assert mine[-1] == "saved" and mine.count("saved") == 1, mine
    assert len(mine) >= 2

    docs = await saved(stack.db, turn.conversation_id)
    assert summary(docs) == [("user", "complete", text), ("assistant", "complete", words(total))]
    assert docs[1]["_id"] == end.data["message_id"]
    assert await stack.db["messages"].count_documents({"user_id": refused_user}) == 0
