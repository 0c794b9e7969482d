"""Errors raised by the serving engine."""
from __future__ import annotations


class UnknownAdapterError(KeyError):
    """A request or call named an adapter the engine does not know."""

    def __init__(self, name, known=()):
        self.name = name
        known = sorted(known)
        hint = f"; loaded adapters: {', '.join(known)}" if known else "; no adapters are loaded"
        super().__init__(f"unknown adapter {name!r}{hint}")

    def __str__(self) -> str:          # KeyError would print the repr of the message
        return str(self.args[0])


class EngineOverloadedError(RuntimeError):
    """The engine's waiting queue is full (``max_waiting``); retry later."""


class RequestTooLargeError(ValueError):
    """A request can never fit the engine's limits (prompt + max_tokens > KV cache / context)."""
