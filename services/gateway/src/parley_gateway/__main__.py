"""`python -m parley_gateway`: run the HTTP gateway."""

from __future__ import annotations

from aiohttp import web
from parley_common.logging import configure_logging

from parley_gateway.app import create_app
from parley_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_format, settings.log_level)
    web.run_app(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
    )


if __name__ == "__main__":
    main()
