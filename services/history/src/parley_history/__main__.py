"""`python -m parley_history`: run the history service."""

from __future__ import annotations

from aiohttp import web
from parley_common.logging import configure_logging

from parley_history.app import create_app
from parley_history.settings import HistorySettings


def main() -> None:
    settings = HistorySettings()
    configure_logging("history", settings.log_format, settings.log_level)
    web.run_app(
        create_app(settings),
        host=settings.history_host,
        port=settings.history_port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
