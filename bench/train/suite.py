"""Training suite: adapter-steps/s and peak memory for N adapters trained together in one mixed
batch (frod_rt) vs N sequential PEFT FRoD runs, on the small random Llama of the engine suite."""
from __future__ import annotations

import tempfile
from pathlib import Path

from tqdm import tqdm

from ..engine.model import describe, make_base
from ..plots import model_label, sweep_plot
from ..timing import summarize
from .contenders import CONTENDERS, batches

SETTINGS = {
    "full": dict(model="full", rows_per_adapter=4, seq_len=64, steps=8, sparse_rate=0.01,
                 adapters=[1, 4, 16, 32, 64, 128], max_adapters={"peft_seq": 64},
                 minilm=dict(steps=20, batch=16, seq_len=32)),
    "quick": dict(model="quick", rows_per_adapter=2, seq_len=32, steps=6, sparse_rate=0.01,
                  adapters=[1, 4, 16, 32], max_adapters={"peft_seq": 32},
                  minilm=dict(steps=8, batch=16, seq_len=32)),
    "tiny": dict(model="tiny", rows_per_adapter=2, seq_len=8, steps=3, sparse_rate=0.05,
                 adapters=[2], max_adapters={"peft_seq": 2}, minilm=None),
}


def run(results, device: str, mode: str, out_dir: Path) -> None:
    st = SETTINGS[mode]
    base = make_base(st["model"])
    results.doc["settings"].update(
        st, model=describe(base), optimizer="AdamW lr 1e-3", warmup_steps=1,
        metric="adapter_steps_per_s = N / (seconds to advance all N adapters by one step); "
               "repeats are the timed steps")
    cache = Path(tempfile.mkdtemp(prefix="frod-bench-train-"))
    vocab, rows = base.config.vocab_size, st["rows_per_adapter"]
    for N in tqdm(st["adapters"], desc="train", unit="adapter count"):
        data = batches(N, rows, st["seq_len"], vocab, st["steps"])
        params = {"adapters": N, "rows_per_adapter": rows, "seq_len": st["seq_len"]}
        for name, fn in CONTENDERS.items():
            cap = st["max_adapters"].get(name)
            if cap is not None and N > cap:
                results.skip("adapters", name, params, f"over this run's cap of {cap} adapters")
                continue
            out = fn(base, N, data, rows, st, device, cache)
            stats = summarize([N / t for t in out["step_s"]])
            mem = out["memory"]
            results.add("adapters", name, params, stats, metric="adapter_steps_per_s",
                        unit="adapter-steps/s", step_s_repeats=out["step_s"],
                        setup_s=out["setup_s"], peak_mem_mb=mem["peak_bytes"] / 2**20 if
                        mem["peak_bytes"] else None, mem_kind=mem["kind"],
                        start_mem_mb=mem["start_bytes"] / 2**20 if mem["start_bytes"] else None,
                        peak_growth_mb=(mem["peak_bytes"] - mem["start_bytes"]) / 2**20
                        if mem["peak_bytes"] and mem["start_bytes"] else None,
                        model_mb=out["model_bytes"] / 2**20, loss_first=out["loss_first"],
                        loss_last=out["loss_last"])
    _minilm_vs_lora(results, st["minilm"], device)
    _headline(results, st)
    plots(results, out_dir)


def plots(results, out_dir: Path) -> None:
    """The train suite's PNGs, from the measurements in ``results`` (also ``bench.replot``)."""
    st = results.doc["settings"]
    stem = results.stem()
    fixed = {"model": model_label(st.get("model")),
             "steps": st["steps"], "sparse_rate": st["sparse_rate"]}
    sweep_plot(results, "adapters", "adapters", out_dir / f"{stem}-adapter_steps_per_s.png",
               ylabel="adapter-steps/s (median, q1..q3)", logy=True, fixed=fixed,
               title="training throughput over adapters trained at once")
    sweep_plot(results, "adapters", "adapters", out_dir / f"{stem}-model_mb.png", y="model_mb",
               ylabel="model parameters + buffers (MiB)", logy=True, fixed=fixed,
               title="model memory over adapters trained at once")


def _minilm_vs_lora(results, mst: dict | None, device: str) -> None:
    """The ``minilm_lora`` sweep: FRoD vs LoRA step time on the real MiniLM (see minilm.py)."""
    from . import minilm
    params = dict(mst or {}, targets="attention + MLP", frod_rate=0.01, lora_r=5)
    why = ("the tiny harness check skips it" if mst is None else
           "CPU only" if device != "cpu" else minilm.available())
    if why:
        results.skip("minilm_lora", "frod_over_lora", params, why)
        return
    out = minilm.run_pair(mst["steps"], mst["batch"], mst["seq_len"])
    results.add("minilm_lora", "frod_over_lora", params, summarize(out["ratio"]),
                metric="step_time_ratio", unit="FRoD s / LoRA s",
                frod_step_s=out["frod_s"], lora_step_s=out["lora_s"],
                frod_params=out["frod_params"], lora_params=out["lora_params"])


def _headline(results, st: dict) -> None:
    h = {}
    for N in st["adapters"]:
        a = results.find("adapters", "frod_mixed", adapters=N)
        b = results.find("adapters", "peft_seq", adapters=N)
        if a and b:
            h[f"frod_mixed_vs_peft_seq_{N}_adapters"] = round(a["median"] / b["median"], 3)
            h[f"model_mb_frod_vs_peft_{N}_adapters"] = [round(a["model_mb"], 2),
                                                         round(b["model_mb"], 2)]
            if a.get("peak_growth_mb") is not None and b.get("peak_growth_mb") is not None:
                h[f"peak_growth_mb_frod_vs_peft_{N}_adapters"] = [round(a["peak_growth_mb"], 1),
                                                                   round(b["peak_growth_mb"], 1)]
    m = results.find("minilm_lora", "frod_over_lora")
    if m and "median" in m:
        h["minilm_frod_over_lora_step_time"] = round(m["median"], 3)
    results.doc["headline"] = h
