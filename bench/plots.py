"""PNG plots of one suite's measurements: one line per contender over a swept parameter.

Readability rules (issue 18): the title names the suite, the sweep, the device and every
parameter held fixed in the plotted rows; the legend sits outside the axes, right of the
data; frod_rt's contenders (names starting with ``frod``) are drawn thick and solid in strong
colours, the others thin and dashed in muted ones; a log axis is used only when it spans at
least two distinct positive values (a single point never sits on a log axis).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")        # frod_rt: strong
OTHERS = ("#7f7f7f", "#8c564b", "#bcbd22", "#17becf", "#e377c2", "#aec7e8", "#c49c94")


def is_ours(contender: str) -> bool:
    """frod_rt's own contenders (emphasised in plots)."""
    return contender.startswith("frod")


def fixed_params(rows: list[dict], x: str) -> dict:
    """Parameters other than ``x`` that hold one value over ``rows`` (for the title)."""
    keys = {k for m in rows for k in m["params"] if k != x}
    out = {}
    for k in sorted(keys):
        vals = {repr(m["params"].get(k)) for m in rows}
        if len(vals) == 1:
            out[k] = rows[0]["params"].get(k)
    return out


def model_label(model) -> str:
    """"Llama hidden 128, 2 layers" from a suite's ``settings.model`` (``describe`` dict)."""
    if not isinstance(model, dict):
        return str(model)
    return (f"{str(model.get('arch', 'model')).split(' ')[0]} hidden {model.get('hidden_size')}, "
            f"{model.get('layers')} layers")


def _log_ok(values) -> bool:
    pos = {v for v in values if isinstance(v, (int, float)) and v > 0}
    return len(pos) >= 2 and len(pos) == len(set(values))


def sweep_plot(results, sweep: str, x: str, path: Path, **kw) -> Path | None:
    """Draw :func:`sweep_figure` and save it as ``path`` (PNG; its name is appended to the
    run's ``plots``). Returns the path, or None if there was nothing to plot."""
    fig = sweep_figure(results, sweep, x, **kw)
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    results.doc["plots"].append(path.name)
    return path


def sweep_figure(results, sweep: str, x: str, *, y: str = "median",
               ylabel: str | None = None, title: str | None = None, logx: bool = True,
               logy: bool = False, where: dict | None = None, scale: float = 1.0,
               contenders: list[str] | None = None, hline: float | None = None,
               hline_label: str | None = None, fixed: dict | None = None):
    """Plot ``y`` (a field of each measurement, e.g. ``median`` or ``ratio_to_base_gemm``)
    against ``params[x]`` for every contender of ``sweep``; the bars span q1..q3 when ``y`` is
    ``median``. ``where`` filters on other params. ``title`` is the plot's subject; the
    suite, device and fixed parameters (those of the plotted rows that do not vary, plus
    ``fixed``: settings of the run such as the model size) are appended. Returns the path, or
    None if nothing to plot; else the matplotlib figure (one axes)."""
    rows = [m for m in results.measurements if m["sweep"] == sweep and "skipped" not in m
            and y in m and all(m["params"].get(k) == v for k, v in (where or {}).items())]
    if not rows:
        return None
    names = contenders or sorted({m["contender"] for m in rows},
                                 key=lambda n: (not is_ours(n), n))
    fig, ax = plt.subplots(figsize=(8.4, 4.4), dpi=110)
    n_ours = n_other = 0
    all_x, all_y = [], []
    for name in names:
        pts = sorted((m["params"][x], m) for m in rows if m["contender"] == name)
        if not pts:
            continue
        xs = [p for p, _ in pts]
        ys = [m[y] * scale for _, m in pts]
        all_x += xs
        all_y += ys
        if is_ours(name):
            style = dict(color=OURS[n_ours % len(OURS)], lw=2.4, ls="-", marker="o", ms=5,
                         zorder=3)
            n_ours += 1
        else:
            style = dict(color=OTHERS[n_other % len(OTHERS)], lw=1.0, ls="--", marker=".",
                         ms=5, alpha=0.8, zorder=2)
            n_other += 1
        if y == "median":
            lo = [(m["median"] - m["q1"]) * scale for _, m in pts]
            hi = [(m["q3"] - m["median"]) * scale for _, m in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=name, **style)
        else:
            ax.plot(xs, ys, label=name, **style)
    if hline is not None:
        ax.axhline(hline, color="black", lw=0.8, ls=":", label=hline_label)
        all_y.append(hline)
    if logx and _log_ok(sorted(set(all_x))):
        ax.set_xscale("log", base=2)
    if len(set(all_x)) == 1:                      # one point per line: show it as a category
        ax.set_xticks(sorted(set(all_x)))
    if logy and len({v for v in all_y if v > 0}) >= 2 and min(all_y) > 0:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    doc = results.doc
    fixed = dict(fixed or {}, **fixed_params(rows, x))
    fixed_txt = ", ".join(f"{k}={v}" for k, v in fixed.items())
    dtype = doc.get("settings", {}).get("dtype")
    head = title or f"{doc['suite']}: {y} over {x}"
    sub = f"{doc['suite']} suite, {doc['device']}, {doc['settings'].get('mode', '')} run" + \
        (f", {dtype}" if dtype else "") + (f"; fixed: {fixed_txt}" if fixed_txt else "")
    ax.set_title(f"{head}\n{sub}", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              title="thick: frod_rt", title_fontsize=7)
    return fig
