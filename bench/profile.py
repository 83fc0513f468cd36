"""Sampling profiles of Parley's processes while a scenario runs (py-spy), and a
summary of where their time goes.

    python -m bench --only c32 --profile DIR      # records DIR/<process>.txt
    python -m bench.profile DIR/gateway.txt       # prints the top frames

py-spy's raw format is one collapsed stack per line (`frame;frame;… count`).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^)]*?)(?::\d+)?\)$")


class Profiler:
    def __init__(self, out: Path, pids: dict[str, int], rate: int = 250) -> None:
        self.out = out
        self.pids = pids
        self.rate = rate
        self._procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Profiler:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            self._procs.append(
                await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(self.rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(self.out / f"{name}.txt"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
        await asyncio.sleep(1.0)  # py-spy attaches before the scenario starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self._procs:
            await proc.wait()


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/src/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarize(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [
            short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{path.stem}: {total} samples", "", "| self % | total % | frame |", "|---:|---:|---|"]
    for frame, n in own.most_common(top):
        lines.append(
            f"| {100 * n / total:.1f} | {100 * inclusive[frame] / total:.1f} | `{frame}` |"
        )
    return "\n".join(lines)


def main() -> None:
    for arg in sys.argv[1:]:
        print(summarize(Path(arg)))
        print()


if __name__ == "__main__":
    main()
