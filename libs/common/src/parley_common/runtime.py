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
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable

import structlog

log = structlog.get_logger("parley_common.runtime")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
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
