from __future__ import annotations

from parley_common.settings import CommonSettings
from pydantic import Field, SecretStr


class HistorySettings(CommonSettings):
    history_host: str = "127.0.0.1"
    history_port: int = 8081
    mongodb_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017/parley")
    # Database name when MONGODB_URL names none.
    mongodb_database: str = "parley"
    # How many earlier messages are sent to the provider with a new turn.
    history_context_messages: int = Field(default=40, ge=1, le=500)
    # AMQP prefetch for turn events.
    history_prefetch: int = Field(default=32, ge=1)
    # History refuses to start without HISTORY_SERVICE_TOKEN; this lets it run with no
    # service check at all (a development machine where nothing else can reach it).
    history_allow_no_token: bool = False
    # On SIGTERM, how long turn results already being saved may take to finish.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
