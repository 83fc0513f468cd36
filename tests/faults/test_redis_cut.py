"""The gateway loses its Redis connections mid-stream (on a private redis-server; its
connections are found by the gateway's client name).

- Killed while Redis is reachable: its one pub/sub connection subscribes again and the
  hub fills what it missed from the job's replay log; the client sees every delta once.
- Cut off for a while (its Redis user disabled, `done` published meanwhile): the stream
  ends within seconds with a resumable `stream_lost`, and a resume gets the rest.

Either way the reply is saved, and the client ends with what history holds."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from parley_common.schemas import TurnResult
from parley_history.app import STORE
from prometheus_client import REGISTRY

from tests.faults.client import (
    Turn,
    assert_one_ordered_stream,
    open_turn,
    resume,
    saved,
    summary,
    words,
)
from tests.faults.conftest import StackFactory
from tests.faults.servers import PrivateRedis, wait_until
from tests.support.sse import SseEvent
from tests.support.stack import Stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


def resyncs() -> float:
    return REGISTRY.get_sample_value("parley_gateway_stream_resyncs_total") or 0.0


async def cut(redis: PrivateRedis, stack: Stack) -> None:
    """Kill every Redis connection of the gateway (its pub/sub one among them)."""
    assert await redis.kill_clients(f"{stack.namespace}gateway") >= 1


async def reconnected(redis: PrivateRedis, stack: Stack) -> None:
    name = f"{stack.namespace}gateway"

    async def present() -> bool:
        return name in await redis.client_names()

    await wait_until(present, within=10, what="the gateway's Redis reconnect")


def hold_saves(stack: Stack) -> asyncio.Event:
    """History saves (and so announces `done`) only once the returned event is set."""
    store = stack.history_app[STORE]
    original = store.save_result
    release = asyncio.Event()

    async def save_result(result: TurnResult) -> Any:
        await release.wait()
        return await original(result)

    store.save_result = save_result  # type: ignore[method-assign]
    return release


async def follow(stack: Stack, user: str, turn: Turn, within: float) -> list[SseEvent]:
    """The stream to its end; after a `stream_lost`, resumed from the last event seen."""
    end = await turn.finish(within=within)
    events = list(turn.events)
    if end.event == "error" and end.data.get("code") == "stream_lost":
        assert end.id is None  # not part of the job's sequence
        events.pop()
        events += await resume(stack.http, stack.url, user, turn.job_id, int(events[-1].id or 0))
    return events


async def test_gateway_redis_connections_killed_mid_reply(
    make_stack: StackFactory, private_redis: PrivateRedis
) -> None:
    stack = await make_stack(redis=private_redis)
    user = f"user-{secrets.token_hex(3)}"
    total = 30
    text = f"[[sim:tokens={total}]] [[sim:delay-ms=40]]"
    before = resyncs()

    turn = await open_turn(stack.http, stack.url, user, {"text": text, "provider": "groq"})
    await turn.deltas_seen(3)
    await cut(private_redis, stack)
    await reconnected(private_redis, stack)
    events = await follow(stack, user, turn, within=15)
    turn.close()

    # Every delta exactly once, in seq order, then `done` with exactly that reply.
    assert_one_ordered_stream(events)
    end = events[-1]
    assert end.event == "done", end.data
    shown = "".join(e.data["delta"] for e in events if e.event == "assistant")
    assert end.data["reply"] == shown == words(total)
    assert [e.event for e in events] == ["meta"] + ["assistant"] * total + ["done"]
    assert resyncs() > before  # the hub re-read the replay log after reconnecting

    # Saved once, as the client was told.
    docs = await saved(stack.db, turn.conversation_id)
    assert summary(docs) == [("user", "complete", text), ("assistant", "complete", words(total))]
    assert docs[1]["_id"] == end.data["message_id"]


async def test_gateway_cut_off_from_redis_ends_the_stream_resumably_and_the_reply_is_saved(
    make_stack: StackFactory, private_redis: PrivateRedis
) -> None:
    """The gateway's connections are killed and it cannot connect again for a while (its
    Redis user is disabled), and `done` is published meanwhile. The live stream must not
    wait for an event it can no longer receive: it ends within seconds with a resumable
    `stream_lost`, and once the gateway reaches Redis again a resume gets the rest."""
    await private_redis.command("ACL", "SETUSER", "gw", "on", ">gw-secret", "~*", "&*", "+@all")
    stack = await make_stack(
        redis=private_redis,
        gateway_redis_url=f"redis://gw:gw-secret@127.0.0.1:{private_redis.port}/0",
    )
    release = hold_saves(stack)
    user = f"user-{secrets.token_hex(3)}"
    total = 10
    text = f"[[sim:tokens={total}]] [[sim:delay-ms=20]]"

    turn = await open_turn(stack.http, stack.url, user, {"text": text, "provider": "groq"})
    await turn.deltas_seen(total)
    await private_redis.command("ACL", "SETUSER", "gw", "off")
    await cut(private_redis, stack)
    release.set()  # history saves and publishes `done` while the gateway is cut off

    started = time.monotonic()
    end = await turn.finish(within=10)
    assert time.monotonic() - started < 5.0
    assert end.event == "error" and end.data["code"] == "stream_lost", end.data
    assert end.id is None  # not an event of the job: nothing to skip on resume
    turn.close()
    assert turn.kinds == ["meta"] + ["assistant"] * total + ["error"]

    # The reply was saved meanwhile.
    async def reply_saved() -> bool:
        return len(await saved(stack.db, turn.conversation_id)) == 2

    await wait_until(reply_saved, within=10, what="the reply saved")

    await private_redis.command("ACL", "SETUSER", "gw", "on")
    last = int(turn.events[-2].id or 0)
    rest = await resume(stack.http, stack.url, user, turn.job_id, last)
    events = turn.events[:-1] + rest
    assert_one_ordered_stream(events)
    assert [e.event for e in rest] == ["done"]
    assert rest[0].data["reply"] == turn.reply == words(total)

    docs = await saved(stack.db, turn.conversation_id)
    assert summary(docs) == [("user", "complete", text), ("assistant", "complete", words(total))]
    assert docs[1]["_id"] == rest[0].data["message_id"]
