"""``frod-rt inspect ADAPTER``: an adapter's config, fingerprints and sizes.

Reads and validates the adapter directory (without the base model) and prints its name,
format version, base fingerprint, targets, sparse rate, seed, alpha, a content hash of the
weights file, and per category the shape, k, layer count and trainable values; then the
totals (values and bytes on disk)."""
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
            "base_fingerprint": c.base_fingerprint, "weights_sha256": _sha256(path / WEIGHTS_NAME),
            "target_modules": c.target_modules, "sparse_rate": c.sparse_rate, "seed": c.seed,
            "alpha": c.alpha, "dtype": ",".join(dtypes), "layers": len(a.layers),
            "trainable_values": values, "file_bytes": files, "categories": cats,
            "extra": c.extra}


def run(args) -> int:
    path = existing_dir(args.adapter, "adapter directory")
    d = describe(path)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"adapter          {d['name']}  ({d['path']})")
    print(f"format version   {d['format_version']}")
    print(f"base fingerprint {d['base_fingerprint']}")
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
    return 0
