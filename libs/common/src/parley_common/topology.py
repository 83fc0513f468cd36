"""Every exchange, queue, routing key, Redis key and channel name, in one place.

All names carry `PARLEY_NAMESPACE` as a prefix so that several stacks (tests,
staging) can share one RabbitMQ and one Redis without taking each other's jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVIDERS: tuple[str, ...] = ("ollama", "groq", "google", "claude", "openai", "openrouter")

# Routing keys on the `chat.events` exchange.
TURN_COMPLETED = "turn.completed"
TURN_FAILED = "turn.failed"
TURN_CANCELLED = "turn.cancelled"


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = ""

    def _n(self, name: str) -> str:
        return f"{self.namespace}{name}"

    # RabbitMQ
    @property
    def jobs_exchange(self) -> str:
        return self._n("chat.jobs")

    def jobs_queue(self, provider: str) -> str:
        return self._n(f"chat.jobs.{provider}")

    @property
    def dead_exchange(self) -> str:
        return self._n("chat.jobs.dlx")

    @property
    def dead_queue(self) -> str:
        return self._n("chat.jobs.dead")

    @property
    def events_exchange(self) -> str:
        return self._n("chat.events")

    @property
    def history_queue(self) -> str:
        return self._n("history.turn-events")

    @property
    def history_dead_queue(self) -> str:
        return self._n("history.dead-jobs")

    # Redis
    def job_channel(self, job_id: str) -> str:
        return self._n(f"chat:job:{job_id}")

    def job_log(self, job_id: str) -> str:
        return self._n(f"chat:job:{job_id}:log")

    def job_meta(self, job_id: str) -> str:
        """Hash of who owns a job and where it stands (user, conversation, provider, state)."""
        return self._n(f"chat:job:{job_id}:meta")

    def job_cancel(self, job_id: str) -> str:
        return self._n(f"chat:job:{job_id}:cancel")

    @property
    def cancel_channel(self) -> str:
        """Every worker listens here for cancel requests."""
        return self._n("chat:cancel")

    def conversation_jobs(self, conversation_id: str) -> str:
        """Set of a conversation's active job ids."""
        return self._n(f"chat:conv:{conversation_id}:jobs")

    def conversation_deleted(self, conversation_id: str) -> str:
        """Set when a conversation is deleted, so that a reply still on its way is known
        to have nowhere to go (rather than to have come before its conversation)."""
        return self._n(f"chat:conv:{conversation_id}:deleted")

    def idempotency(self, user_id: str, key: str) -> str:
        return self._n(f"chat:idem:{user_id}:{key}")

    def provider_disabled(self, provider: str) -> str:
        """Set while a provider is out of the fallback chain (e.g. its key was refused)."""
        return self._n(f"provider:{provider}:disabled")

    @property
    def rate_limit_prefix(self) -> str:
        """Prefix of the per-user request-rate counters (kept by the `limits` library)."""
        return self._n("ratelimit")

    def user_streams(self, user_id: str) -> str:
        """Sorted set of a user's open stream leases (member: lease id, score: expiry)."""
        return self._n(f"ratelimit:streams:{user_id}")

    def redis_prefix(self) -> str:
        return self._n("")
