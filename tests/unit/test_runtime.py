"""The process runtime every service starts with (parley_common.runtime)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import weakref

import pytest
from parley_common.runtime import (
    full_collections,
    loop_factory,
    stop_automatic_full_collections,
)


def test_startup_heap_is_frozen_before_the_loop_starts() -> None:
    # In a fresh interpreter: what was imported before the loop is out of the
    # collector's sight, so a full collection no longer walks it (no 40-160 ms pause).
    code = (
        "import gc, openai, pydantic, parley_common.runtime as r;"
        "before = gc.get_freeze_count(); r.loop_factory();"
        "print(before, gc.get_freeze_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before == 0
    assert after > 50_000  # the SDK's and pydantic's objects, not a handful


def test_unknown_event_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_EVENT_LOOP", "trio")
    try:
        with pytest.raises(SystemExit, match="uvloop or asyncio"):
            loop_factory()
    finally:
        gc.unfreeze()


def _threshold_after_start(env: dict[str, str]) -> str:
    code = "import gc, parley_common.runtime as r; r.loop_factory(); print(gc.get_threshold()[2])"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PARLEY_GC_FULL_SECONDS"} | env,
    )
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def test_full_collections_are_the_services_not_pythons() -> None:
    # By default Python never starts a full collection in a service (the service runs
    # them every PARLEY_GC_FULL_SECONDS); 0 leaves them to Python (third threshold 10).
    assert int(_threshold_after_start({})) > 10**9
    assert _threshold_after_start({"PARLEY_GC_FULL_SECONDS": "0"}) == "10"
    assert "PARLEY_GC_FULL_SECONDS must be" in _threshold_after_start(
        {"PARLEY_GC_FULL_SECONDS": "soon"}
    )


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


async def test_the_service_frees_reference_cycles_that_outlived_young_collections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARLEY_GC_FULL_SECONDS", "0.05")
    thresholds = gc.get_threshold()
    stop_automatic_full_collections()  # as in a service
    try:
        freed = asyncio.Event()
        cycle = _Cyclic()
        weakref.finalize(cycle, freed.set)
        gc.collect(1)  # it survives the young collections: now in the oldest generation
        del cycle  # garbage only a full collection finds
        async with full_collections():
            await asyncio.wait_for(freed.wait(), timeout=5)
    finally:
        gc.set_threshold(*thresholds)
