"""The ``frod-rt`` command line (entry point ``frod_rt.cli:main``; see docs/cli.md).

One module per command: decompose, train, inspect, generate, serve, import (import_peft),
export (export_peft), bench. Each has
``add_parser(subparsers)`` and ``run(args) -> int``. Bad input prints one line
``frod-rt <command>: error: <message>`` and exits with 2 (no traceback;
set FROD_RT_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import bench, decompose, export_peft, generate, import_peft, inspect, serve, train
from .common import BAD_INPUT

COMMANDS = (decompose, train, inspect, generate, serve, import_peft, export_peft, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frod-rt",
        description="Train and serve many FRoD adapters on one shared base model.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"frod-rt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":           # bench passes everything through
        return bench.run_passthrough(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"frod-rt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BAD_INPUT as e:
        if os.environ.get("FROD_RT_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg = " ".join(msg.split()) or type(e).__name__
        print(f"frod-rt {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
