"""A provider that accepts the call and then sends nothing: the worker's idle timeout
ends the turn with an error (after its retries), and the error is saved."""

from __future__ import annotations

import secrets

import pytest

from tests.faults.client import assert_one_ordered_stream, open_turn, saved, summary
from tests.faults.conftest import StackFactory
from tests.faults.servers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

IDLE = 0.5


async def test_hanging_provider_ends_the_turn_with_provider_timeout(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        env={"worker": {"provider_idle_timeout": IDLE}}, sim_handler_cancellation=True
    )
    user = f"user-{secrets.token_hex(3)}"
    text = "are you there? [[sim:hang]]"
    calls_before = len(stack.sim.requests)

    turn = await open_turn(stack.http, stack.url, user, {"text": text, "provider": "groq"})
    end = await turn.finish(within=30)
    turn.close()

    # meta, a `status` event per retry of the timed-out call, then the error.
    assert_one_ordered_stream(turn.events)
    retries = stack.worker_settings.provider_max_retries
    assert turn.kinds == ["meta"] + ["status"] * retries + ["error"], turn.kinds
    assert end.data["code"] == "provider_timeout", end.data
    assert end.data["message_id"] == f"msg-{turn.job_id}-a"
    assert turn.reply == ""
    # Every hung call was made, and each was closed by the worker (none left open).
    assert len(stack.sim.requests) - calls_before == retries + 1
    await wait_until(lambda: stack.sim.open_streams == 0, within=5, what="hung streams closed")

    # Saved: the user message and an empty reply marked as an error.
    docs = await saved(stack.db, turn.conversation_id)
    assert summary(docs) == [("user", "complete", text), ("assistant", "error", "")]
    assert docs[1]["_id"] == end.data["message_id"]
    assert docs[1]["error"] == end.data["error"]


async def test_hanging_provider_is_a_502_for_a_json_request(make_stack: StackFactory) -> None:
    stack = await make_stack(
        env={"worker": {"provider_idle_timeout": IDLE, "provider_max_retries": 0}},
        sim_handler_cancellation=True,
    )
    user = f"user-{secrets.token_hex(3)}"
    text = "anyone? [[sim:hang]]"
    res = await stack.chat(user, {"text": text, "provider": "groq"}, stream=False)
    assert res.status == 502
    assert res.json["code"] == "provider_timeout", res.json

    conversations = await stack.db["conversations"].find({"user_id": user}).to_list()
    assert len(conversations) == 1
    docs = await saved(stack.db, conversations[0]["_id"])
    assert summary(docs) == [("user", "complete", text), ("assistant", "error", "")]
