"""Order and integrity in MongoDB: the per-conversation sequence under concurrency,
idempotent saves (also through a redelivered AMQP turn event), replies to deleted
conversations, idempotent index creation, and index-backed queries."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis
from parley_common.schemas import TurnStatus, decode_batch
from parley_common.topology import TURN_COMPLETED, Topology
from parley_history.store import Store

from tests.support.history import Api, seed_turns, store_of, turn_result, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


async def _seqs(stack: Stack, conversation_id: str) -> list[int]:
    return [d["seq"] for d in await stack.messages_in_db(conversation_id)]


async def test_concurrent_appends_get_seqs_1_to_n_without_gaps_or_duplicates(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    n = 60
    await asyncio.gather(
        *(
            store.begin_turn(
                user_id=user,
                conversation_id=conv,
                channel="web",
                text=f"c{i}",
                image=None,
                provider="groq",
                job_id=f"job-conc-{user}-{i}",
                exclusive=False,
            )
            for i in range(n)
        )
    )
    assert await _seqs(stack, conv) == list(range(1, n + 2))


async def test_concurrent_questions_and_replies_keep_one_total_order(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    jobs = [f"job-mix-{user}-{i}" for i in range(30)]
    # Questions first (so every reply has a question), then replies racing new questions.
    await asyncio.gather(
        *(
            store.begin_turn(
                user_id=user,
                conversation_id=conv,
                channel="web",
                text=f"q{i}",
                image=None,
                provider="groq",
                job_id=job,
                exclusive=False,
            )
            for i, job in enumerate(jobs[:15])
        )
    )
    await asyncio.gather(
        *(
            store.save_result(turn_result(user, conv, job, f"a{i}"))
            for i, job in enumerate(jobs[:15])
        ),
        *(
            store.begin_turn(
                user_id=user,
                conversation_id=conv,
                channel="web",
                text=f"q{i}",
                image=None,
                provider="groq",
                job_id=job,
                exclusive=False,
            )
            for i, job in enumerate(jobs[15:], start=15)
        ),
    )
    assert await _seqs(stack, conv) == list(range(1, 1 + 1 + 30 + 15))
    _, body = await Api(stack).messages(user, conv, limit=100)
    docs = await stack.messages_in_db(conv)
    assert [m["id"] for m in body["messages"]] == [d["_id"] for d in docs]


async def test_concurrent_chat_turns_into_one_conversation(stack: Stack):
    """Eight frontends send into one conversation at once: exactly one turn is taken,
    the others are refused with 409 naming it and store nothing."""
    user = uid()
    first = await stack.chat(user, {"text": "start", "provider": "groq"})
    conv = first.last.data["conversation_id"]
    # The turn that is taken lasts half a second, so that it still runs when the
    # others reach history (a two-word reply could end before the last one arrives).
    results = await asyncio.gather(
        *(
            stack.chat(
                user,
                {
                    "text": f"t{i} [[sim:tokens=5]] [[sim:delay-ms=100]]",
                    "provider": "groq",
                    "conversation_id": conv,
                },
            )
            for i in range(8)
        )
    )
    taken = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status == 409]
    assert len(taken) == 1 and len(refused) == 7
    assert taken[0].last.event == "done"
    assert await _seqs(stack, conv) == [1, 2, 3, 4]
    reply_id = taken[0].last.data["message_id"]
    docs = await stack.messages_in_db(conv)
    position = {d["_id"]: d["seq"] for d in docs}
    assert position[reply_id.removesuffix("-a") + "-u"] < position[reply_id]


async def test_saving_the_same_turn_twice_stores_one_message(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    result = turn_result(user, conv, f"job-twice-{user}", "once")
    first, second = await store.save_result(result), await store.save_result(result)
    assert first is not None and second is not None
    assert first[0] == second[0] == f"msg-job-twice-{user}-a"
    again = await asyncio.gather(*(store.save_result(result) for _ in range(5)))
    assert {saved[0] for saved in again if saved is not None} == {first[0]}
    assert [d["content"] for d in await stack.messages_in_db(conv)] == ["m0", "once"]


async def test_a_second_result_for_a_saved_turn_is_answered_with_what_was_saved(
    stack: Stack,
):
    """Two attempts of one job report differently (the first completed, the second
    ended it as `worker_lost`): history keeps the first and reports it both times."""
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    job = f"job-two-{user}"
    complete = turn_result(user, conv, job, "the whole reply")
    lost = complete.model_copy(
        update={
            "status": TurnStatus.error,
            "reply": "the whole",
            "error": "the reply was interrupted",
            "error_code": "worker_lost",
        }
    )
    await store.save_result(complete)
    saved = await store.save_result(lost)
    assert saved is not None
    message_id, as_stored = saved
    assert message_id == f"msg-{job}-a"
    assert as_stored.status is TurnStatus.complete
    assert as_stored.reply == "the whole reply" and as_stored.error_code is None
    docs = await stack.messages_in_db(conv)
    assert [(d["content"], d["status"]) for d in docs[1:]] == [("the whole reply", "complete")]


async def test_a_turn_event_consumed_twice_stores_one_message(stack: Stack):
    """The same `turn.completed` published twice on the broker: history saves it once
    and answers `done` with the same message id both times."""
    user, store = uid(), store_of(stack)
    job = f"job-{secrets.token_hex(12)}"
    turn = await store.begin_turn(
        user_id=user,
        conversation_id=None,
        channel="web",
        text="hello",
        image=None,
        provider="groq",
        job_id=job,
    )
    result = turn_result(user, turn.conversation_id, job, "Echo: hello")
    topo = Topology(stack.namespace)
    redis = aioredis.from_url(stack.infra.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(topo.job_channel(job))
    connection = await aio_pika.connect(stack.infra.rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topo.events_exchange, ensure=True)
        for _ in range(2):
            await exchange.publish(
                aio_pika.Message(
                    result.model_dump_json().encode(),
                    message_id=job,
                    headers={"request_id": "req-twice"},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=TURN_COMPLETED,
            )
        terminal: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            while len(terminal) < 2:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if msg is None:
                    continue
                for env in decode_batch(msg["data"]):
                    if env.terminal:
                        terminal.append({"type": env.type, **env.payload()})
    finally:
        await connection.close()
        await pubsub.aclose()
        await redis.aclose()
    assert [t["type"] for t in terminal] == ["done", "done"]
    assert terminal[0]["message_id"] == terminal[1]["message_id"] == f"msg-{job}-a"
    docs = await stack.messages_in_db(turn.conversation_id)
    assert [(d["role"], d["content"]) for d in docs] == [
        ("user", "hello"),
        ("assistant", "Echo: hello"),
    ]


async def test_a_reply_for_a_deleted_conversation_is_not_saved_and_does_not_recreate_it(
    stack: Stack,
):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    assert await store.delete_conversation(user, conv) == 1
    saved = await store.save_result(turn_result(user, conv, f"job-late-{user}", "too late"))
    assert saved is None
    assert await stack.db["conversations"].find_one({"_id": conv}) is None
    assert await stack.db["messages"].count_documents({"conversation_id": conv}) == 0


@pytest.fixture
async def fresh_db(stack: Stack) -> Any:
    name = f"parley_idx_{secrets.token_hex(4)}"
    yield stack.mongo[name]
    await stack.mongo.drop_database(name)


async def test_ensure_indexes_is_idempotent_and_drops_the_retired_index(fresh_db: Any):
    await fresh_db["conversations"].create_index(
        [("user_id", 1), ("channel", 1), ("updated_at", -1)], name="by_user_channel_updated"
    )
    store = Store(fresh_db)
    await store.ensure_indexes()
    first = {
        c: await fresh_db[c].index_information() for c in ("conversations", "messages", "folders")
    }
    await store.ensure_indexes()
    await asyncio.gather(store.ensure_indexes(), Store(fresh_db).ensure_indexes())
    second = {
        c: await fresh_db[c].index_information() for c in ("conversations", "messages", "folders")
    }
    assert first == second
    assert set(first["conversations"]) == {
        "_id_",
        "by_user_channel_updated_id",
        "by_user_folder_updated_id",
    }
    assert set(first["messages"]) == {"_id_", "by_conversation_seq", "by_job"}
    assert first["messages"]["by_conversation_seq"]["unique"] is True
    assert set(first["folders"]) == {"_id_", "by_user_created"}


def _stages(plan: Any) -> list[str]:
    out: list[str] = []
    if isinstance(plan, dict):
        if "stage" in plan:
            out.append(plan["stage"])
        for value in plan.values():
            out += _stages(value)
    elif isinstance(plan, list):
        for value in plan:
            out += _stages(value)
    return out


async def test_list_and_truncate_queries_walk_the_indexes(stack: Stack):
    """The conversation list and truncate's boundary read keys from an index in order:
    no collection scan, no in-memory sort, and no more keys than the page needs."""
    user, store = uid(), store_of(stack)
    for _ in range(12):
        await seed_turns(store, user, 2)
    conv = await seed_turns(store, user, 40)
    ts = datetime.now(UTC)
    listing = (
        stack.db["conversations"]
        .find(
            {
                "user_id": user,
                "channel": "web",
                "$or": [
                    {"updated_at": {"$lt": ts}},
                    {"updated_at": ts, "_id": {"$lt": "~"}},
                ],
            }
        )
        .sort([("updated_at", -1), ("_id", -1)])
        .limit(6)
    )
    plan = await listing.explain()
    stages = _stages(plan["queryPlanner"]["winningPlan"])
    assert "COLLSCAN" not in stages and "SORT" not in stages, stages

    boundary = (
        stack.db["messages"]
        .find({"conversation_id": conv}, {"seq": 1, "_id": 0})
        .sort("seq", -1)
        .skip(9)
        .limit(1)
    )
    plan = await boundary.explain()
    stages = _stages(plan["queryPlanner"]["winningPlan"])
    assert "COLLSCAN" not in stages and "SORT" not in stages, stages
    assert plan["executionStats"]["totalKeysExamined"] <= 11
