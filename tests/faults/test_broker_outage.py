"""RabbitMQ stopped and started mid-turn (a private node): a turn sent during the outage
is refused at once with 503 and Retry-After, every consumer comes back after the
restart, and the in-flight turn ends in `done` or a clear error that matches what
history saved."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from tests.faults.client import assert_one_ordered_stream, bearer, open_turn, saved, summary, words
from tests.faults.conftest import StackFactory
from tests.faults.servers import PrivateRabbit, wait_until
from tests.support.stack import Stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


async def post_json(
    stack: Stack, user: str, text: str, conversation_id: str | None = None
) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    body: dict[str, Any] = {"text": text, "provider": "groq"}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    async with stack.http.post(f"{stack.url}/api/chat", json=body, headers=bearer(user)) as resp:
        body = await resp.json()
        if resp.status == 503:
            assert int(resp.headers["Retry-After"]) > 0
        return resp.status, body, time.monotonic() - started


async def test_broker_restart_mid_turn(
    make_stack: StackFactory, private_rabbit: PrivateRabbit
) -> None:
    stack = await make_stack(rabbitmq=private_rabbit)
    user = f"user-{secrets.token_hex(3)}"
    total = 100  # 5 s of reply: the broker goes away while it streams
    text = f"[[sim:tokens={total}]] [[sim:delay-ms=50]]"

    turn = await open_turn(stack.http, stack.url, user, {"text": text, "provider": "groq"})
    await turn.deltas_seen(3)
    await private_rabbit.stop()

    # During the outage a new turn fails fast: 503 with a retry hint, not a hang; in a
    # new conversation, and in one the client names (which history begins first).
    refused_user = f"user-{secrets.token_hex(3)}"
    status, body, took = await post_json(stack, refused_user, "sent during the outage")
    assert status == 503, body
    assert body["code"] == "broker_down", body
    assert took < 3.0, took
    named = f"{refused_user}:web:conv-named"
    status, body, took = await post_json(stack, refused_user, "named, in the outage", named)
    assert status == 503, body
    assert body["code"] == "broker_down", body
    assert took < 3.0, took

    await private_rabbit.start()

    # Consumers and publishers come back: a new turn goes all the way through.
    async def new_turn_completes() -> Any:
        status, body, _ = await post_json(stack, user, "after the restart")
        return body if status == 200 else None

    after = await wait_until(new_turn_completes, within=60, interval=0.5, what="a turn to work")
    assert after["reply"] == "Echo: after the restart"  # type: ignore[index]

    # The in-flight turn ends (no hang), with one attempt's reply, as saved.
    end = await turn.finish(within=60)
    turn.close()
    assert_one_ordered_stream(turn.events)
    shown = turn.reply
    assert words(total).startswith(shown)
    docs = await saved(stack.db, turn.conversation_id)
    assert docs[0]["role"] == "user" and docs[0]["content"] == text
    if end.event == "done":  # finished despite the outage (the turn is shielded from it)
        assert end.data["reply"] == shown == words(total)
        assert summary(docs[1:]) == [("assistant", "complete", shown)]
    else:
        # Its result could not be published within the worker's patience; the redelivery
        # found tokens streamed and no `done`, and ended the turn with them.
        assert end.data["code"] == "worker_lost", end.data
        assert summary(docs[1:]) == [("assistant", "error", shown)]
    assert docs[1]["_id"] == end.data["message_id"]

    # A new conversation's turn is stored only once its job is queued: the refused one
    # left nothing behind. The turn that history began first is on record as not
    # queued (its user message and an error reply), so its conversation is not left
    # waiting for a reply that will never come.
    refused = await stack.db["conversations"].find({"user_id": refused_user}).to_list()
    assert [c["_id"] for c in refused] == [named]
    docs = await saved(stack.db, named)
    assert summary(docs) == [
        ("user", "complete", "named, in the outage"),
        ("assistant", "error", ""),
    ]
    assert docs[1]["error"] == body["error"]
