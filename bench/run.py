"""`make bench`: the whole streaming path under load, against a direct baseline.

Scenarios (docs/benchmarks.md says what each one shows and what it is held to):

- `ttft_1`: one stream at a time; TTFT of Parley and of the simulator asked directly.
  Every turn starts a conversation, as a first message does.
- `ttft_1c`: the same, every turn continuing one conversation (its context read from
  history before the job is queued).
- `c32`: 32 concurrent streams (closed loop), 10 ms between tokens.
- `c256`: 256 concurrent streams, 10 ms between tokens: throughput and errors.
- `hold`: N open streams on one gateway, each a turn whose provider does not answer
  yet (no worker takes the job); heartbeat gaps and the gateway's memory per stream.
- `relay`: one gateway relaying deltas that a stand-in for many workers publishes
  into Redis as fast as it can: deltas per second through one gateway process.

Every turn asks the simulator for `--tokens` words with `--delay-ms` between them.
CPU seconds of every process (Parley's and the servers') are read around each
scenario. Results: `bench/results/<date>-<label>.json`, and a Markdown table.
`--smoke` runs every scenario at a tiny size (part of `make test`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from parley_common.runtime import freeze_startup_heap, stop_automatic_full_collections

from bench.load import (
    Turn,
    closed_loop,
    direct_turn,
    directives,
    parley_turn,
    pct,
    session,
)
from bench.profile import Profiler
from bench.stack import ROOT, SERVICE_ENV, BenchStack, Proxy, cpu_delta, rss_bytes, token
from tests.support.infra import Infra, provide_infra

PARLEY_PROCS = ("gateway", "history", "worker")
TARGETS = {
    "ttft_overhead_p50_ms_1_stream": ("<=", 5.0),
    "ttft_overhead_p50_ms_1_stream_continued": ("<=", 5.0),
    "ttft_overhead_p99_ms_32_streams": ("<=", 20.0),
    "cpu_ms_per_turn": ("<=", 15.0),
    "turns_per_s_256_streams": (">=", 100.0),
    "errors_256_streams": ("<=", 0),
    "hold_streams": (">=", 10_000),
    "hold_rss_kib_per_stream": ("<=", 30.0),
    "hold_heartbeat_late_ms_max": ("<=", 1000.0),
    "relay_deltas_per_s": (">=", 50_000.0),
}


@dataclass(frozen=True)
class Sizes:
    ttft_1: int = 100  # turns, one at a time
    ttft_1c: int = 100  # turns, one at a time, in one conversation
    c32: tuple[int, int] = (32, 640)  # concurrency, turns
    c256: tuple[int, int] = (256, 2560)
    hold: tuple[int, float, int] = (10_000, 15.0, 2)  # streams, ping seconds, heartbeats
    relay: tuple[int, int] = (200, 1000)  # streams, deltas per stream


SMOKE = Sizes(ttft_1=5, ttft_1c=5, c32=(4, 8), c256=(8, 16), hold=(20, 1.0, 2), relay=(4, 64))


def parley_cpu_ms(cpu: dict[str, float], turns: int) -> float:
    spent = sum(v for k, v in cpu.items() if k.startswith(PARLEY_PROCS))
    return spent * 1000 / max(1, turns)


def per_turn(cpu: dict[str, float], turns: int) -> dict[str, float]:
    merged: dict[str, float] = {}
    for name, secs in cpu.items():
        key = "worker" if name.startswith("worker") else name
        merged[key] = merged.get(key, 0.0) + secs
    return {k: round(v * 1000 / max(1, turns), 3) for k, v in sorted(merged.items())}


async def turns_scenario(
    stack: BenchStack,
    label: str,
    concurrency: int,
    turns: int,
    tokens: int,
    delay_ms: int,
    profile: Path | None = None,
    *,
    continued: bool = False,
) -> dict[str, Any]:
    """`continued`: every turn continues one conversation (started by the first), as
    a chat goes on, instead of starting a new one; one client only (a conversation runs
    one turn at a time)."""
    assert not continued or concurrency == 1
    text = directives(tokens, delay_ms)
    # Clients start spread over one reply's length (see closed_loop), for Parley and
    # for the baseline alike.
    ramp = tokens * delay_ms / 1000
    auths = [f"Bearer {token(f'bench-{label}-{i}')}" for i in range(concurrency)]
    async with session(concurrency + 4) as http:
        # Warm up connections, SDK clients and the servers' caches.
        await closed_loop(
            min(concurrency, 8),
            min(concurrency, 8) * 2,
            lambda i: parley_turn(http, stack.url, auths[i % len(auths)], text, tokens),
        )
        base = await closed_loop(
            concurrency,
            turns,
            lambda i: direct_turn(http, f"{stack.sim_url}/openai/v1", text, tokens),
            ramp,
        )
        proxied: dict[str, Any] | None = None
        if stack.proxy is not None and not continued:
            proxied = await proxy_arm(stack, http, (concurrency, turns, ramp), text, tokens)
        profiler: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if profile is not None:
            pids = {n: p.pid for n, p in stack.procs.items() if n != "sim"}
            profiler = Profiler(profile / label, pids)
        async with profiler:
            before = stack.cpu()
            threads: list[dict[str, str] | None] = [
                {} if continued else None for _ in range(concurrency)
            ]
            run = await closed_loop(
                concurrency,
                turns,
                lambda i: parley_turn(
                    http,
                    stack.url,
                    auths[i % len(auths)],
                    text,
                    tokens,
                    threads[i % len(threads)],
                ),
                ramp,
            )
            cpu = cpu_delta(before, stack.cpu())
    parley, direct = run.summary(), base.summary()
    out = {
        "concurrency": concurrency,
        "tokens": tokens,
        "delay_ms": delay_ms,
        "parley": parley,
        "direct": direct,
        "ttft_overhead_ms": overhead(parley, direct),
        "cpu_ms_per_turn": per_turn(cpu, len(run.turns)),
        "parley_cpu_ms_per_turn": round(parley_cpu_ms(cpu, len(run.turns)), 3),
    }
    if proxied is not None:
        proxied["ttft_overhead_ms"] = overhead(proxied, direct)
        out["proxy"] = proxied
    return out


def overhead(measured: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    return {
        q: round(measured["ttft_ms"][q] - direct["ttft_ms"][q], 2) for q in ("p50", "p90", "p99")
    }


async def proxy_arm(
    stack: BenchStack,
    http: aiohttp.ClientSession,
    load: tuple[int, int, float],
    text: str,
    tokens: int,
) -> dict[str, Any]:
    """The direct baseline's load through the other proxy (`--proxy-cmd`): its turns,
    TTFT and its own CPU per turn, for a comparison made in the same run."""
    proxy = stack.proxy
    assert proxy is not None

    def turn(i: int) -> Awaitable[Turn]:
        return direct_turn(http, stack.proxy_url, text, tokens, model=proxy.model, key=proxy.key)

    concurrency, turns, ramp = load
    await closed_loop(min(concurrency, 8), min(concurrency, 8) * 2, turn)  # warm up
    before = stack.proxy_cpu()
    run = await closed_loop(concurrency, turns, turn, ramp)
    spent = stack.proxy_cpu() - before
    return run.summary() | {
        "command": proxy.command,
        "cpu_ms_per_turn": round(spent * 1000 / max(1, len(run.turns)), 3),
    }


async def open_stream(
    http: aiohttp.ClientSession, url: str, auth: str, text: str
) -> tuple[aiohttp.ClientResponse, str]:
    """POST a turn and read up to its `meta` event; the job id and the open response."""
    resp = await http.post(
        f"{url}/api/chat/stream",
        json={"text": text, "provider": "groq"},
        headers={"Authorization": auth},
    )
    if resp.status != 200:
        body = await resp.text()
        resp.release()
        raise RuntimeError(f"HTTP {resp.status}: {body[:200]}")
    buf = b""
    while b"\n\n" not in buf:
        chunk = await resp.content.readany()
        if not chunk:
            raise RuntimeError("stream ended before meta")
        buf += chunk
    meta = next(line for line in buf.split(b"\n") if line.startswith(b"data: "))
    return resp, str(orjson.loads(meta[6:])["job_id"])


async def hold_scenario(
    infra: Infra, logdir: Path, streams: int, ping: float, rounds: int
) -> dict[str, Any]:
    """`streams` open SSE streams on one gateway, their turns queued behind a provider
    that has not answered (no worker consumes the queue), for `rounds` heartbeats."""
    stack = await BenchStack(
        infra, logdir, with_worker=False, extra_env={"SSE_PING_SECONDS": str(ping)}
    ).start()
    gateway = stack.procs["gateway"].pid
    responses: list[aiohttp.ClientResponse] = []
    gaps: list[float] = []
    try:
        async with session(streams + 8) as http:
            # Warm up: the first requests allocate what every later one reuses.
            warm = [
                await open_stream(http, stack.url, f"Bearer {token(f'bench-warm-{i}')}", "hold")
                for i in range(20)
            ]
            for resp, _ in warm:
                resp.close()
            await asyncio.sleep(1.0)  # let the gateway notice the closed streams
            rss_before = rss_bytes(gateway)
            sem = asyncio.Semaphore(128)
            opened = time.perf_counter()

            async def one(i: int) -> None:
                async with sem:
                    resp, _ = await open_stream(
                        http, stack.url, f"Bearer {token(f'bench-hold-{i}')}", "hold"
                    )
                responses.append(resp)
                last = time.perf_counter()
                seen = 0
                while seen < rounds:
                    chunk = await resp.content.readany()
                    if not chunk:
                        raise RuntimeError("stream closed while held")
                    now = time.perf_counter()
                    if b": ping" in chunk:
                        gaps.append(now - last)
                        seen += 1
                    last = now

            results = await asyncio.gather(
                *(one(i) for i in range(streams)), return_exceptions=True
            )
            held = time.perf_counter() - opened
            errors = [r for r in results if isinstance(r, BaseException)]
            rss_after = rss_bytes(gateway)
            for resp in responses:
                resp.close()
    finally:
        await stack.stop()
    late = sorted(max(0.0, g - ping) * 1000 for g in gaps)
    return {
        "streams": streams,
        "open": len(responses),
        "errors": len(errors),
        "error_samples": sorted({repr(e)[:200] for e in errors})[:5],
        "ping_seconds": ping,
        "heartbeats": len(gaps),
        "heartbeat_late_ms": {
            "p50": round(pct(late, 0.5), 1),
            "p99": round(pct(late, 0.99), 1),
            "max": round(late[-1], 1) if late else 0.0,
        },
        "seconds": round(held, 1),
        "gateway_rss_mib_before": round(rss_before / 2**20, 1),
        "gateway_rss_mib_after": round(rss_after / 2**20, 1),
        "rss_kib_per_stream": round((rss_after - rss_before) / 1024 / max(1, len(responses)), 2),
    }


async def relay_scenario(
    infra: Infra, logdir: Path, streams: int, deltas: int, batch: int
) -> dict[str, Any]:
    """One gateway, `streams` open streams, and a stand-in for many workers publishing
    `deltas` deltas per job into Redis (`batch` per publish) as fast as it can."""
    stack = await BenchStack(infra, logdir, with_worker=False).start()
    try:
        async with session(streams + 8) as http:
            opened = [
                await open_stream(http, stack.url, f"Bearer {token(f'bench-relay-{i}')}", "relay")
                for i in range(streams)
            ]
            counts = [0] * streams
            done = [False] * streams

            async def read(i: int, resp: aiohttp.ClientResponse) -> None:
                tail = b""
                async for chunk in resp.content.iter_any():
                    data = tail + chunk
                    counts[i] += data.count(b"\nevent: assistant\n") - tail.count(
                        b"\nevent: assistant\n"
                    )
                    tail = data[-32:]
                    if b"\nevent: done\n" in data:
                        done[i] = True

            readers = [asyncio.create_task(read(i, resp)) for i, (resp, _) in enumerate(opened)]
            jobs = [job for _, job in opened]
            before = stack.cpu()
            started = time.perf_counter()
            # Two publishers (as many as cores), so that the gateway is what is measured.
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.publisher",
                    infra.redis_url,
                    stack.namespace,
                    str(deltas),
                    str(batch),
                    *jobs[k::2],
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                )
                for k in range(2)
            ]
            out = b"".join([(await p.communicate())[0] for p in procs])
            try:
                await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
            except TimeoutError:
                raise RuntimeError(
                    f"relay incomplete: {sum(counts)} deltas, {sum(done)} streams done, "
                    f"publisher printed {out!r}"
                ) from None
            elapsed = time.perf_counter() - started
            cpu = cpu_delta(before, stack.cpu())
            for resp, _ in opened:
                resp.close()
    finally:
        await stack.stop()
    relayed = sum(counts)
    return {
        "streams": streams,
        "deltas_per_stream": deltas,
        "events_per_publish": batch,
        "relayed": relayed,
        "complete": all(done) and relayed == streams * deltas,
        "seconds": round(elapsed, 3),
        "deltas_per_s": round(relayed / elapsed, 1),
        "publishers": [json.loads(line) for line in out.decode().split()],
        "gateway_cpu_s": round(cpu.get("gateway", 0.0), 3),
        "gateway_cpu_us_per_delta": round(cpu.get("gateway", 0.0) * 1e6 / max(1, relayed), 2),
        "redis_cpu_s": round(cpu.get("redis", 0.0), 3),
    }


def speed_marker_ms(rounds: int = 5) -> float:
    """CPU milliseconds of a fixed piece of Python work (the fastest of `rounds`): how
    fast this machine runs at the moment, so that runs made hours apart (on a VM whose
    speed changes) can be compared through it."""
    event: dict[str, Any] = {"type": "assistant", "seq": 0, "data": {"delta": "word " * 8}}
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for i in range(20_000):
            event["seq"] = i
            orjson.loads(orjson.dumps(event))
            "".join([str(j) for j in range(8)])
        best = min(best, time.process_time() - start)
    return round(best * 1000, 2)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        # Knobs that change what is measured, as the services saw them.
        "config": {
            name: os.environ.get(name, "(default)")
            for name in ("STREAM_FLUSH_MS", "PARLEY_EVENT_LOOP")
        }
        | SERVICE_ENV,
    }


def headline(results: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "ttft_1" in results:
        out["ttft_overhead_p50_ms_1_stream"] = results["ttft_1"]["ttft_overhead_ms"]["p50"]
    if "ttft_1c" in results:
        out["ttft_overhead_p50_ms_1_stream_continued"] = results["ttft_1c"]["ttft_overhead_ms"][
            "p50"
        ]
    if "c32" in results:
        out["ttft_overhead_p99_ms_32_streams"] = results["c32"]["ttft_overhead_ms"]["p99"]
        out["cpu_ms_per_turn"] = results["c32"]["parley_cpu_ms_per_turn"]
    if "c256" in results:
        out["turns_per_s_256_streams"] = results["c256"]["parley"]["turns_per_s"]
        out["errors_256_streams"] = results["c256"]["parley"]["errors"]
    if "hold" in results:
        out["hold_streams"] = results["hold"]["open"] if not results["hold"]["errors"] else 0
        out["hold_rss_kib_per_stream"] = results["hold"]["rss_kib_per_stream"]
        out["hold_heartbeat_late_ms_max"] = results["hold"]["heartbeat_late_ms"]["max"]
    if "relay" in results:
        out["relay_deltas_per_s"] = (
            results["relay"]["deltas_per_s"] if results["relay"]["complete"] else 0.0
        )
    return out


def comparison(results: dict[str, Any]) -> str:
    """Parley beside the other proxy (`--proxy-cmd`), scenario by scenario."""
    lines = [
        "| scenario | TTFT overhead p50 / p99 (ms): Parley | proxy "
        "| CPU per turn (ms): Parley | proxy | turns/s: Parley | proxy | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        proxy = r.get("proxy") if isinstance(r, dict) else None
        if proxy is None:
            continue
        ours, theirs = r["ttft_overhead_ms"], proxy["ttft_overhead_ms"]
        lines.append(
            f"| {name} | {ours['p50']:g} / {ours['p99']:g} | {theirs['p50']:g} / "
            f"{theirs['p99']:g} | {r['parley_cpu_ms_per_turn']:g} | "
            f"{proxy['cpu_ms_per_turn']:g} | {r['parley']['turns_per_s']:g} | "
            f"{proxy['turns_per_s']:g} | {proxy['errors']} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def verdicts(head: dict[str, float]) -> dict[str, bool]:
    out = {}
    for key, value in head.items():
        op, target = TARGETS[key]
        out[key] = value <= target if op == "<=" else value >= target
    return out


def table(head: dict[str, float], met: dict[str, bool]) -> str:
    lines = ["| measure | result | target | met |", "|---|---:|---:|:-:|"]
    for key, value in head.items():
        op, target = TARGETS[key]
        lines.append(f"| {key} | {value:g} | {op} {target:g} | {'yes' if met[key] else 'NO'} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it too
    scenarios = (
        set(args.only.split(","))
        if args.only
        else {"ttft_1", "ttft_1c", "c32", "c256", "hold", "relay"}
    )
    sizes = SMOKE if args.smoke else Sizes(hold=(args.hold_streams, 15.0, 2))
    results: dict[str, Any] = {"machine": machine(), "label": args.label}
    marker_before = speed_marker_ms()
    profile = Path(args.profile) if args.profile else None
    with provide_infra() as infra, tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        logdir = Path(tmp)
        if scenarios & {"ttft_1", "ttft_1c", "c32", "c256"}:
            proxy = (
                Proxy(
                    args.proxy_cmd,
                    model=args.proxy_model,
                    key=args.proxy_key,
                    path=args.proxy_path.rstrip("/"),
                )
                if args.proxy_cmd
                else None
            )
            stack = await BenchStack(infra, logdir, workers=args.workers, proxy=proxy).start()
            try:
                if "ttft_1" in scenarios:
                    results["ttft_1"] = await turns_scenario(
                        stack, "t1", 1, sizes.ttft_1, args.tokens, args.delay_ms, profile
                    )
                    print("ttft_1", json.dumps(results["ttft_1"]), file=sys.stderr)
                if "ttft_1c" in scenarios:
                    results["ttft_1c"] = await turns_scenario(
                        stack,
                        "t1c",
                        1,
                        sizes.ttft_1c,
                        args.tokens,
                        args.delay_ms,
                        profile,
                        continued=True,
                    )
                    print("ttft_1c", json.dumps(results["ttft_1c"]), file=sys.stderr)
                if "c32" in scenarios:
                    c, n = sizes.c32
                    results["c32"] = await turns_scenario(
                        stack, "c32", c, n, args.tokens, 10, profile
                    )
                    print("c32", json.dumps(results["c32"]), file=sys.stderr)
                if "c256" in scenarios:
                    c, n = sizes.c256
                    results["c256"] = await turns_scenario(
                        stack, "c256", c, n, args.tokens, 10, profile
                    )
                    print("c256", json.dumps(results["c256"]), file=sys.stderr)
            finally:
                await stack.stop()
        if "hold" in scenarios:
            n, ping, rounds = sizes.hold
            results["hold"] = await hold_scenario(infra, logdir, n, ping, rounds)
            print("hold", json.dumps(results["hold"]), file=sys.stderr)
        if "relay" in scenarios:
            n, deltas = sizes.relay
            results["relay"] = await relay_scenario(infra, logdir, n, deltas, args.batch)
            print("relay", json.dumps(results["relay"]), file=sys.stderr)
    results["machine"]["speed_marker_ms"] = {"start": marker_before, "end": speed_marker_ms()}
    head = headline(results)
    met = verdicts(head)
    results["headline"] = head
    results["met"] = met
    print(table(head, met))
    marker = results["machine"]["speed_marker_ms"]
    print(
        f"speed marker (CPU ms of a fixed piece of work): {marker['start']} at the start, "
        f"{marker['end']} at the end"
    )
    if beside := comparison(results):
        print(beside)
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{stamp}-{args.label}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path}", file=sys.stderr)
    errors = sum(
        results[s]["parley"]["errors"] + results[s]["direct"]["errors"]
        for s in ("ttft_1", "ttft_1c", "c32", "c256")
        if s in results
    )
    errors += sum(results[s]["errors"] for s in ("hold",) if s in results)
    if "relay" in results and not results["relay"]["complete"]:
        errors += 1
    return 1 if errors else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every scenario at a tiny size")
    p.add_argument("--only", default="", help="comma-separated scenarios")
    p.add_argument("--tokens", type=int, default=64, help="words per reply")
    p.add_argument("--delay-ms", type=int, default=10, help="ms between tokens (ttft_1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--hold-streams", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=8, help="events per publish (relay)")
    p.add_argument("--label", default="run")
    p.add_argument(
        "--profile", default="", help="record py-spy profiles of the turn scenarios here"
    )
    p.add_argument("--out", default="", help="results directory (default bench/results)")
    p.add_argument(
        "--proxy-cmd",
        default="",
        help="also drive the direct load through another OpenAI-compatible proxy, started "
        "by this shell command ({sim_url}: the simulator's OpenAI base URL, {port}: its "
        "port)",
    )
    p.add_argument(
        "--proxy-path", default="/v1", help="the proxy's base path, before /chat/completions"
    )
    p.add_argument("--proxy-model", default="sim-model", help="model name the proxy serves")
    p.add_argument("--proxy-key", default="sim-key", help="bearer token the proxy accepts")
    return p.parse_args(argv)


def main() -> int:
    # The load generator runs on uvloop, as the services do: the client's own CPU is
    # taken from the same two cores (its share is reported as `load_generator`).
    # Nor does it run full collections: holding 10,000 client streams, one would stop
    # the instrument for about a second and show up as late heartbeats (a run is
    # minutes long; what cycles it leaves wait for the process to end).
    freeze_startup_heap()
    stop_automatic_full_collections()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(parse()))
