"""Conversation, message, folder and settings endpoints (proxied to history)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register the conversation endpoints on the gateway."""
