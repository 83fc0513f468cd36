"""`make run`: the whole stack in the foreground, stopped cleanly by Ctrl-C or SIGTERM.

Starts history, one worker serving every configured provider, and the gateway.
With no provider key set, it also starts the provider simulator and points the
`openai` provider at it, and says so. With no AUTH_JWT_SECRET, it uses the
development secret that `make token` signs with.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from mint_token import DEV_SECRET  # noqa: E402  scripts/mint_token.py

KEYS = (
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "GROQ_API_KEY",
    "OPENROUTER_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "OLLAMA_HOST",
)


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "!" * width, file=sys.stderr)
    for line in lines:
        print(f"! {line.ljust(width - 4)} !", file=sys.stderr)
    print("!" * width + "\n", file=sys.stderr, flush=True)


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own loopback
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:.0f}s")


def main() -> None:
    env = dict(os.environ)
    if sys.stderr.isatty():
        env.setdefault("LOG_FORMAT", "console")
    procs: list[subprocess.Popen[bytes]] = []
    py = sys.executable

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([py, *args], env=env, cwd=ROOT)  # noqa: S603
        procs.append(proc)
        return proc

    def stop_all(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if not env.get("MONGODB_URL"):
            subprocess.run([py, str(ROOT / "scripts" / "ensure_mongod.py")], check=True)  # noqa: S603
        if not env.get("HISTORY_SERVICE_TOKEN"):
            # History refuses to start without one: a fresh random one per run, shared by
            # the processes started here.
            env["HISTORY_SERVICE_TOKEN"] = secrets.token_urlsafe(32)
        if not env.get("AUTH_JWT_SECRET"):
            env["AUTH_JWT_SECRET"] = DEV_SECRET
            print("AUTH_JWT_SECRET is not set: using the development secret", file=sys.stderr)
        if not any(env.get(k) for k in KEYS):
            port = env.get("SIM_PORT", "8090")
            sim = start("-m", "parley_sim", "--port", port)
            env["OPENAI_API_KEY"] = "sim-key"
            env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
            env.setdefault("OPENAI_MODEL", "parley-sim")
            simulated_search = not (env.get("WEB_SEARCH_URL") or env.get("BRAVE_SEARCH_API_KEY"))
            if simulated_search:
                env["WEB_SEARCH_URL"] = f"http://127.0.0.1:{port}"
            time.sleep(0.5)
            if sim.poll() is not None:
                raise SystemExit("the provider simulator did not start")
            banner(
                [
                    "NO PROVIDER KEY IS SET: answering through the provider SIMULATOR.",
                    f"The 'openai' provider points at http://127.0.0.1:{port}/v1.",
                    "Replies are canned echoes. Set a provider key (see README) for real ones.",
                    *(
                        ["web: true searches the simulator too (WEB_SEARCH_URL is unset)."]
                        if simulated_search
                        else []
                    ),
                ]
            )
        history = start("-m", "parley_history")
        wait_http(
            f"http://{env.get('HISTORY_HOST', '127.0.0.1')}:"
            f"{env.get('HISTORY_PORT', '8081')}/healthz",
            history,
        )
        start("-m", "parley_worker")
        gateway = start("-m", "parley_gateway")
        host, port = env.get("GATEWAY_HOST", "127.0.0.1"), env.get("GATEWAY_PORT", "8080")
        wait_http(f"http://{host}:{port}/healthz", gateway)
        print(
            f"\nParley is up on http://{host}:{port}  (make token USER=user-123 for a token)\n",
            file=sys.stderr,
            flush=True,
        )
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise SystemExit(f"{proc.args} exited with {proc.returncode}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", file=sys.stderr)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
