"""The benchmark harness stays runnable: a tiny configuration of every suite runs in seconds,
writes schema-valid JSON and its PNG plots. (Speeds are never asserted here.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import results as R
from bench.run import parse_args
from bench.timing import measure, summarize

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """``python -m bench all --tiny`` once, through the real entry point (its own process, so
    the benchmark's OpenMP settings apply). Returns {suite: json path}."""
    pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)
    import frod_rt        # the child imports the same frod_rt as this process (installed or in-tree)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(frod_rt.__file__).parent.parent),
                                                     str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    paths = {}
    for suite in ("layer", "engine", "train"):
        found = sorted(out.glob(f"{suite}-cpu-*.json"))
        assert len(found) == 1, f"{suite}: expected one JSON in {out}, got {found}"
        assert f"wrote {found[0]}" in proc.stdout
        paths[suite] = found[0]
    return paths


def _check_run(path, suite):
    doc = R.load(path)                                    # schema check
    assert doc["suite"] == suite and doc["device"] == "cpu" and doc["quick"] is True
    assert doc["settings"]["mode"] == "tiny"
    assert path.name.startswith(f"{suite}-cpu-") and path.suffix == ".json"
    measured = [m for m in doc["measurements"] if "skipped" not in m]
    assert measured, "no measurement taken"
    for m in measured:
        assert len(m["repeats"]) >= 1 and m["median"] > 0
    assert doc["plots"], "no plot written"
    for name in doc["plots"]:
        png = path.parent / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["headline"]
    return doc, measured


def test_layer_suite_tiny(tiny_runs):
    doc, measured = _check_run(tiny_runs["layer"], "layer")
    names = {m["contender"] for m in measured}
    assert {"base_gemm", "dense3", "frod_factored", "frod_replace", "torch_loop",
            "merged_loop"} <= names
    assert all("rel_err_vs_reference" in m for m in measured
               if m["contender"] not in ("base_gemm", "dense3"))
    for m in measured:
        assert m["unit"] == "s" and m["ratio_to_base_gemm"] > 0 and m["ratio_to_3gemm_floor"] > 0
        if m["contender"] == "base_gemm":
            assert m["ratio_to_base_gemm"] == pytest.approx(1.0)
        if m["contender"] == "dense3":
            assert m["ratio_to_3gemm_floor"] == pytest.approx(1.0)
        if "rel_err_vs_reference" in m:        # every adapted contender computed the same Y
            assert m["rel_err_vs_reference"] < 1e-4
    assert {"frod_factored_vs_base_gemm", "frod_factored_vs_3gemm_floor"} <= set(doc["headline"])
    assert "3gemm_floor" in doc["headline"]["goal"]


def test_engine_suite_tiny(tiny_runs):
    doc, measured = _check_run(tiny_runs["engine"], "engine")
    names = {m["contender"] for m in measured}
    assert {"frod_base", "hf_base", "frod_engine", "frod_engine_hot", "peft_frod", "peft_lora",
            "merged"} <= names
    for m in measured:
        assert m["unit"] == "tokens/s"
        assert 0 < m["latency_p50_s"] <= m["latency_p99_s"]
    for m in measured:
        if m["contender"] in ("peft_frod", "peft_lora", "merged", "hf_base"):
            assert m["frod_engine_speedup"] > 0
    sweeps = {m["sweep"] for m in measured}
    assert {"base", "uniform", "zipf"} <= sweeps


def test_train_suite_tiny(tiny_runs):
    doc, measured = _check_run(tiny_runs["train"], "train")
    assert {m["contender"] for m in measured} == {"frod_mixed", "peft_seq"}
    for m in measured:
        assert m["model_mb"] > 0 and torch.isfinite(torch.tensor(m["loss_last"]))


def test_summarize_and_measure():
    s = summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["q1"] == 2.0 and s["q3"] == 4.0 and s["iqr"] == 2.0
    assert s["repeats"] == [3.0, 1.0, 2.0, 4.0, 5.0]
    calls = []
    m = measure(lambda: calls.append(1), warmup=2, repeats=3, inner=4)
    assert len(calls) == 2 + 3 * 4 and len(m["repeats"]) == 3
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        measure(lambda: None, repeats=0)


def test_validate_rejects_bad_documents(tmp_path):
    res = R.Results("layer", "cpu", True, {"cpu_model": "x", "cpu_cores": 1, "torch": "t",
                                           "frod_rt": "f", "git_commit": None}, {})
    res.add("s", "c", {"a": 1}, summarize([1.0, 2.0]), metric="seconds", unit="s")
    res.skip("s", "d", {"a": 1}, "too big")
    path = res.save(tmp_path)
    doc = json.loads(path.read_text())
    R.validate(doc)
    for broken in (dict(doc, schema="other"), {k: v for k, v in doc.items() if k != "machine"},
                   dict(doc, measurements=[dict(doc["measurements"][0], repeats=[])]),
                   dict(doc, measurements=[dict(doc["measurements"][0], q1=9.0)])):
        with pytest.raises(ValueError):
            R.validate(broken)


