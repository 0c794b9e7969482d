"""``frod-rt decompose BASE --targets ...``: build and cache the shared basis of a base model.

Runs the float64 joint decomposition (DESIGN.md 1.1) over the targeted layers, stores it in
the per-category cache (so ``train`` / ``serve`` reuse it) and prints one line per category
with its reconstruction error. ``--out DIR`` also writes the whole decomposition
(``Decomposition.save``)."""
from __future__ import annotations

import argparse
import json

from .common import CLIError, existing_dir, load_hf_model, torch_dtype


def add_parser(sub) -> None:
    p = sub.add_parser("decompose", help="build and cache the shared FRoD basis of a base model",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="Hugging Face model directory")
    p.add_argument("--targets", nargs="+", required=True, metavar="MODULE",
                   help="module-name suffixes (q_proj v_proj ...) or one regex")
    p.add_argument("--alpha", type=float, default=1e-3, help="ridge term (default 1e-3)")
    p.add_argument("--dtype", default=None, help="dtype of the stored basis (default: model's)")
    p.add_argument("--cache-dir", default=None,
                   help="cache root (default: $FROD_RT_CACHE or ~/.cache/frod_rt)")
    p.add_argument("--out", default=None, metavar="DIR", help="also save the decomposition here")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    p.set_defaults(run=run)


def targets_arg(targets: list[str]):
    """One argument that looks like a regex stays a regex string; else a suffix list."""
    if len(targets) == 1 and any(c in targets[0] for c in "*()[]|\\^$+?"):
        return targets[0]
    return list(targets)


def run(args) -> int:
    from ..method.decompose import decompose
    base = existing_dir(args.base, "base model directory")
    if not args.alpha > 0:
        raise CLIError(f"--alpha must be > 0, got {args.alpha}")
    model = load_hf_model(base)
    dt = torch_dtype(args.dtype)
    d = decompose(model, targets_arg(args.targets), alpha=args.alpha, cache_dir=args.cache_dir,
                  progress=True, dtype=dt)
    if not d.layers:
        raise CLIError(f"--targets {' '.join(args.targets)}: no linear layer of {base} matches")
    errors = d.reconstruction_errors(model)
    rows = []
    for key, cat in d.categories.items():
        err = errors[key]
        rows.append({"category": key, "out": cat.out_features, "in": cat.in_features,
                     "layers": len(cat.layers), "max_rel_error": err})
    if args.out:
        d.save(args.out)
    summary = {"fingerprint": d.fingerprint, "alpha": d.alpha, "layers": len(d.layers),
               "categories": rows, "saved_to": args.out}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"base fingerprint: {d.fingerprint}")
    print(f"{len(d.layers)} layers in {len(rows)} categories (alpha {d.alpha:g})")
    w = max(len(r["category"]) for r in rows)
    for r in rows:
        print(f"  {r['category']:<{w}}  {r['layers']:3d} layers  rel. error {r['max_rel_error']:.2e}")
    if args.out:
        print(f"saved to {args.out}")
    return 0
