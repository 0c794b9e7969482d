"""``frod-rt serve --base DIR --adapter NAME=DIR ...``: the OpenAI-compatible HTTP server.

One engine loop batches the requests of every client and every adapter together. Endpoints:
/v1/completions, /v1/chat/completions, /v1/models, /v1/adapters (POST load, DELETE unload),
/health, /metrics (see docs/server.md). ``model`` in a request names an adapter; the base
model's name (its directory's basename, or ``--served-name``) selects no adapter."""
from __future__ import annotations

import argparse
from . import serve_ray
from .common import CLIError, adapter_specs, add_engine_options, load_engine


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
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
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


def run(args) -> int:
    from ..server import serve
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.max_queue < 1:
        raise CLIError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.default_max_tokens < 1:
        raise CLIError(f"--default-max-tokens must be >= 1, got {args.default_max_tokens}")
    serve_ray.check_options(args)
    check_port(args.host, args.port)
    if args.replicas > 1:
        return serve_ray.run(args)
    adapters = adapter_specs(args.adapter)
    eng = load_engine(args.base, adapters, args, max_waiting=args.max_queue)
    if eng.is_encoder:
        raise CLIError(f"{args.base}: the server needs a text-generation (decoder) model")
    if args.served_name:
        if args.served_name in adapters:
            raise CLIError(f"--served-name {args.served_name!r} is also an adapter name")
        eng.base_name = args.served_name
    if eng.base_name in adapters:
        raise CLIError(f"adapter name {eng.base_name!r} equals the base model's name; "
                       "rename the adapter or use --served-name")
    print(f"serving {eng.base_name} + {len(adapters)} adapter(s) on "
          f"http://{args.host}:{args.port}/v1", flush=True)
    try:
        serve(eng, host=args.host, port=args.port, log_level=args.log_level,
              default_max_tokens=args.default_max_tokens)
        print("frod-rt serve: stopped", flush=True)
    finally:
        eng.close()
    return 0
