"""A turn's two writes in MongoDB, case by case: the conversation created already locked
and counting its first message, the one update that checks the owner, takes the lock and
the `seq` (and the read that explains a refusal), the context read around the insert,
retried begins, and the reply's save that releases the lock."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from parley_common.ids import new_conversation_id
from parley_common.schemas import ContextMessage, ImageRef
from parley_history.errors import Conflict, Forbidden, NotFound, TurnInProgress
from parley_history.store import BegunTurn, Store

from tests.support.history import seed_turns, store_of, turn_result, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

IMAGE = ImageRef(mime="image/png", data_base64="aGVsbG8=")


def _job() -> str:
    return f"job-{secrets.token_hex(12)}"


async def _begin(
    store: Store, user: str, conv: str | None, job: str, text: str = "q", **kw: Any
) -> BegunTurn:
    return await store.begin_turn(
        user_id=user,
        conversation_id=conv,
        channel="web",
        text=text,
        image=kw.pop("image", None),
        provider="groq",
        job_id=job,
        **kw,
    )


async def _conv(stack: Stack, conversation_id: str) -> Any:
    return await stack.db["conversations"].find_one({"_id": conversation_id})


async def test_a_new_conversation_is_stored_locked_with_its_first_message(stack: Stack):
    user, store, job = uid(), store_of(stack), _job()
    turn = await _begin(store, user, None, job, "hello there", image=IMAGE)
    assert turn.created and turn.user_message_id == f"msg-{job}-u"
    assert turn.context == [ContextMessage(role="user", content="hello there", image=IMAGE)]
    conv = await _conv(stack, turn.conversation_id)
    assert conv["user_id"] == user and conv["title"] == "hello there"
    assert conv["next_seq"] == 1 and conv["active_job"]["job_id"] == job
    assert conv["created_at"] == conv["updated_at"]
    [msg] = await stack.messages_in_db(turn.conversation_id)
    assert (msg["_id"], msg["seq"], msg["role"], msg["content"]) == (
        f"msg-{job}-u",
        1,
        "user",
        "hello there",
    )
    assert msg["image"] == {"mime": IMAGE.mime, "data_base64": IMAGE.data_base64}
    # The lock is this turn's: a second turn is refused until the reply is saved.
    with pytest.raises(TurnInProgress):
        await _begin(store, user, turn.conversation_id, _job())
    await store.save_result(turn_result(user, turn.conversation_id, job, "hi"))
    conv = await _conv(stack, turn.conversation_id)
    assert conv["active_job"] is None and conv["next_seq"] == 2
    assert [(d["seq"], d["role"]) for d in await stack.messages_in_db(turn.conversation_id)] == [
        (1, "user"),
        (2, "assistant"),
    ]


async def test_the_context_is_what_the_full_read_would_give(stack: Stack):
    """The context read beside the insert (older messages plus the one being inserted,
    with the request's image) equals the context read from what is stored afterwards:
    the newest `context_messages`, empty replies left out, only the newest image."""
    user = uid()
    store = Store(stack.db, context_messages=5)
    conv = await seed_turns(store, user, 6)
    job = _job()
    await _begin(store, user, conv, job, "with a picture", image=IMAGE)
    await store.save_result(turn_result(user, conv, job, ""))  # an empty reply: no context
    job = _job()
    turn = await _begin(store, user, conv, job, "and another", image=IMAGE)
    assert turn.context == await store.context(conv)
    assert [m.content for m in turn.context] == ["m3", "m4", "m5", "with a picture", "and another"]
    assert [m.image for m in turn.context] == [None, None, None, None, IMAGE]
    one = Store(stack.db, context_messages=1)
    await one.save_result(turn_result(user, conv, job, "a"))
    turn = await _begin(one, user, conv, _job(), "alone")
    assert turn.context == [ContextMessage(role="user", content="alone")]


async def test_a_retried_begin_stores_one_user_message(stack: Stack):
    """The same job begun twice in an existing conversation: one message; the retry's
    `seq` is left unused, and the next message still comes after it."""
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 2)
    job = _job()
    first = await _begin(store, user, conv, job, "once")
    again = await _begin(store, user, conv, job, "once")
    assert again.user_message_id == first.user_message_id and not again.created
    assert again.context == first.context
    await store.save_result(turn_result(user, conv, job, "reply"))
    docs = await stack.messages_in_db(conv)
    assert [d["content"] for d in docs] == ["m0", "m1", "once", "reply"]
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(set(seqs)) and seqs[:3] == [1, 2, 3]
    assert (await _conv(stack, conv))["active_job"] is None


async def test_a_retried_begin_of_a_new_conversation_answers_with_the_first_one(stack: Stack):
    user, store, job = uid(), store_of(stack), _job()
    first = await _begin(store, user, None, job, "hello")
    again = await _begin(store, user, None, job, "hello")
    assert again.conversation_id == first.conversation_id
    assert again.user_message_id == first.user_message_id
    assert again.context == first.context
    assert await stack.db["conversations"].count_documents({"user_id": user}) == 1
    assert await stack.db["messages"].count_documents({"user_id": user}) == 1


async def test_a_gateway_named_conversation_is_created_and_a_retry_stores_one_message(
    stack: Stack,
):
    """The gateway names a new conversation (ADR 10): it is created, locked to the turn,
    with its message; the same begin again (a retried request, also one whose first
    attempt stopped between its two writes) stores nothing more."""
    user, store, job = uid(), store_of(stack), _job()
    conv = new_conversation_id(user, "web")
    first = await _begin(store, user, None, job, "hello", new_conversation_id=conv)
    assert first.created and first.conversation_id == conv
    assert first.context == [ContextMessage(role="user", content="hello")]
    again = await _begin(store, user, None, job, "hello", new_conversation_id=conv)
    assert (again.conversation_id, again.user_message_id) == (conv, first.user_message_id)
    # The first attempt stored the conversation but not its message.
    await stack.db["messages"].delete_one({"_id": first.user_message_id})
    third = await _begin(store, user, None, job, "hello", new_conversation_id=conv)
    assert third.conversation_id == conv and third.created
    assert [(d["seq"], d["content"]) for d in await stack.messages_in_db(conv)] == [(1, "hello")]
    stored = await _conv(stack, conv)
    assert stored["next_seq"] == 1 and stored["active_job"]["job_id"] == job


async def test_a_gateway_named_conversation_that_exists_is_not_taken(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = new_conversation_id(user, "web")
    await _begin(store, user, None, _job(), "mine", new_conversation_id=conv)
    with pytest.raises(Conflict):
        await _begin(store, user, None, _job(), "other", new_conversation_id=conv)
    assert [d["content"] for d in await stack.messages_in_db(conv)] == ["mine"]


async def test_refusals_are_told_apart_and_change_nothing(stack: Stack):
    """When the combined update matches nothing: another user's conversation is 403
    (even while it is locked), a locked one is 409 naming its job, an unknown one
    outside the caller's namespace 404; none of them takes a seq or the lock."""
    owner, intruder, store = uid(), uid(), store_of(stack)
    conv = await seed_turns(store, owner, 2)
    holder = _job()
    await _begin(store, owner, conv, holder)
    before = await _conv(stack, conv)
    with pytest.raises(Forbidden) as forbidden:
        await _begin(store, intruder, conv, _job())
    assert forbidden.value.message == "conversation belongs to another user"
    with pytest.raises(TurnInProgress) as busy:
        await _begin(store, owner, conv, _job())
    assert busy.value.extra == {"active_job_id": holder}
    assert holder in busy.value.message
    with pytest.raises(NotFound):
        await _begin(store, intruder, f"{owner}:web:conv-{secrets.token_hex(4)}", _job())
    with pytest.raises(Forbidden):  # also without the lock
        await _begin(store, intruder, conv, _job(), exclusive=False)
    assert await _conv(stack, conv) == before
    assert len(await stack.messages_in_db(conv)) == 3


async def test_an_expired_lock_is_taken_and_the_late_reply_still_saved(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 2)
    late = _job()
    await _begin(store, user, conv, late, "slow")
    await stack.db["conversations"].update_one(
        {"_id": conv}, {"$set": {"active_job.until": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    taker = _job()
    await _begin(store, user, conv, taker, "next")
    assert (await _conv(stack, conv))["active_job"]["job_id"] == taker
    saved = await store.save_result(turn_result(user, conv, late, "late reply"))
    assert saved is not None and saved[0] == f"msg-{late}-a"
    # The late reply did not release the lock of the turn that took it over.
    assert (await _conv(stack, conv))["active_job"]["job_id"] == taker
    docs = await stack.messages_in_db(conv)
    assert [(d["seq"], d["content"]) for d in docs] == [
        (1, "m0"),
        (2, "m1"),
        (3, "slow"),
        (4, "next"),
        (5, "late reply"),
    ]


async def test_a_client_chosen_new_id_is_created_in_the_callers_namespace(stack: Stack):
    user, store, job = uid(), store_of(stack), _job()
    conv = f"{user}:web:conv-{secrets.token_hex(4)}"
    turn = await _begin(store, user, conv, job, "mine", image=IMAGE)
    assert turn.created and turn.conversation_id == conv
    assert turn.context == [ContextMessage(role="user", content="mine", image=IMAGE)]
    stored = await _conv(stack, conv)
    assert stored["next_seq"] == 1 and stored["active_job"]["job_id"] == job
    assert [d["seq"] for d in await stack.messages_in_db(conv)] == [1]
