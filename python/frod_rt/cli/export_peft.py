"""``frod-rt export ADAPTER --base DIR --out DIR``: write a frod_rt adapter as a PEFT FRoD
adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
``PeftModel.from_pretrained(base, DIR)`` loads.

Exact for adapters trained on the PEFT-compatible basis (``decompose(..., basis="peft")``) or
imported with ``--basis file``; for adapters on frod_rt's own float64 basis the values are
mapped onto the basis PEFT computes and the error is measured (refused above ``--tol``).
Prints the measured relative error of the update."""
from __future__ import annotations

import argparse

from .common import CLIError, existing_dir, load_hf_model


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a frod_rt adapter as a PEFT FRoD adapter",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", metavar="ADAPTER", help="frod_rt adapter directory")
    add_conversion_options(p, "output directory (PEFT format)",
                           "largest accepted relative error of a layer's update (default 1e-3)")
    p.set_defaults(run=run)


def add_conversion_options(p, out_help: str, tol_help: str) -> None:
    """--base, --out, --tol, --cache-dir, --overwrite (shared by ``import`` and ``export``)."""
    p.add_argument("--base", required=True, help="base model directory the adapter was trained on")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--tol", type=float, default=1e-3, help=tol_help)
    p.add_argument("--cache-dir", default=None, help="decomposition cache")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def out_dir(value: str, overwrite: bool):
    """The output directory; a non-empty one is refused unless ``overwrite``."""
    from pathlib import Path
    out = Path(value).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise CLIError(f"--out {out} exists and is not an empty directory (use --overwrite)")
    return out


def run(args) -> int:
    from ..interop.peft import export_peft
    from ..method.adapter_io import read_adapter
    if not args.tol > 0:
        raise CLIError(f"--tol must be > 0, got {args.tol}")
    adapter = read_adapter(existing_dir(args.adapter, "adapter directory"))
    out = out_dir(args.out, args.overwrite)
    model = load_hf_model(existing_dir(args.base, "base model directory"))
    err = export_peft(adapter, model, out, tol=args.tol, cache_dir=args.cache_dir)
    print(f"exported {adapter.name!r} to {out} (PEFT FRoD format); measured relative error "
          f"of the update {err:.2e}")
    return 0
