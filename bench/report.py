"""Markdown summary of result files: ``python -m bench.report bench/results/*.json``;
``--readme bench/README.md`` replaces everything after its "## Latest figures" heading with the
summary of the given files and their plots (paths relative to the README).

Prints, per file, the machine line, the headline ratios and a table of medians (with IQR) per
sweep and contender, so bench/README.md quotes numbers straight from the JSON.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from .results import load


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def markdown(path: Path) -> str:
    doc = load(path)
    m = doc["machine"]
    lines = [f"### {doc['suite']} ({doc['device']}, {doc['settings'].get('mode')}) - `{path.name}`",
             "",
             f"{m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch']}, frod_rt "
             f"{m['frod_rt']}, commit `{(m['git_commit'] or '?')[:12]}`, {doc['created']}",
             "", "Headline: " + ", ".join(f"`{k}` = {v}" for k, v in doc["headline"].items()
                                          if k not in ("at", "goal", "goals")), ""]
    by = defaultdict(dict)
    keys: dict[str, list[str]] = {}
    done = [x for x in doc["measurements"] if "skipped" not in x]
    vary = defaultdict(set)
    for x in done:
        for k, v in x["params"].items():
            vary[(x["sweep"], k)].add(v)
    for x in done:
        shown = [k for k in x["params"] if len(vary[(x["sweep"], k)]) > 1] or list(x["params"])[:1]
        pk = ", ".join(f"{k}={x['params'][k]}" for k in shown)
        if pk not in keys.setdefault(x["sweep"], []):
            keys[x["sweep"]].append(pk)
        ratio = x.get("ratio_to_3gemm_floor", x.get("ratio_to_dense3"))   # older files: _dense3
        val = (f"{_fmt(ratio)}x" if ratio is not None else
               f"{_fmt(x['median'])} ±{_fmt(x['iqr'] / 2)}")
        by[(x["sweep"], pk)][x["contender"]] = val
    for sweep, pks in keys.items():
        names = sorted({c for pk in pks for c in by[(sweep, pk)]})
        unit = next(x["unit"] for x in doc["measurements"]
                    if "skipped" not in x and x["sweep"] == sweep)
        what = "time / 3-GEMM floor" if doc["suite"] == "layer" else f"median {unit} ±IQR/2"
        lines += [f"Sweep `{sweep}` ({what}):", "",
                  "| params | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for pk in pks:
            lines.append(f"| {pk} | " + " | ".join(by[(sweep, pk)].get(n, "-") for n in names)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def with_plots(path: Path, relative_to: Path) -> str:
    doc = load(path)
    rel = path.parent.resolve().relative_to(relative_to.resolve())
    imgs = "\n".join(f"![{p}]({rel / p})" for p in doc["plots"])
    return markdown(path) + "\n" + imgs + "\n"


HEADING = "## Latest figures"


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    readme = None
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if args[:1] == ["--readme"]:
        readme, args = Path(args[1]), args[2:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    if readme is None:
        for a in args:
            print(markdown(Path(a)))
        return 0
    text = readme.read_text()
    if HEADING not in text:
        raise ValueError(f"{readme}: no {HEADING!r} heading")
    head = text[:text.index(HEADING) + len(HEADING)]
    body = "\n\n".join(with_plots(Path(a), readme.parent) for a in args)
    readme.write_text(head + "\n\n" + NOTE + "\n\n" + body)
    return 0


NOTE = ("Taken with `python -m bench all --quick` on a **2-core CPU machine** (AMD EPYC, "
        "no GPU; a development machine, quiet during the run but not isolated): absolute numbers "
        "are low; ratios within one run are the meaningful part (layer ratios are medians of paired per-repeat ratios, "
        "engine speedups medians of per-round ratios). Rerun on a quiet machine or a GPU "
        "(`--device cuda`) for real figures. On CPU `peak_growth_mb` is close to 0 because the "
        "allocator reuses memory freed by earlier contenders; it is meaningful on CUDA only.")


if __name__ == "__main__":
    sys.exit(main())
