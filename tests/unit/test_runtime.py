"""The process runtime every service starts with (parley_common.runtime)."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from parley_common.runtime import loop_factory


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
