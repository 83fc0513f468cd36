"""The event loop every service runs on, and its garbage collector.

uvloop by default: it runs the same asyncio code with less CPU per socket
operation and per callback, which is most of what a relay does per token
(docs/benchmarks.md). `PARLEY_EVENT_LOOP=asyncio` selects the standard loop.

The objects a process holds for good (modules, the SDKs' and pydantic's classes and
schemas, clients and connections: a few hundred thousand) are moved out of the
garbage collector's sight with `gc.freeze()`: before the loop starts, and again once
the service has started (`freeze_after_startup`: building the provider SDK clients
alone imports some 50,000 objects). A full collection otherwise walks all of them
and stops every stream of the process for 30-160 ms, a few times a minute
(docs/benchmarks.md, "Pauses").

Full collections are then started by the service, every `PARLEY_GC_FULL_SECONDS` (300),
not by Python. Python starts one whenever the objects that survived two young
collections have grown by a quarter since the last: a gateway opening thousands of
streams grows that way all the time, and each full collection walks every open
stream's objects, stopping them all (about 1 s at 10,000 streams on the benchmark
machine, every few seconds while they opened). Young collections stay automatic; what
only a full collection frees (reference cycles that outlived two young collections) waits
at most the interval. `0` leaves full collections to Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import AsyncIterator, Callable

import structlog

log = structlog.get_logger("parley_common.runtime")


# A third threshold no count reaches: Python never starts a full collection itself.
_NEVER = 2**31 - 1


def full_collection_seconds() -> float:
    raw = os.environ.get("PARLEY_GC_FULL_SECONDS", "300").strip()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise SystemExit(f"PARLEY_GC_FULL_SECONDS must be a number of seconds >= 0, not {raw!r}")
    return seconds


def stop_automatic_full_collections() -> None:
    """Python no longer starts full collections (young ones stay automatic)."""
    young, older, _ = gc.get_threshold()
    gc.set_threshold(young, older, _NEVER)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if full_collection_seconds() > 0:
        stop_automatic_full_collections()
    freeze_startup_heap()
    choice = os.environ.get("PARLEY_EVENT_LOOP", "uvloop").strip().lower()
    if choice == "asyncio":
        return asyncio.new_event_loop
    if choice != "uvloop":
        raise SystemExit(f"PARLEY_EVENT_LOOP must be uvloop or asyncio, not {choice!r}")
    import uvloop

    return uvloop.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    loop = loop_factory()()
    asyncio.set_event_loop(loop)
    return loop


async def freeze_after_startup(_app: object = None) -> None:
    """The same once the service has started (an aiohttp `on_startup` handler, last)."""
    freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exempt every surviving object from
    future collections (they live as long as the process)."""
    gc.collect()
    gc.freeze()


async def collect_fully(seconds: float) -> None:
    """Run a full collection every `seconds`, for as long as the service runs."""
    while True:
        await asyncio.sleep(seconds)
        started = time.perf_counter()
        found = gc.collect()
        log.info(
            "gc.full_collection",
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            collected=found,
        )


@contextlib.asynccontextmanager
async def full_collections() -> AsyncIterator[None]:
    """`collect_fully` in a task, while the block runs (nothing when the setting is 0)."""
    seconds = full_collection_seconds()
    if seconds <= 0:
        yield
        return
    task = asyncio.create_task(collect_fully(seconds), name="gc-full-collections")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def full_collections_ctx(_app: object) -> AsyncIterator[None]:
    """The same for an aiohttp application (`app.cleanup_ctx`)."""
    async with full_collections():
        yield
