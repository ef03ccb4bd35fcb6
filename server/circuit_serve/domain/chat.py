"""Chat messages rendered to token ids with the model's own chat template (no protobuf here).

1. The messages are checked: at least one, each with a non-empty role and text content.
2. The tokenizer's chat template renders them with the generation prompt added and tokenizes the
   result without adding special tokens (`apply_chat_template(..., add_generation_prompt=True,
   tokenize=True)`): a template that writes BOS itself gets exactly one.
3. A tokenizer without a template is an InvalidRequest naming what to send instead.

Generation, the Tokenize call, attribution and feature requests all use `chat_token_ids`, so a
chat completion and the audit of its tokens see the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from circuit_serve.domain.errors import InvalidRequest


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


def check_messages(messages: Sequence[ChatMessage]) -> None:
    if not messages:
        raise InvalidRequest("is empty; give at least one message with a role and content", field="messages")
    for i, m in enumerate(messages):
        if not m.role.strip():
            raise InvalidRequest(f"message {i} has no role; use e.g. 'system', 'user' or 'assistant'", field="messages")
        if not isinstance(m.content, str):
            raise InvalidRequest(f"message {i} content must be text", field="messages")


def chat_token_ids(tokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, generation prompt added."""
    check_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest(
            "the served model's tokenizer has no chat template; send the conversation as prompt text instead",
            field="messages",
        )
    try:
        out = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, tokenize=True
        )
    except Exception as exc:  # the template's own errors (e.g. "roles must alternate") are the caller's to fix
        raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", field="messages") from exc
    ids = out["input_ids"] if hasattr(out, "keys") else out
    ids = [int(t) for t in ids]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        ids = ids[1:]  # a template writing BOS next to a tokenizer that adds one: keep one
    return ids
