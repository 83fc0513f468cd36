"""The history service goes away mid-turn: new turns are refused with 503 and
Retry-After (their jobs, queued while history was asked, are cancelled), the in-flight
reply waits in its queue and is saved (and its client told `done`) once a new history
instance is up."""

from __future__ import annotations

import secrets
import time

import pytest
from parley_common.topology import Topology

from tests.faults.client import assert_one_ordered_stream, bearer, open_turn, saved, summary, words
from tests.faults.conftest import StackFactory
from tests.faults.servers import queue_depth, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


async def test_history_down_refuses_new_turns_and_saves_in_flight_reply_when_back(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    topo = Topology(stack.namespace)
    user = f"user-{secrets.token_hex(3)}"
    total = 25
    text = f"[[sim:tokens={total}]] [[sim:delay-ms=60]]"

    turn = await open_turn(stack.http, stack.url, user, {"text": text, "provider": "groq"})
    await turn.deltas_seen(2)
    await stack.stop_history()

    # A new turn cannot store its user message: refused at once, with a retry hint.
    refused_user = f"user-{secrets.token_hex(3)}"
    for stream in (True, False):
        started = time.monotonic()
        headers = bearer(refused_user) | ({"Accept": "text/event-stream"} if stream else {})
        async with stack.http.post(
            f"{stack.url}/api/chat", json={"text": "hello?", "provider": "groq"}, headers=headers
        ) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert body["code"] == "history_down" and body["error"]
            assert int(resp.headers["Retry-After"]) > 0
        assert time.monotonic() - started < 3.0

    # The in-flight reply streams to its end; its result waits in history's queue.
    await turn.deltas_seen(total)

    # With the refused turns' results: a new conversation's job is queued while
    # history is asked to store its message, and is cancelled when it could not be
    # (ADR 10); those results have nowhere to go and are dropped once history is back.
    async def results_waiting() -> bool:
        return await queue_depth(stack.infra.rabbitmq_url, topo.history_queue) == 3

    await wait_until(results_waiting, within=15, what="three turn results in history's queue")
    assert turn.kinds == ["meta"] + ["assistant"] * total  # no `done` while nothing is saved
    assert summary(await saved(stack.db, turn.conversation_id)) == [("user", "complete", text)]

    await stack.start_history()
    end = await turn.finish(within=30)
    turn.close()

    # The client: every delta once, in order, then `done` with exactly that reply.
    assert_one_ordered_stream(turn.events)
    assert end.event == "done", end.data
    assert end.data["reply"] == turn.reply == words(total)
    assert await queue_depth(stack.infra.rabbitmq_url, topo.history_queue) == 0

    # Saved: the user message and the complete reply; nothing for the refused turns.
    docs = await saved(stack.db, turn.conversation_id)
    assert summary(docs) == [("user", "complete", text), ("assistant", "complete", words(total))]
    assert docs[1]["_id"] == end.data["message_id"]
    assert await stack.db["messages"].count_documents({"user_id": refused_user}) == 0
    assert await stack.db["conversations"].count_documents({"user_id": refused_user}) == 0