def test_cli_arguments():
    a = parse_args(["layer", "--quick", "--device", "cpu", "--out", "x"])
    assert a.suite == "layer" and a.quick and a.out == "x"
    with pytest.raises(SystemExit):
        parse_args(["nosuchsuite"])
    with pytest.raises(SystemExit):
        parse_args(["layer", "--quick", "--tiny"])


def _doc_with(points):
    res = R.Results("layer", "cpu", True, {"cpu_model": "x", "cpu_cores": 1, "torch": "t",
                                           "frod_rt": "f", "git_commit": None},
                    {"mode": "quick", "dtype": "float32"})
    for contender, params, value in points:
        res.add("adapters", contender, params, summarize([value, value * 1.1]),
                metric="seconds", unit="s", ratio_to_3gemm_floor=value)
    return res


def test_plots_are_readable():
    """Titles give the fixed parameters, the legend sits right of the axes, frod_rt's lines
    are thicker than the others, and a single x value never sits on a log axis."""
    from bench.plots import sweep_figure
    pts = [(c, {"adapters": a, "tokens": 1024, "hidden": 256}, v * a)
           for c, v in (("frod_factored", 1.1), ("merged_loop", 3.0), ("dense3", 1.0))
           for a in (1, 4, 16)]
    fig = sweep_figure(_doc_with(pts), "adapters", "adapters", y="ratio_to_3gemm_floor",
                       logy=True, title="ratio")
    ax = fig.axes[0]
    assert "tokens=1024" in ax.get_title() and "hidden=256" in ax.get_title()
    assert "adapters=" not in ax.get_title()                        # the swept one is not fixed
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1                   # off the data
    widths = {line.get_label(): line.get_linewidth() for line in ax.get_lines()
              if not line.get_label().startswith("_")}
    assert widths["frod_factored"] > widths["merged_loop"] and \
        widths["frod_factored"] > widths["dense3"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    one = sweep_figure(_doc_with([("frod_factored", {"adapters": 2}, 1.2),
                                  ("dense3", {"adapters": 2}, 1.0)]),
                       "adapters", "adapters", y="ratio_to_3gemm_floor", logy=True)
    assert one.axes[0].get_xscale() == "linear"
    import matplotlib.pyplot as plt
    plt.close("all")


def test_replot_renames_old_fields_and_redraws(tiny_runs, tmp_path):
    """``python -m bench.replot`` brings a file written before the renaming to the current
    field names and redraws its plots with the current code."""
    import shutil
    from bench.replot import main as replot_main
    src = tiny_runs["layer"]
    doc = json.loads(src.read_text())
    for m in doc["measurements"]:               # as the files of 2026-11-23 named them
        if "ratio_to_base_gemm" in m:
            m["ratio_to_floor"] = m.pop("ratio_to_base_gemm")
            m["ratio_to_dense3"] = m.pop("ratio_to_3gemm_floor")
    doc["headline"] = {k.replace("_vs_base_gemm", "_vs_floor").replace("_vs_3gemm_floor",
                                                                        "_vs_dense3"): v
                       for k, v in doc["headline"].items()}
    old = tmp_path / src.name
    old.write_text(json.dumps(doc))
    assert replot_main([str(old)]) == 0
    new = R.load(old)
    measured = [m for m in new["measurements"] if "skipped" not in m]
    assert all("ratio_to_3gemm_floor" in m and "ratio_to_floor" not in m for m in measured)
    assert "frod_factored_vs_3gemm_floor" in new["headline"]
    assert new["plots"] and all((tmp_path / p).is_file() for p in new["plots"])
    shutil.rmtree(tmp_path)


def test_decode_attention_bench_writes_its_json(tmp_path):
    """``python -m bench.engine.decode_attention`` (in-process, one short context) records both
    contenders and a kernel that agrees with gather + SDPA."""
    from bench.engine import decode_attention
    assert decode_attention.main(["--threads", "1", "--repeats", "1", "--contexts", "20",
                                  "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("decode_attention-cpu-*.json")
    doc = json.loads(path.read_text())
    names = {m["contender"] for m in doc["measurements"]}
    assert names == {"gather_sdpa", "paged_kernel"}
    kernel = next(m for m in doc["measurements"] if m["contender"] == "paged_kernel")
    assert kernel["max_abs_diff_vs_gather_sdpa"] < 1e-5
    assert doc["headline"]["paged_kernel_speedup_ctx_20"] > 0
