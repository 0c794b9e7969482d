"""Redraw a result file's plots with the current plotting code:
``python -m bench.replot bench/results/layer-cpu-*.json``.

Reads each JSON (:func:`bench.results.load`), renames fields of files written before issue 18
to the current names (layer suite: ``ratio_to_floor`` -> ``ratio_to_base_gemm``,
``ratio_to_dense3`` -> ``ratio_to_3gemm_floor``, headline ``*_vs_floor`` / ``*_vs_dense3``
likewise), rewrites the JSON and redraws its PNGs next to it through the suite's own
``plots(results, out_dir)`` (the code a new run uses). Measurements are never changed.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from .results import Results, load, validate

RENAMED = {"ratio_to_floor": "ratio_to_base_gemm", "ratio_to_dense3": "ratio_to_3gemm_floor"}
HEADLINE_SUFFIXES = {"_vs_floor": "_vs_base_gemm", "_vs_dense3": "_vs_3gemm_floor"}
GOAL = ("frod_factored_vs_3gemm_floor <= 1.15 (the 3 dense GEMMs X W^T, X V, H U^T without "
        "the rotation; reported, never asserted)")


def migrate(doc: dict) -> dict:
    """``doc`` with pre-issue-18 field names renamed (in place; returned)."""
    for m in doc["measurements"]:
        for old, new in RENAMED.items():
            if old in m:
                m[new] = m.pop(old)
    h = doc.get("headline", {})
    for key in list(h):
        for old, new in HEADLINE_SUFFIXES.items():
            if key.endswith(old):
                h[key[:-len(old)] + new] = h.pop(key)
    if doc["suite"] == "layer" and "goal" in h:
        h["goal"] = GOAL
    return doc


def replot(path: Path) -> list[Path]:
    """Migrate and rewrite the JSON at ``path``; redraw its plots. Returns the PNG paths."""
    doc = migrate(load(path))
    old_plots = list(doc["plots"])
    doc["plots"] = []
    res = Results.from_doc(doc)
    importlib.import_module(f"bench.{doc['suite']}.suite").plots(res, path.parent)
    validate(doc)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    for name in set(old_plots) - set(doc["plots"]):          # plots no longer drawn
        (path.parent / name).unlink(missing_ok=True)
    return [path.parent / p for p in doc["plots"]]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    for a in args:
        for png in replot(Path(a)):
            print(f"[bench.replot] {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
