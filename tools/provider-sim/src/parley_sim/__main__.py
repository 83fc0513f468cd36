"""`python -m parley_sim [--host H] [--port P]`: run the provider simulator."""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

from parley_sim.server import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="parley_sim")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    print(f"parley provider simulator on http://{args.host}:{args.port}", flush=True)
    # uvloop, as the services: the simulator stands in for a remote provider, and the
    # less of the machine it takes, the more is left to what a benchmark measures.
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
