"""Jobs: resume a stream, list a conversation's active jobs, cancel one."""

from __future__ import annotations

import re

import structlog
from aiohttp import web
from parley_common.jobs import JobMeta

from parley_gateway.context import Services, services
from parley_gateway.errors import ApiError, BadRequest, Forbidden, NotFound
from parley_gateway.handlers.streaming import relay
from parley_gateway.middlewares import USER_ID, stream_limited
from parley_gateway.validation import validate_conversation_id

log = structlog.get_logger("parley_gateway.jobs")

JOB_ID_RE = re.compile(r"^job-[0-9a-f]{24}$")


class NotResumable(ApiError):
    status = 410
    code = "not_resumable"


async def _owned_job(svc: Services, request: web.Request) -> tuple[str, JobMeta]:
    user_id = request[USER_ID]
    job_id = request.match_info["job_id"]
    if not JOB_ID_RE.match(job_id):
        raise NotFound("job not found")
    meta = await svc.registry.get(job_id)
    if meta is None:
        raise NotFound("job not found")
    if meta.user_id != user_id:
        raise Forbidden("job belongs to another user")
    structlog.contextvars.bind_contextvars(
        job_id=job_id,
        user_id=user_id,
        conversation_id=meta.conversation_id,
        provider=meta.provider,
    )
    return job_id, meta


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", request.query.get("last_event_id", "-1"))
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("Last-Event-ID: must be an integer event id") from None
    if value < -1 or value > 10**9:
        raise BadRequest("Last-Event-ID: out of range")
    return value


async def job_events(request: web.Request) -> web.StreamResponse:
    """Replay the events after Last-Event-ID from the job's log, then follow live."""
    svc = services(request)
    job_id, meta = await _owned_job(svc, request)
    after = _last_event_id(request)
    async with svc.hub.subscribe(job_id) as sub:
        if not await svc.hub.log.exists(job_id):
            err = NotResumable(
                "this job's events have expired, so the stream cannot be resumed; "
                f"its reply is saved in conversation {meta.conversation_id} "
                "(GET /api/chat/messages)"
            )
            err.extra = {
                "conversation_id": meta.conversation_id,
                "message_id": f"msg-{job_id}-a",
            }
            raise err
        log.info("job.resumed", after=after)
        return await relay(
            request,
            svc,
            sub,
            conversation_id=meta.conversation_id,
            provider=meta.provider,
            after_seq=after,
        )


async def list_jobs(request: web.Request) -> web.Response:
    svc = services(request)
    user_id = request[USER_ID]
    conversation_id = request.query.get("conversation_id")
    if conversation_id is None:
        raise BadRequest("conversation_id: is required")
    validate_conversation_id(conversation_id)
    jobs = [j for j in await svc.registry.active(conversation_id) if j.user_id == user_id]
    return web.json_response(
        {
            "conversation_id": conversation_id,
            "jobs": [
                {
                    "job_id": j.job_id,
                    "conversation_id": j.conversation_id,
                    "provider": j.provider,
                    "state": j.state,
                    "events_url": f"/api/chat/jobs/{j.job_id}/events",
                }
                for j in jobs
            ],
        }
    )


async def cancel_job(request: web.Request) -> web.Response:
    svc = services(request)
    job_id, meta = await _owned_job(svc, request)
    if meta.state == "finished":
        return web.json_response({"ok": True, "job_id": job_id, "state": "finished"})
    await svc.registry.request_cancel(job_id, svc.settings.job_deadline_seconds)
    log.info("job.cancel_requested")
    return web.json_response({"ok": True, "job_id": job_id, "state": "cancelling"}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/chat/jobs", list_jobs)
    app.router.add_get("/api/chat/jobs/{job_id}/events", stream_limited(job_events))
    app.router.add_post("/api/chat/jobs/{job_id}/cancel", cancel_job)
