"""The event loop every service runs on.

uvloop by default: it runs the same asyncio code with less CPU per socket
operation and per callback, which is most of what a relay does per token
(docs/benchmarks.md). `PARLEY_EVENT_LOOP=asyncio` selects the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import structlog

log = structlog.get_logger("parley_common.runtime")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
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
