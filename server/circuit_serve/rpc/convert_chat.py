"""circuit.v1.ChatMessage -> domain chat messages (shared by every request that takes `messages`)."""

from __future__ import annotations

from circuit_serve.domain.chat import ChatMessage


def messages_from_pb(messages) -> tuple[ChatMessage, ...] | None:
    """Repeated circuit.v1.ChatMessage -> domain messages (None when there are none)."""
    return tuple(ChatMessage(m.role, m.content) for m in messages) or None
