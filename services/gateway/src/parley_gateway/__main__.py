"""`python -m parley_gateway`: run the HTTP gateway."""

from __future__ import annotations

import sys

import structlog
from aiohttp import web
from parley_common.logging import configure_logging
from parley_common.runtime import freeze_after_startup, full_collections_ctx, new_event_loop

from parley_gateway.app import create_app
from parley_gateway.auth import AuthConfigError
from parley_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging(
        "gateway", settings.log_format, settings.log_level, secrets=settings.secret_values()
    )
    try:
        app = create_app(settings)
    except AuthConfigError as exc:
        structlog.get_logger("parley_gateway").error("gateway.config_error", error=str(exc))
        sys.exit(2)
    app.on_startup.append(freeze_after_startup)
    app.cleanup_ctx.append(full_collections_ctx)
    web.run_app(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        print=None,
        access_log=None,
        loop=new_event_loop(),
        # on_shutdown has already let streams run for the grace and ended the rest;
        # this only bounds what is left (their last write, short API calls).
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main()
