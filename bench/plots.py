"""PNG plots of one suite's measurements: one line per contender over a swept parameter."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def sweep_plot(results, sweep: str, x: str, path: Path, *, y: str = "median",
               ylabel: str | None = None, title: str | None = None, logx: bool = True,
               logy: bool = False, where: dict | None = None, scale: float = 1.0,
               contenders: list[str] | None = None, hline: float | None = None) -> Path | None:
    """Plot ``y`` (a field of each measurement, e.g. ``median`` or ``ratio_to_floor``)
    against ``params[x]`` for every contender of ``sweep``; the bars span q1..q3 when ``y`` is
    ``median``. ``where`` filters on other params. Returns the path, or None if nothing to plot.
    """
    rows = [m for m in results.measurements if m["sweep"] == sweep and "skipped" not in m
            and y in m and all(m["params"].get(k) == v for k, v in (where or {}).items())]
    if not rows:
        return None
    names = contenders or sorted({m["contender"] for m in rows})
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in names:
        pts = sorted((m["params"][x], m) for m in rows if m["contender"] == name)
        if not pts:
            continue
        xs = [p for p, _ in pts]
        ys = [m[y] * scale for _, m in pts]
        if y == "median":
            lo = [(m["median"] - m["q1"]) * scale for _, m in pts]
            hi = [(m["q3"] - m["median"]) * scale for _, m in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3, label=name)
        else:
            ax.plot(xs, ys, marker="o", ms=4, label=name)
    if hline is not None:
        ax.axhline(hline, color="gray", lw=0.8, ls="--")
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{results.doc['suite']}: {sweep} ({results.doc['device']})", fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    results.doc["plots"].append(path.name)
    return path
