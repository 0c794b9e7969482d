"""``frod-rt decompose BASE --targets ...``: build and cache the shared basis of a base model.

Runs the float64 joint decomposition (DESIGN.md 1.1) over the targeted layers, stores it in
the per-category cache (so ``train`` / ``serve`` reuse it) and prints the base fingerprint (the
weights alone), the decomposition fingerprint (weights + targets + alpha + basis), the seconds
the decomposition took (``--no-cache``: computed afresh, not read from the cache) and one line
per category with its reconstruction error. ``--basis peft`` computes PEFT's basis instead
(adapters trained on it export to PEFT exactly). ``--out DIR`` also writes the whole
decomposition (``Decomposition.save``)."""
from __future__ import annotations

import argparse
import json
import time

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
    p.add_argument("--basis", default="frod_rt", choices=("frod_rt", "peft"),
                   help="frod_rt's float64 basis (default) or PEFT's (exact PEFT export)")
    p.add_argument("--no-cache", action="store_true",
                   help="compute afresh (neither read nor write the cache)")
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
    t0 = time.perf_counter()
    d = decompose(model, targets_arg(args.targets), alpha=args.alpha, cache_dir=args.cache_dir,
                  progress=True, dtype=dt, basis=args.basis, use_cache=not args.no_cache)
    seconds = time.perf_counter() - t0
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
    summary = {"fingerprint": d.fingerprint, "decomposition_fingerprint": d.fingerprint,
               "base_fingerprint": d.base_fingerprint, "base_model": d.base_model,
               "basis": d.basis, "alpha": d.alpha, "layers": len(d.layers),
               "seconds": round(seconds, 3), "cached": not args.no_cache,
               "categories": rows, "saved_to": args.out}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"base fingerprint:          {d.base_fingerprint}")
    print(f"decomposition fingerprint: {d.fingerprint} ({d.basis} basis)")
    print(f"took {seconds:.2f} s" + ("" if args.no_cache else " (categories in the cache are read, not computed)"))
    print(f"{len(d.layers)} layers in {len(rows)} categories (alpha {d.alpha:g})")
    w = max(len(r["category"]) for r in rows)
    for r in rows:
        print(f"  {r['category']:<{w}}  {r['layers']:3d} layers  rel. error {r['max_rel_error']:.2e}")
    if args.out:
        print(f"saved to {args.out}")
    return 0
