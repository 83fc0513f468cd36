"""`python -m parley_history`: run the history service."""

from __future__ import annotations

import sys

import structlog
from aiohttp import web
from parley_common.logging import configure_logging
from parley_common.runtime import freeze_after_startup, full_collections_ctx, new_event_loop

from parley_history.app import MissingServiceToken, create_app
from parley_history.settings import HistorySettings


def main() -> None:
    settings = HistorySettings()
    configure_logging(
        "history", settings.log_format, settings.log_level, secrets=settings.secret_values()
    )
    try:
        app = create_app(settings)
    except MissingServiceToken as exc:
        structlog.get_logger("parley_history").error("history.config_error", error=str(exc))
        sys.exit(2)
    app.on_startup.append(freeze_after_startup)
    app.cleanup_ctx.append(full_collections_ctx)
    web.run_app(
        app,
        host=settings.history_host,
        port=settings.history_port,
        print=None,
        access_log=None,
        loop=new_event_loop(),
        # In-flight API calls are short; the turn consumer drains in its own cleanup
        # (SHUTDOWN_GRACE_SECONDS).
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main()
