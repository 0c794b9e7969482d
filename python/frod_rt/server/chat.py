"""Turning chat messages into a prompt.

With a tokenizer that has a chat template, ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)`` gives the token ids (the template adds its own special
tokens). Without one, the simple template below is used and the text is tokenized like a
completion prompt:

    system: You are terse.
    user: Hello
    assistant: Hi!
    user: And now?
    assistant:

i.e. one ``"<role>: <content>\\n"`` line per message, ending with ``"assistant:"``.
"""
from __future__ import annotations

from .errors import APIError


def message_text(msg) -> str:
    """A message's content as text (list-of-parts content: the text parts joined)."""
    c = msg.content
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    parts = []
    for p in c:
        if p.type != "text" or p.text is None:
            raise APIError(400, f"messages: content part type {p.type!r} is not supported "
                           "(text only)", param="messages")
        parts.append(p.text)
    return "".join(parts)


def simple_template(messages: list[dict]) -> str:
    """The fallback template (see the module docstring)."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant:"])


def chat_prompt(tokenizer, messages) -> str | list[int]:
    """The prompt for ``messages`` (pydantic ChatMessage objects): token ids when the
    tokenizer has a chat template, else the simple template's text."""
    if not messages:
        raise APIError(400, "messages: expected at least one message", param="messages")
    plain = [{"role": m.role, "content": message_text(m)} for m in messages]
    if tokenizer is None:
        raise APIError(400, "chat needs a tokenizer; this server has none", param="messages")
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(plain, add_generation_prompt=True,
                                                tokenize=True)
        except Exception as e:            # noqa: BLE001 - template errors are bad input
            raise APIError(400, f"messages: the chat template failed: {e}",
                           param="messages") from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(t) for t in ids]
    return simple_template(plain)
