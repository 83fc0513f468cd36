"""Waiting for service processes to come up."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Container, Mapping
from pathlib import Path

import aiohttp


async def wait_ready(
    url: str,
    procs: Mapping[str, subprocess.Popen[bytes]],
    logdir: Path,
    seconds: float = 30,
    expected_down: Container[str] = (),
) -> None:
    """Poll `url` until it answers 200; fail at once (with the end of its log) when one
    of `procs` other than `expected_down` has exited."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(seconds):
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None and name not in expected_down:
                    tail = (logdir / f"{name}.log").read_text()[-2000:]
                    raise RuntimeError(f"{name} exited {proc.returncode}: {tail}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)  # polling a port that is not open yet
