"""``frod-rt inspect ADAPTER [--base DIR]``: an adapter's config, fingerprints and sizes, and
whether it fits a base model.

Reads and validates the adapter directory (without the base model) and prints its name,
format version, the two fingerprints it records (the *base* fingerprint of the base model's
weights alone, and the *decomposition* fingerprint of the decomposition it was trained on:
weights + targets + alpha + basis), the model it was trained for, targets, sparse rate, seed,
alpha, a content hash of the weights file, and per category the shape, k, layer count and
trainable values; then the totals (values and bytes on disk).

With ``--base DIR`` it also loads that base, prints its base fingerprint and says whether the
adapter fits it (after mapping a task-model prefix such as ``bert.`` if needed, on frod_rt's
or PEFT's basis), or why not; the exit code is then 1 when it does not fit."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from .common import existing_dir


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show an adapter's config, fingerprint and sizes",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", metavar="ADAPTER", help="adapter directory")
    p.add_argument("--base", metavar="DIR", default=None,
                   help="a base model directory: say whether the adapter fits it")
    p.add_argument("--cache-dir", default=None, help="decomposition cache (with --base)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(path: Path) -> dict:
    """A JSON-able description of the adapter in ``path``."""
    from ..method.adapter_io import CONFIG_NAME, WEIGHTS_NAME, read_adapter
    a = read_adapter(path)
    c = a.config
    cats = []
    for key, info in c.categories.items():
        names = [n for n in info["layers"] if n in a.layers]
        values = sum(a.layers[n].dl.numel() + a.layers[n].s.numel() for n in names)
        custom = any(a.layers[n].rows is not None for n in names)
        cats.append({"category": key, "out": info["out"], "in": info["in"], "k": info["k"],
                     "layers": len(names), "values": values, "custom_pattern": custom})
    values = sum(x["values"] for x in cats)
    dtypes = sorted({str(d.dl.dtype).replace("torch.", "") for d in a.layers.values()})
    files = {n: (path / n).stat().st_size for n in (CONFIG_NAME, WEIGHTS_NAME)}
    return {"name": a.name, "path": str(path), "format_version": c.format_version,
            "base_fingerprint": c.base_fingerprint,
            "decomposition_fingerprint": c.decomposition_fingerprint,
            "base_model": c.base_model, "weights_sha256": _sha256(path / WEIGHTS_NAME),
            "target_modules": c.target_modules, "sparse_rate": c.sparse_rate, "seed": c.seed,
            "alpha": c.alpha, "dtype": ",".join(dtypes), "layers": len(a.layers),
            "trainable_values": values, "file_bytes": files, "categories": cats,
            "extra": c.extra}


def fit_to_base(adapter_path: Path, base_path: Path, cache_dir=None) -> dict:
    """``{"base", "base_model", "base_fingerprint", "fits", "basis", "mapped", "reason"}``:
    whether the adapter in ``adapter_path`` fits the base model in ``base_path``."""
    from ..method.adapter_fit import find_decomposition
    from ..method.adapter_io import AdapterError, read_adapter
    from ..method.decompose import BASES, base_identity
    from .common import load_hf_model
    model = load_hf_model(base_path)
    out = {"base": str(base_path), **base_identity(model), "fits": False, "basis": None,
           "mapped": None, "reason": None}
    adapter = read_adapter(adapter_path)
    try:
        fitted, d = find_decomposition(adapter, model, cache_dir)
    except AdapterError as e:
        hint = ""
        if adapter.config.extra.get("basis") not in (None, *BASES):
            hint = (f" (it was imported in a foreign basis, {adapter.config.extra['basis']!r}: "
                    "serve it with the decomposition it was imported with)")
        out["reason"] = str(e) + hint
        return out
    out.update(fits=True, basis=d.basis,
               mapped=fitted.config.extra.get("mapped_layer_names") if fitted is not adapter
               else None)
    return out


def run(args) -> int:
    from ..method.fingerprint import model_summary
    path = existing_dir(args.adapter, "adapter directory")
    d = describe(path)
    if args.base is not None:
        d["fit"] = fit_to_base(path, existing_dir(args.base, "base model directory"),
                               args.cache_dir)
    rc = 1 if args.base is not None and not d["fit"]["fits"] else 0
    if args.json:
        print(json.dumps(d, indent=2))
        return rc
    print(f"adapter          {d['name']}  ({d['path']})")
    print(f"format version   {d['format_version']}")
    print(f"base fingerprint {d['base_fingerprint'] or '(not recorded: format 1 file)'}")
    print(f"decomposition    {d['decomposition_fingerprint'] or '(not recorded)'}")
    print(f"trained for      {model_summary(d['base_model']) if d['base_model'] else '(not recorded)'}")
    print(f"weights sha256   {d['weights_sha256']}")
    print(f"targets          {', '.join(d['target_modules'])}")
    print(f"sparse rate      {d['sparse_rate']:g}   seed {d['seed']}   alpha {d['alpha']:g}   "
          f"dtype {d['dtype']}")
    w = max(len(x["category"]) for x in d["categories"]) if d["categories"] else 8
    for x in d["categories"]:
        note = "  (own pattern)" if x["custom_pattern"] else ""
        print(f"  {x['category']:<{w}}  {x['out']}x{x['in']}  k={x['k']:<7d} "
              f"{x['layers']:3d} layers  {x['values']:>9,d} values{note}")
    total = sum(d["file_bytes"].values())
    print(f"total            {d['layers']} layers, {d['trainable_values']:,d} values, "
          f"{total:,d} bytes on disk")
    if d["extra"]:
        print(f"extra            {json.dumps(d['extra'])}")
    if "fit" in d:
        f = d["fit"]
        print(f"base             {f['base']}: {model_summary(f['base_model'])}")
        print(f"  fingerprint    {f['base_fingerprint']}")
        if f["fits"]:
            how = f", layer names mapped ({f['mapped']})" if f["mapped"] else ""
            print(f"fits this base   yes ({f['basis']} basis{how})")
        else:
            print(f"fits this base   no: {f['reason']}")
    return rc
