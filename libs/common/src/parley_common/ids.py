"""Ids that more than one service derives: a new conversation's, a turn's messages'.

The gateway names a new conversation and its first message itself, so that it can
queue that turn's job while history stores them (ADR 10); history names them the
same way when it is asked without one.
"""

from __future__ import annotations

import secrets


def new_conversation_id(user_id: str, channel: str) -> str:
    """A fresh conversation id, inside its owner's namespace (`<user>:<channel>:…`)."""
    return f"{user_id}:{channel}:conv-{secrets.token_urlsafe(12)}"


def user_message_id(job_id: str) -> str:
    return f"msg-{job_id}-u"


def reply_message_id(job_id: str) -> str:
    return f"msg-{job_id}-a"
