"""A turn in an existing conversation: history answers with the context as soon as the
turn is taken, and stores the user message while the gateway queues the job (a staged
begin, ADR 10). The client hears nothing before the message is stored; a message that
cannot be stored cancels the queued job."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
import pytest
from parley_history.app import STORE
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect

from tests.faults.servers import wait_until
from tests.support.history import seed_turns, store_of, uid
from tests.support.infra import Infra
from tests.support.stack import SERVICE_TOKEN, Stack

pytestmark = pytest.mark.integration


async def test_history_answers_with_the_context_before_it_stores_the_message(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 2)
    job = f"job-{secrets.token_hex(12)}"
    store = stack.history_app[STORE]
    gate = asyncio.Event()
    insert = store._insert_user_message

    def held(*args: Any) -> Any:
        async def run() -> None:
            await gate.wait()
            await insert(*args)

        return run()

    store._insert_user_message = held  # type: ignore[method-assign]
    try:
        async with stack.http.post(
            f"{stack.history_url}/internal/v1/turns",
            json={
                "conversation_id": conv,
                "text": "next",
                "provider": "groq",
                "job_id": job,
                "staged": True,
            },
            headers={"X-Parley-User": user, "Authorization": f"Bearer {SERVICE_TOKEN}"},
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/x-ndjson"
            first = orjson.loads(await resp.content.readline())
            assert [m["content"] for m in first["messages"]] == ["m0", "m1", "next"]
            assert first["user_message_id"] == f"msg-{job}-u"
            # Answered, and the message is not stored yet: its insert is held.
            assert [d["content"] for d in await stack.messages_in_db(conv)] == ["m0", "m1"]
            gate.set()
            second = orjson.loads(await resp.content.readline())
    finally:
        del store._insert_user_message
    assert second == {"stored": True}
    assert [d["content"] for d in await stack.messages_in_db(conv)] == ["m0", "m1", "next"]
    stored = await stack.db["conversations"].find_one({"_id": conv})
    assert stored is not None and stored["active_job"]["job_id"] == job


async def test_a_message_history_cannot_store_after_answering_cancels_the_job(infra: Infra):
    stack = await Stack(infra, providers=("groq",), sim_handler_cancellation=True).start()
    cancelled = ("parley_worker_turns_total", {"provider": "groq", "status": "cancelled"})
    cancelled_before = REGISTRY.get_sample_value(*cancelled) or 0.0
    try:
        user = uid()
        first = await stack.chat(user, {"text": "hi", "provider": "groq"})
        conv = first.last.data["conversation_id"]
        store = stack.history_app[STORE]

        def failing(*args: Any) -> Any:
            async def run() -> None:
                raise AutoReconnect("mongod went away")

            return run()

        store._insert_user_message = failing  # type: ignore[method-assign]
        try:
            res = await stack.chat(
                user,
                {"text": "lost? [[sim:hang]]", "provider": "groq", "conversation_id": conv},
                stream=False,
            )
        finally:
            del store._insert_user_message
        assert res.status == 503 and res.json is not None
        assert res.json["code"] == "history_down"
        # The job was queued before history failed: it is cancelled, not answered.
        await wait_until(
            lambda: (REGISTRY.get_sample_value(*cancelled) or 0.0) >= cancelled_before + 1,
            within=15,
            what="the worker ending the job cancelled",
        )
        # The conversation is not left locked: the next turn is taken.
        res = await stack.chat(user, {"text": "again", "provider": "groq", "conversation_id": conv})
        assert res.last.event == "done", res.last
        contents = [(d["role"], d["content"]) for d in await stack.messages_in_db(conv)]
        assert ("user", "lost? [[sim:hang]]") not in contents
        assert contents[-2:] == [("user", "again"), ("assistant", "Echo: again")]
    finally:
        await stack.stop()
