"""A stand-in for a fleet of workers, for the relay scenario: publishes token deltas
for given jobs into Redis exactly as a worker does (`parley_common.events`), as fast
as Redis takes them, so that the gateway, not the provider, is the bottleneck.

    python -m bench.publisher REDIS_URL NAMESPACE DELTAS BATCH JOB_ID...

Each job gets DELTAS `assistant` events (seq 1…DELTAS, after the gateway's `meta`),
published BATCH at a time through the job's `EventBatch` (the worker's own path: the
process's flusher sends what every job has due in one pipelined round trip), then a
`done`. Prints one JSON line of what it did.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from parley_common.events import EventBatch, JobEvents
from parley_common.schemas import DoneEvent
from parley_common.schemas.events import encode_delta, encode_envelope
from parley_common.settings import CommonSettings
from parley_common.topology import Topology


async def publish(url: str, namespace: str, deltas: int, batch: int, jobs: list[str]) -> None:
    redis = CommonSettings(redis_url=url).redis_client()
    events = JobEvents(redis, Topology(namespace), ttl_seconds=600)
    started = time.perf_counter()
    messages = 0

    async def one(job_id: str) -> None:
        nonlocal messages
        out = EventBatch(events, job_id)
        seq = 1
        while seq <= deltas:
            for s in range(seq, min(seq + batch, deltas + 1)):
                await out.publish(encode_delta(s, "assistant", f"w{s} "))
                seq += 1
            await out.flush()
            messages += 1
        reply = "".join(f"w{s} " for s in range(1, deltas + 1))
        done = DoneEvent(
            reply=reply, conversation_id="bench", provider="groq", message_id="bench", model="sim"
        )
        await events.publish_many(job_id, [encode_envelope(deltas + 1, done)])

    await asyncio.gather(*(one(j) for j in jobs))
    elapsed = time.perf_counter() - started
    await redis.aclose()
    print(orjson.dumps({"seconds": elapsed, "publishes": messages, "jobs": len(jobs)}).decode())


def main() -> None:
    url, namespace, deltas, batch, *jobs = sys.argv[1:]
    asyncio.run(publish(url, namespace, int(deltas), int(batch), jobs))


if __name__ == "__main__":
    main()
