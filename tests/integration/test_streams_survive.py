"""Resume, cancel, disconnect, idempotent send, heartbeats and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket

import aio_pika
import pytest
import structlog
from aiohttp import web
from parley_common.jobs import JobRegistry
from parley_common.schemas import MetaEvent
from parley_common.schemas.events import encode_envelope
from parley_common.topology import Topology
from parley_gateway.app import create_app as create_gateway

from tests.support.infra import Infra
from tests.support.sse import iter_sse, parse_sse
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

SLOW = "one two three four five six seven eight nine ten [[sim:delay-ms=40]]"


def user() -> str:
    return f"user-{secrets.token_hex(3)}"


async def open_chat(stack: Stack, who: str, body: dict[str, object], **headers: str):  # type: ignore[no-untyped-def]
    h = stack.auth(who) | {"Accept": "text/event-stream"} | headers
    return await stack.http.post(f"{stack.url}/api/chat", json=body, headers=h)


async def resume(stack: Stack, who: str, job_id: str, last: int | None = None, url: str = ""):  # type: ignore[no-untyped-def]
    headers = stack.auth(who)
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    async with stack.http.get(
        f"{url or stack.url}/api/chat/jobs/{job_id}/events", headers=headers
    ) as resp:
        text = await resp.text()
        return resp.status, parse_sse(text)[0] if resp.status == 200 else await resp.json()


async def test_dropped_stream_resumes_from_last_event_id_on_another_gateway(stack: Stack):
    who = user()
    resp = await open_chat(stack, who, {"text": SLOW, "provider": "groq"})
    seen = []
    async for ev in iter_sse(resp):
        seen.append(ev)
        if len(seen) == 3:  # meta + two deltas, then the train enters the tunnel
            break
    resp.close()
    job_id = seen[0].data["job_id"]
    last = int(seen[-1].id or 0)

    # A second gateway process (same Redis, RabbitMQ, history) serves the resume.
    other = web.AppRunner(create_gateway(stack.gateway_settings))
    await other.setup()
    site = web.TCPSite(other, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{other.addresses[0][1]}"
        status, events = await resume(stack, who, job_id, last, url=url)
    finally:
        await other.cleanup()
    assert status == 200
    ids = [int(e.id or -1) for e in events]
    assert ids == list(range(last + 1, last + 1 + len(events)))
    assert events[-1].event == "done"
    text = "".join(e.data["delta"] for e in seen[1:] + events if e.event == "assistant")
    assert text == events[-1].data["reply"] == "Echo: " + SLOW.split(" [[")[0]


async def test_resume_with_query_parameter_replays_exactly_the_missing_events(stack: Stack):
    who = user()
    res = await stack.chat(who, {"text": "a b c d", "provider": "groq"})
    job_id = res.events[0].data["job_id"]
    async with stack.http.get(
        f"{stack.url}/api/chat/jobs/{job_id}/events?last_event_id=2", headers=stack.auth(who)
    ) as resp:
        events = parse_sse(await resp.text())[0]
    assert [(e.id, e.event, e.data) for e in events] == [
        (e.id, e.event, e.data) for e in res.events[3:]
    ]
    # Without Last-Event-ID the whole stream is replayed, meta first.
    status, replay = await resume(stack, who, job_id)
    assert status == 200 and [e.event for e in replay] == [e.event for e in res.events]


async def test_resume_is_owner_only_and_unknown_jobs_are_404(stack: Stack):
    who = user()
    res = await stack.chat(who, {"text": "mine", "provider": "groq"})
    job_id = res.events[0].data["job_id"]
    status, _ = await resume(stack, user(), job_id)
    assert status == 403
    status, _ = await resume(stack, who, "job-" + "0" * 24)
    assert status == 404
    status, _ = await resume(stack, who, "../../etc/passwd")
    assert status == 404


async def test_expired_replay_log_is_not_resumable_and_points_to_saved_reply(stack: Stack):
    who = user()
    res = await stack.chat(who, {"text": "old news", "provider": "groq"})
    job_id = res.events[0].data["job_id"]
    await stack.worker.redis.delete(Topology(stack.namespace).job_log(job_id))  # type: ignore[union-attr]
    status, body = await resume(stack, who, job_id, 1)
    assert status == 410
    assert body["code"] == "not_resumable"
    assert body["message_id"] == res.last.data["message_id"]
    assert body["conversation_id"] == res.last.data["conversation_id"]


async def test_active_jobs_are_listed_for_another_device_then_cleared(stack: Stack):
    who = user()
    resp = await open_chat(stack, who, {"text": SLOW, "provider": "groq"})
    stream = iter_sse(resp)
    meta = await anext(stream)
    conv, job_id = meta.data["conversation_id"], meta.data["job_id"]
    url = f"{stack.url}/api/chat/jobs?conversation_id={conv}"
    async with stack.http.get(url, headers=stack.auth(who)) as r:
        listed = await r.json()
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]
    async with stack.http.get(url, headers=stack.auth(user())) as r:
        assert (await r.json())["jobs"] == []  # another user sees nothing
    async for ev in stream:
        if ev.event in ("done", "error"):
            break
    resp.close()
    async with stack.http.get(url, headers=stack.auth(who)) as r:
        assert (await r.json())["jobs"] == []


async def test_disconnect_keeps_generating_and_saves_the_reply(stack: Stack):
    who = user()
    resp = await open_chat(stack, who, {"text": SLOW, "provider": "groq"})
    stream = iter_sse(resp)
    meta = await anext(stream)
    await anext(stream)
    resp.close()
    # Follow the job to its end from the replay log, then read the database.
    _, events = await resume(stack, who, meta.data["job_id"], 0)
    assert events[-1].event == "done"
    docs = await stack.messages_in_db(meta.data["conversation_id"])
    assert docs[-1]["status"] == "complete"
    assert docs[-1]["content"] == events[-1].data["reply"]


async def test_cancel_closes_the_provider_call_and_saves_partial_reply(stack: Stack):
    who = user()
    text = " ".join(f"w{i}" for i in range(200)) + " [[sim:delay-ms=30]]"
    resp = await open_chat(stack, who, {"text": text, "provider": "groq"})
    stream = iter_sse(resp)
    meta = await anext(stream)
    first = await anext(stream)
    assert first.event == "assistant"
    closed_before = stack.sim.closed_early
    stack.sim.stream_closed.clear()
    async with stack.http.post(
        f"{stack.url}/api/chat/jobs/{meta.data['job_id']}/cancel", headers=stack.auth(who)
    ) as r:
        assert r.status == 202
    await asyncio.wait_for(stack.sim.stream_closed.wait(), timeout=1.0)
    assert stack.sim.closed_early == closed_before + 1
    events = [ev async for ev in stream]
    resp.close()
    assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
    partial = "".join(e.data["delta"] for e in [first, *events] if e.event == "assistant")
    docs = await stack.messages_in_db(meta.data["conversation_id"])
    assert (docs[-1]["role"], docs[-1]["status"]) == ("assistant", "cancelled")
    assert docs[-1]["content"] == partial and partial.startswith("Echo: ")
    assert len(partial) < len(text)


async def test_cancel_by_another_user_is_403(stack: Stack):
    who = user()
    res = await stack.chat(who, {"text": "x", "provider": "groq"})
    job_id = res.events[0].data["job_id"]
    async with stack.http.post(
        f"{stack.url}/api/chat/jobs/{job_id}/cancel", headers=stack.auth(user())
    ) as r:
        assert r.status == 403


async def test_idempotency_key_attaches_a_retry_to_the_same_job(stack: Stack):
    who = user()
    key = secrets.token_hex(8)
    body = {"text": "only once please", "provider": "groq"}
    first, second = await asyncio.gather(
        stack.chat(who, body, headers={"Idempotency-Key": key}),
        stack.chat(who, body, headers={"Idempotency-Key": key}),
    )
    assert first.events[0].data["job_id"] == second.events[0].data["job_id"]
    assert first.last.data == second.last.data
    docs = await stack.messages_in_db(first.last.data["conversation_id"])
    assert [d["role"] for d in docs] == ["user", "assistant"]
    third = await stack.chat(who, body, stream=False, headers={"Idempotency-Key": key})
    assert third.status == 200 and third.json["reply"] == "Echo: only once please"


async def test_heartbeat_comments_flow_while_the_job_waits_in_the_queue(infra: Infra):
    stack = await Stack(
        infra, env={"gateway": {"sse_ping_seconds": 0.05}}, start_worker=False
    ).start()
    try:
        resp = await open_chat(stack, "user-hb", {"text": "wait for me", "provider": "groq"})
        stream = iter_sse(resp)
        meta = await anext(stream)
        assert meta.event == "meta"
        # No worker is running: the next line on the wire must be a ping comment.
        line = await asyncio.wait_for(resp.content.readline(), timeout=5)
        assert line.startswith(b": ping")
        await stack.start_worker_now()
        events = [ev async for ev in stream]
        resp.close()
        assert events[-1].event == "done"
    finally:
        await stack.stop()


async def test_poison_job_is_dead_lettered_and_its_client_gets_an_error(stack: Stack):
    who = user()
    topo = Topology(stack.namespace)
    job_id = f"job-{secrets.token_hex(12)}"
    conv = (await stack.chat(who, {"text": "hi", "provider": "groq"})).last.data["conversation_id"]
    registry = JobRegistry(stack.worker.redis, topo)  # type: ignore[arg-type]
    await registry.register(job_id, who, conv, "groq", active_ttl=60)
    meta = MetaEvent(conversation_id=conv, provider="groq", job_id=job_id)
    await stack.worker.redis.rpush(topo.job_log(job_id), encode_envelope(0, meta))  # type: ignore[union-attr]

    connection = await aio_pika.connect(stack.infra.rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topo.jobs_exchange)
        await exchange.publish(
            aio_pika.Message(
                b'{"not": "a job"}',
                message_id=job_id,
                correlation_id=conv,
                type="parley.chat.job.v1",
                headers={"request_id": "req-poison", "user_id": who, "provider": "groq"},
            ),
            routing_key="groq",
        )
        status, events = await resume(stack, who, job_id, 0)
        assert status == 200
        assert [e.event for e in events] == ["error"]
        assert events[0].data["code"] == "job_dead_lettered"
        docs = await stack.messages_in_db(conv)
        assert (docs[-1]["_id"], docs[-1]["status"]) == (f"msg-{job_id}-a", "error")
        dead = await channel.get_queue(topo.dead_queue)
        got = await dead.get(no_ack=True, fail=False)
        assert got is not None and got.message_id == job_id
    finally:
        await connection.close()


async def test_publish_with_no_queue_is_503_not_a_silent_200(infra: Infra):
    stack = await Stack(infra).start()
    try:
        connection = await aio_pika.connect(infra.rabbitmq_url)
        channel = await connection.channel()
        await channel.queue_delete(Topology(stack.namespace).jobs_queue("groq"))
        await connection.close()
        res = await stack.chat("user-503", {"text": "anyone?", "provider": "groq"}, stream=False)
        assert res.status == 503
        assert res.json["code"] == "job_unroutable"
        assert res.headers["Retry-After"]
    finally:
        await stack.stop()


async def _open_stalled_client(url: str, token: str, text: str) -> socket.socket:
    """A client that sends its request, reads the response headers, then stops reading."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    body = json.dumps({"text": text, "provider": "groq"}).encode()
    head = (
        f"POST /api/chat/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head + body)
    first = await loop.sock_recv(sock, 1024)
    assert first.startswith(b"HTTP/1.1 200")
    return sock


async def test_slow_reader_is_cut_off_without_slowing_others_and_can_resume(infra: Infra):
    stack = await Stack(
        infra, env={"gateway": {"sse_send_timeout": 1.0, "stream_buffer_events": 16}}
    ).start()
    try:
        who = user()
        big = "[[sim:tokens=400]] [[sim:chunk-bytes=16000]]"  # about 6.4 MB of events
        with structlog.testing.capture_logs() as logs:
            sock = await _open_stalled_client(stack.url, stack.token(who), big)
            try:
                # Another stream on the same gateway is served while that client stalls.
                other = await stack.chat(user(), {"text": "not blocked", "provider": "groq"})
                assert other.last.event == "done"
                # The stalled turn is generated and saved all the same, and resumable.
                job_id = await _job_of(stack, who)
                status, events = await resume(stack, who, job_id, 0)
                assert status == 200 and events[-1].event == "done"
                assert len(events[-1].data["reply"]) > 6_000_000
                # The gateway gave up on the stalled client...
                async with asyncio.timeout(20):
                    while not any(  # noqa: ASYNC110 - captured logs offer no event to await
                        e["event"] == "stream.client_gone" and e.get("job_id") == job_id
                        for e in logs
                    ):
                        await asyncio.sleep(0.05)  # polling the captured log lines
                # ...long before it had sent the whole reply.
                received = 0
                with contextlib.suppress(BlockingIOError, ConnectionResetError):
                    while chunk := sock.recv(1 << 20):
                        received += len(chunk)
                assert received < 6_000_000
            finally:
                sock.close()
    finally:
        await stack.stop()


async def _job_of(stack: Stack, who: str) -> str:
    """The only job this user started, read from the registry's meta keys."""
    redis = stack.worker.redis  # type: ignore[union-attr]
    prefix = Topology(stack.namespace).job_meta("")
    async for key in redis.scan_iter(match=f"{prefix[:-5]}*:meta"):
        meta = await redis.hgetall(key)
        if meta.get(b"user_id") == who.encode():
            return str(key.decode().split(":")[-2])
    raise AssertionError("no job found")


async def test_second_turn_while_one_runs_is_409_naming_the_active_job(stack: Stack):
    who = user()
    resp = await open_chat(stack, who, {"text": SLOW, "provider": "groq"})
    stream = iter_sse(resp)
    meta = await anext(stream)
    conv, job_id = meta.data["conversation_id"], meta.data["job_id"]
    # Through a second gateway process too: the lock is shared, not per process.
    other = web.AppRunner(create_gateway(stack.gateway_settings))
    await other.setup()
    await web.TCPSite(other, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{other.addresses[0][1]}/api/chat"
        async with stack.http.post(
            url, json={"text": "me too", "conversation_id": conv}, headers=stack.auth(who)
        ) as r:
            assert r.status == 409
            body = await r.json()
    finally:
        await other.cleanup()
    assert body["code"] == "turn_in_progress" and body["active_job_id"] == job_id
    assert job_id in body["error"]
    events = [ev async for ev in stream]
    resp.close()
    assert events[-1].event == "done"
    # The refused turn stored nothing; once the first is saved the next one goes.
    docs = await stack.messages_in_db(conv)
    assert [d["role"] for d in docs] == ["user", "assistant"]
    res = await stack.chat(who, {"text": "now", "conversation_id": conv, "provider": "groq"})
    assert res.last.event == "done"


async def test_a_turn_that_cannot_be_queued_frees_its_conversation(infra: Infra):
    stack = await Stack(infra).start()
    try:
        who = user()
        first = await stack.chat(who, {"text": "hi", "provider": "groq"})
        conv = first.last.data["conversation_id"]
        connection = await aio_pika.connect(infra.rabbitmq_url)
        channel = await connection.channel()
        await channel.queue_delete(Topology(stack.namespace).jobs_queue("groq"))
        await connection.close()
        body = {"text": "lost?", "provider": "groq", "conversation_id": conv}
        res = await stack.chat(who, body, stream=False)
        assert res.status == 503
        async with stack.http.get(
            f"{stack.url}/api/chat/jobs?conversation_id={conv}", headers=stack.auth(who)
        ) as r:
            assert (await r.json())["jobs"] == []  # not listed as running either
        docs = await stack.messages_in_db(conv)
        assert [(d["role"], d["status"]) for d in docs[-2:]] == [
            ("user", "complete"),
            ("assistant", "error"),
        ]
        # Not locked: the next turn (to a provider that still has a queue) is taken.
        body["provider"] = "openrouter"
        res = await stack.chat(who, body)
        assert res.last.event == "done"
    finally:
        await stack.stop()


async def test_a_new_conversation_that_cannot_be_queued_stores_nothing(infra: Infra):
    """A first message's job is queued before history stores it (ADR 10): when no
    queue takes the job, the client gets 503 and nothing of the turn exists, so a
    retry starts clean."""
    stack = await Stack(infra, providers=("groq", "openrouter")).start()
    try:
        who = user()
        connection = await aio_pika.connect(infra.rabbitmq_url)
        channel = await connection.channel()
        await channel.queue_delete(Topology(stack.namespace).jobs_queue("groq"))
        await connection.close()
        res = await stack.chat(who, {"text": "lost?", "provider": "groq"}, stream=False)
        assert res.status == 503 and res.json is not None
        assert res.json["code"] == "job_unroutable"
        assert await stack.db["conversations"].count_documents({"user_id": who}) == 0
        assert await stack.db["messages"].count_documents({"user_id": who}) == 0
        # The retry, to a provider that still has a queue, is the conversation's first.
        res = await stack.chat(who, {"text": "lost?", "provider": "openrouter"})
        assert res.last.event == "done"
        conv = res.last.data["conversation_id"]
        docs = await stack.messages_in_db(conv)
        assert [(d["seq"], d["role"], d["content"]) for d in docs] == [
            (1, "user", "lost?"),
            (2, "assistant", "Echo: lost?"),
        ]
    finally:
        await stack.stop()


async def test_cancel_on_disconnect_stops_the_provider_and_saves_partial(infra: Infra):
    stack = await Stack(infra, env={"gateway": {"cancel_on_disconnect": True}}).start()
    try:
        who = user()
        text = " ".join(f"w{i}" for i in range(200)) + " [[sim:delay-ms=30]]"
        resp = await open_chat(stack, who, {"text": text, "provider": "groq"})
        stream = iter_sse(resp)
        meta = await anext(stream)
        await anext(stream)
        stack.sim.stream_closed.clear()
        resp.close()  # the client goes away mid-reply
        await asyncio.wait_for(stack.sim.stream_closed.wait(), timeout=5)
        status, events = await resume(stack, who, meta.data["job_id"], 0)
        assert status == 200
        assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
        docs = await stack.messages_in_db(meta.data["conversation_id"])
        assert (docs[-1]["role"], docs[-1]["status"]) == ("assistant", "cancelled")
        streamed = "".join(e.data["delta"] for e in events if e.event == "assistant")
        assert docs[-1]["content"].endswith(streamed) and len(docs[-1]["content"]) < len(text)
    finally:
        await stack.stop()


async def test_a_job_cancelled_while_queued_is_never_answered(infra: Infra):
    # No worker yet: the job waits in its queue, and the client cancels it there. The
    # worker that takes it later sees the cancel (checked alongside the provider call,
    # which would otherwise hang forever) and ends the turn `cancelled`, with no reply.
    stack = await Stack(
        infra, providers=("groq",), start_worker=False, sim_handler_cancellation=True
    ).start()
    try:
        who = user()
        resp = await open_chat(stack, who, {"text": "never [[sim:hang]]", "provider": "groq"})
        stream = iter_sse(resp)
        meta = await anext(stream)
        async with stack.http.post(
            f"{stack.url}/api/chat/jobs/{meta.data['job_id']}/cancel", headers=stack.auth(who)
        ) as r:
            assert r.status == 202
        await stack.start_worker_now()
        async with asyncio.timeout(20):
            events = [ev async for ev in stream]
        resp.close()
        assert [e.event for e in events if e.event != "status"] == ["error"]
        assert events[-1].data["code"] == "cancelled"
        docs = await stack.messages_in_db(meta.data["conversation_id"])
        assert [(d["role"], d["status"], d["content"]) for d in docs] == [
            ("user", "complete", "never [[sim:hang]]"),
            ("assistant", "cancelled", ""),
        ]
    finally:
        await stack.stop()
