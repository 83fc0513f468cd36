from __future__ import annotations

from parley_common.providers import ProviderSettings
from parley_common.web import WebSearchSettings
from pydantic import Field, SecretStr


class GatewaySettings(ProviderSettings, WebSearchSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    auth_jwt_secret: SecretStr | None = None
    auth_jwks_url: str | None = None
    # How long fetched JWKS keys are used before the document is fetched again, and the
    # least time between two fetches (an unknown `kid` refetches only within this budget).
    auth_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    auth_jwks_min_refetch_seconds: float = Field(default=30.0, ge=0)
    auth_audience: str | None = None
    auth_issuer: str | None = None
    # Seconds of clock skew tolerated on exp/nbf/iat.
    auth_leeway: int = Field(default=30, ge=0, le=120)
    # How long a verified token is taken as verified without checking it again (never
    # past its `exp` plus the leeway); 0 checks every request's token.
    auth_verified_cache_seconds: float = Field(default=60.0, ge=0)
    # Per-user requests per minute on the authenticated API (0: no limit), and streams
    # (chat turns and resumed streams) one user may hold open at once, cluster-wide.
    rate_limit_per_minute: int = Field(default=120, ge=0)
    max_streams_per_user: int = Field(default=8, ge=0)
    # A stream's slot is a lease renewed while it is open; one a crashed gateway held
    # frees itself after this many seconds.
    stream_lease_seconds: int = Field(default=60, ge=5)
    # Largest request body accepted, in bytes (a 5 MiB image is ~6.7 MiB as base64).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_text_chars: int = Field(default=32_000, ge=1)
    # Images: decoded bytes, total pixels, and longest side.
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_image_side: int = Field(default=16_384, ge=1)
    # Events buffered per stream before a slow reader is resynchronised from the log.
    stream_buffer_events: int = Field(default=1024, ge=16)
    sse_ping_seconds: float = Field(default=15.0, gt=0, le=15.0)
    # A client whose socket accepts nothing for this long is cut off (stream stays resumable).
    sse_send_timeout: float = Field(default=30.0, gt=0)
    history_timeout: float = Field(default=10.0, gt=0)
    cancel_on_disconnect: bool = False
    # On SIGTERM, how long open streams may run on before they are told to resume
    # elsewhere (keep it under the orchestrator's termination grace, minus any preStop).
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
