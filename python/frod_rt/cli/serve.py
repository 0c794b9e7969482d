"""``frod-rt serve --base DIR --adapter NAME=DIR ...``: the OpenAI-compatible HTTP server.

One engine loop batches the requests of every client and every adapter together. Endpoints:
/v1/completions, /v1/chat/completions (decoder bases), /v1/embeddings, /v1/classify (encoder
bases), /v1/models, /v1/adapters (POST load, DELETE unload), /health, /metrics (see
docs/server.md). ``model`` in a request names an adapter; the base
model's name (its directory's basename, or ``--served-name``) selects no adapter.

Security (docs/server.md, "Security"): ``--api-key`` (or FROD_RT_API_KEY) requires a Bearer
key on every route but /health; run-time adapter loading is off unless
``--allow-adapter-loading ROOT``; ``--allowed-host`` restricts the Host header; /docs only
with ``--enable-docs``. Binding a non-loopback address without a key prints a warning."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from . import serve_ray
from .common import CLIError, adapter_specs, add_engine_options, load_engine

SERVE_DEPS = ("fastapi", "uvicorn", "pydantic", "starlette", "h11", "prometheus_client")


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the base and adapters over an OpenAI-compatible API",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, metavar="DIR", help="Hugging Face model directory")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="adapter to serve (repeatable; DIR alone is named by its basename)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for admission at most; more get 429 (default 256)")
    p.add_argument("--default-max-tokens", type=int, default=16,
                   help="max_tokens when a request gives none (default 16, as OpenAI)")
    p.add_argument("--served-name", default=None,
                   help="model name of the base (default: basename of --base)")
    p.add_argument("--max-adapter-labels", type=int, default=256,
                   help="adapters with their own 'adapter' label in /metrics; requests of "
                        "more are counted under '(other)' (default 256)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    g = p.add_argument_group("security and limits")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                        "(default: $FROD_RT_API_KEY, else none)")
    g.add_argument("--allow-adapter-loading", default=None, metavar="ROOT",
                   help="enable run-time adapter loading/unloading, only from directories "
                        "under ROOT (symlinks resolved); off by default")
    g.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                   help="accept only requests whose Host header names HOST (repeatable)")
    g.add_argument("--enable-docs", action="store_true", help="serve /docs and /openapi.json")
    g.add_argument("--allow-unknown-fields", action="store_true",
                   help="ignore unknown request fields instead of answering 400")
    g.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="larger request bodies get 413 (default 16 MiB)")
    g.add_argument("--timeout-keep-alive", type=int, default=5,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    add_engine_options(p)
    serve_ray.add_options(p)
    p.set_defaults(run=run)


def check_port(host: str, port: int) -> None:
    """CLIError now (before loading the model) if ``host:port`` cannot be bound."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CLIError(f"--host {host!r}: {e}") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise CLIError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when the server would be reachable by others without a key."""
    if api_key or is_loopback(host):
        return None
    return (f"frod-rt serve: warning: listening on {host} without an API key: anyone who can "
            "reach this port can use the server (set --api-key or FROD_RT_API_KEY)")


def import_server():
    """``frod_rt.server``, or a CLIError naming the extra to install when the server's
    dependencies are missing."""
    try:
        from .. import server
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing in SERVE_DEPS:
            raise CLIError(f"the server needs {missing!r}, which is not installed: "
                           "pip install 'frod-rt[serve]'") from None
        raise
    return server


def run(args) -> int:
    server = import_server()
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.max_queue < 1:
        raise CLIError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.default_max_tokens < 1:
        raise CLIError(f"--default-max-tokens must be >= 1, got {args.default_max_tokens}")
    api_key = args.api_key if args.api_key is not None else os.environ.get("FROD_RT_API_KEY")
    try:
        config = server.ServerConfig(
            api_key=api_key or None, allow_adapter_loading=args.allow_adapter_loading,
            allowed_hosts=tuple(args.allowed_host), enable_docs=args.enable_docs,
            strict_fields=not args.allow_unknown_fields, max_body_bytes=args.max_body_bytes,
            keep_alive_s=args.timeout_keep_alive, max_adapter_labels=args.max_adapter_labels)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    root = config.adapter_root()
    if root is not None and not root.is_dir():
        raise CLIError(f"--allow-adapter-loading: {args.allow_adapter_loading} is not a "
                       "directory")
    serve_ray.check_options(args)
    check_port(args.host, args.port)
    warning = bind_warning(args.host, config.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if args.replicas > 1:
        return serve_ray.run(args, config)
    adapters = adapter_specs(args.adapter)
    eng = load_engine(args.base, adapters, args, max_waiting=args.max_queue)
    if args.served_name:
        if args.served_name in adapters:
            raise CLIError(f"--served-name {args.served_name!r} is also an adapter name")
        eng.base_name = args.served_name
    if eng.base_name in adapters:
        raise CLIError(f"adapter name {eng.base_name!r} equals the base model's name; "
                       "rename the adapter or use --served-name")
    kind = "embeddings" if eng.is_encoder else "text generation"
    print(f"serving {eng.base_name} + {len(adapters)} adapter(s) ({kind}) on "
          f"http://{args.host}:{args.port}/v1", flush=True)
    try:
        server.serve(eng, host=args.host, port=args.port, log_level=args.log_level,
                     default_max_tokens=args.default_max_tokens, config=config)
        print("frod-rt serve: stopped", flush=True)
    finally:
        eng.close()
    return 0
