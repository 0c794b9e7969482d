"""``ServerConfig``: the server's limits and security options, all in one place.

Defaults open nothing: no run-time adapter loading, no ``/docs``, unknown request fields
refused. ``api_key`` None means no authentication (fine on 127.0.0.1; ``frod-rt serve`` warns
when it binds another address without a key).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerConfig:
    """Options of ``create_app`` / ``serve`` / ``ServerThread``.

    Attributes:
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <key>``
            (401 otherwise). Default: the ``FROD_RT_API_KEY`` environment variable, if set.
        allow_adapter_loading: a directory; run-time adapter loading and unloading
            (``POST /v1/adapters``, ``DELETE /v1/adapters/{name}``,
            ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) is enabled and only
            directories under it (after resolving symlinks) can be loaded. None: those
            routes answer 403.
        allowed_hosts: when non-empty, requests whose ``Host`` header names another host get
            400 (protection against DNS rebinding). Entries are host names without port;
            ``"*"`` allows any.
        enable_docs: serve ``/docs``, ``/redoc`` and ``/openapi.json``.
        strict_fields: unknown request-body fields are a 400 naming them (vLLM and OpenAI
            refuse them too); False ignores them.
        max_body_bytes: request bodies larger than this get 413 before they are parsed.
        max_prompt_chars: a text prompt (or all chat contents together) longer than this is
            refused before tokenizing; default ``64 * max_model_len``.
        max_stop_strings / max_stop_chars: count and length of ``stop`` strings.
        max_stop_token_ids: length of ``stop_token_ids``.
        body_timeout_s: a request body that does not arrive within this many seconds gets
            408 (slow or stalled uploads).
        header_timeout_s: a connection that has not sent a complete request head within this
            many seconds (after connecting, or after its last response) is closed:
            half-open and slowloris connections do not stay forever.
        keep_alive_s: uvicorn's idle keep-alive timeout.
        max_adapter_labels: adapter names with their own ``adapter`` label value in
            /metrics; requests of further adapters count under ``"(other)"`` (metrics.py).
    """
    api_key: str | None = field(default_factory=lambda: os.environ.get("FROD_RT_API_KEY")
                                or None)
    allow_adapter_loading: str | os.PathLike | None = None
    allowed_hosts: tuple[str, ...] = ()
    enable_docs: bool = False
    strict_fields: bool = True
    max_body_bytes: int = 16 * 1024 * 1024
    max_prompt_chars: int | None = None
    max_stop_strings: int = 16
    max_stop_chars: int = 512
    max_stop_token_ids: int = 1024
    body_timeout_s: float = 30.0
    header_timeout_s: float = 15.0
    keep_alive_s: int = 5
    max_adapter_labels: int = 256

    def __post_init__(self):
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise TypeError("api_key: expected a string or None")
        if self.api_key == "":
            self.api_key = None
        self.allowed_hosts = tuple(h.strip().lower() for h in self.allowed_hosts if h.strip())
        for name in ("max_body_bytes", "max_stop_strings", "max_stop_chars",
                     "max_stop_token_ids", "keep_alive_s", "max_adapter_labels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a number > 0")

    def adapter_root(self) -> Path | None:
        """The resolved run-time loading root (None = loading disabled)."""
        if self.allow_adapter_loading is None:
            return None
        return Path(os.path.realpath(self.allow_adapter_loading))

    def prompt_char_limit(self, max_model_len: int) -> int:
        return self.max_prompt_chars or 64 * int(max_model_len)
