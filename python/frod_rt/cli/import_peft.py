"""``frod-rt import PEFT_DIR --base DIR --out DIR``: turn an upstream PEFT FRoD adapter
(``PeftModel.save_pretrained`` output) into a frod_rt adapter directory.

``--basis auto`` (default) maps it onto frod_rt's basis when the measured error is within
``--tol`` (then it batches with natively trained adapters), else keeps PEFT's basis;
``frod_rt`` refuses instead of falling back; ``file`` always keeps PEFT's basis (exact). A
PEFT-basis import also writes its decomposition to ``OUT/decomposition/``
(``Decomposition.load``). Prints the basis used and the measured error."""
from __future__ import annotations

import argparse

from .common import CLIError, existing_dir, load_hf_model
from .export_peft import add_conversion_options, out_dir


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="turn a PEFT FRoD adapter into a frod_rt adapter",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peft_adapter", metavar="PEFT_DIR", help="PEFT FRoD adapter directory")
    add_conversion_options(p, "output directory (frod_rt adapter)",
                           "largest accepted relative error on frod_rt's basis (default 1e-3)")
    p.add_argument("--name", default=None, help="adapter name (default: basename of --out)")
    p.add_argument("--basis", default="auto", choices=("auto", "frod_rt", "file"))
    p.set_defaults(run=run)


def run(args) -> int:
    from ..interop.peft import import_peft
    if not args.tol > 0:
        raise CLIError(f"--tol must be > 0, got {args.tol}")
    src = existing_dir(args.peft_adapter, "PEFT adapter directory")
    out = out_dir(args.out, args.overwrite)
    model = load_hf_model(existing_dir(args.base, "base model directory"))
    res = import_peft(src, model, basis=args.basis, name=args.name or out.name, tol=args.tol,
                      cache_dir=args.cache_dir)
    res.save(out)          # with OUT/decomposition/ when kept in PEFT's basis
    print(f"imported {src} as {res.adapter.name!r} into {out} ({res.basis} basis; measured "
          f"relative error {res.max_rel_error:.2e})")
    if res.ignored_keys:
        print(f"not carried: {len(res.ignored_keys)} non-FRoD tensors (e.g. {res.ignored_keys[:3]})")
    return 0
