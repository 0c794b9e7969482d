"""Engine suite: generation tokens/s and per-request latency (p50/p99) with 1..1024 distinct
adapters (uniform and Zipf popularity) for the frod_rt Engine and the alternatives, all on the
same small random Llama and the same requests (see ``peft_contenders`` / ``frod_contenders``)."""
from __future__ import annotations

import gc
import statistics
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..plots import sweep_plot
from ..timing import summarize
from ..train.memory import module_bytes
from . import frod_contenders as fc
from . import peft_contenders as pc
from .hf_serve import chunks, serve_batches
from .model import clone, describe, make_base
from .workload import make_workload

SETTINGS = {
    "full": dict(model="full", requests=1024, prompt_len=32, max_tokens=32, max_batch=256,
                 sparse_rate=0.01, adapters=[1, 4, 16, 32, 64, 256, 1024],
                 popularity=["uniform", "zipf"], repeats=3,
                 max_adapters={"peft_frod": 256, "merged": 256, "peft_lora": 1024}),
    "quick": dict(model="quick", requests=256, prompt_len=16, max_tokens=8, max_batch=256,
                  sparse_rate=0.01, adapters=[1, 8, 32, 256, 1024],
                  popularity=["uniform", "zipf"], repeats=2,
                  max_adapters={"peft_frod": 32, "merged": 32, "peft_lora": 32},
                  peft_adapters=[1, 32]),
    "tiny": dict(model="tiny", requests=8, prompt_len=4, max_tokens=2, max_batch=8,
                 sparse_rate=0.05, adapters=[2], popularity=["uniform", "zipf"], repeats=1,
                 max_adapters={"peft_frod": 2, "merged": 2, "peft_lora": 2}),
}
WARMUP_REQUESTS = 8
HOT = 4          # frod_engine_hot: the engine's opt-in merge_hot for the 4 most popular adapters


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _timed(serve, wl, repeats: int) -> tuple[dict, dict]:
    """Warm up on a few requests, then ``repeats`` timed runs. Returns (tokens/s stats, extras)."""
    small = type(wl)(wl.prompts[:WARMUP_REQUESTS], wl.adapters[:WARMUP_REQUESTS],
                     wl.num_adapters, wl.popularity, wl.max_tokens)
    serve(small)
    runs = [serve(wl) for _ in range(repeats)]
    tps = [r["tokens"] / r["wall_s"] for r in runs]
    p50 = [_pct(r["latencies_s"], 0.50) for r in runs]
    p99 = [_pct(r["latencies_s"], 0.99) for r in runs]
    extra = {"latency_p50_s": statistics.median(p50), "latency_p99_s": statistics.median(p99),
             "latency_p50_repeats": p50, "latency_p99_repeats": p99,
             "wall_s": statistics.median(r["wall_s"] for r in runs),
             "tokens": runs[0]["tokens"]}
    return summarize(tps), extra


def run(results, device: str, mode: str, out_dir: Path) -> None:
    st = SETTINGS[mode]
    base = make_base(st["model"])
    results.doc["settings"].update(st, model=describe(base), lora_rank=pc.lora_rank(
        base, st["sparse_rate"]), latency="seconds from t=0 (all requests queued at once) "
        "until the request's last token")
    rep, mb, V = st["repeats"], st["max_batch"], base.config.vocab_size
    wl_kw = dict(num_requests=st["requests"], prompt_len=st["prompt_len"],
                 max_tokens=st["max_tokens"], vocab=V)
    tmp = Path(tempfile.mkdtemp(prefix="frod-bench-engine-"))
    max_len = st["prompt_len"] + st["max_tokens"]

    # the base model alone: frod_rt Engine and plain HF generate
    wl = make_workload(num_adapters=1, popularity="uniform", base_only=True, **wl_kw)
    eng, setup = fc.build_engine(base, {}, device, mb, max_len, tmp / "cache")
    stats, ex = _timed(lambda w: fc.serve_engine(eng, w, device), wl, rep)
    results.add("base", "frod_base", {"adapters": 0}, stats, metric="tokens_per_s",
                unit="tokens/s", setup_s=setup, **ex)
    del eng
    hf = clone(base).to(device)
    stats, ex = _timed(lambda w: serve_batches(((None, part, {}) for part in chunks(
        list(range(len(w.prompts))), mb)), hf, w, device), wl, rep)
    results.add("base", "hf_base", {"adapters": 0}, stats, metric="tokens_per_s",
                unit="tokens/s", **ex)
    del hf

    for N in tqdm(st["adapters"], desc="engine", unit="adapter count"):
        wls = {pop: make_workload(num_adapters=N, popularity=pop, **wl_kw)
               for pop in st["popularity"] if not (pop == "zipf" and N == 1)}
        paths, wsec = fc.write_frod_adapters(base, N, st["sparse_rate"], tmp / f"n{N}")
        eng, setup = fc.build_engine(base, paths, device, mb, max_len, tmp / "cache")
        for pop, wl in wls.items():
            params = {"adapters": N, "requests": len(wl.prompts), "distinct": wl.distinct}
            stats, ex = _timed(lambda w: fc.serve_engine(eng, w, device), wl, rep)
            results.add(pop, "frod_engine", params, stats, metric="tokens_per_s",
                        unit="tokens/s", setup_s=setup + wsec, **ex)
        del eng
        if "zipf" in wls and N >= HOT:
            hot = [f"a{i}" for i in range(HOT)]       # Zipf ranks adapter 0 most popular
            eng, setup = fc.build_engine(base, paths, device, mb, max_len, tmp / "cache",
                                         merge_hot=hot)
            wl = wls["zipf"]
            params = {"adapters": N, "requests": len(wl.prompts), "distinct": wl.distinct}
            stats, ex = _timed(lambda w: fc.serve_engine(eng, w, device), wl, rep)
            results.add("zipf", "frod_engine_hot", params, stats, metric="tokens_per_s",
                        unit="tokens/s", setup_s=setup + wsec, merge_hot=hot, **ex)
            del eng
        gc.collect()
        _peft_side(results, base, N, wls, st, device)
    _headline(results, st)
    stem = results.stem()
    base_tps = results.find("base", "frod_base")
    for pop in st["popularity"]:
        sweep_plot(results, pop, "adapters", out_dir / f"{stem}-{pop}-tokens_per_s.png",
                   ylabel="generated tokens/s (median, q1..q3)", logy=True,
                   title=f"engine, {pop} popularity ({device}); dashed: frod_rt base model alone",
                   hline=base_tps["median"] if base_tps else None)
        sweep_plot(results, pop, "adapters", out_dir / f"{stem}-{pop}-latency_p99.png",
                   y="latency_p99_s", ylabel="p99 request latency (s)", logy=True)


def _peft_side(results, base, N: int, wls: dict, st: dict, device: str) -> None:
    caps, rep, mb = st["max_adapters"], st["repeats"], st["max_batch"]

    def skip_all(name, why):
        for pop, wl in wls.items():
            results.skip(pop, name, {"adapters": N, "requests": len(wl.prompts),
                                     "distinct": wl.distinct}, why)
    only = st.get("peft_adapters")
    if only is not None and N not in only:
        for name in ("peft_frod", "merged", "peft_lora"):
            skip_all(name, f"this run measures the PEFT contenders at {only} adapters only")
        return
    if N <= min(caps["peft_frod"], caps["merged"]):
        model, setup = pc.build_peft_frod(base, N, st["sparse_rate"])
        model.to(device)
        mb_frod = module_bytes(model) / 2**20
        for name, serve in (("peft_frod", pc.serve_peft_frod), ("merged", pc.serve_merged)):
            for pop, wl in wls.items():
                params = {"adapters": N, "requests": len(wl.prompts), "distinct": wl.distinct}
                stats, ex = _timed(lambda w: serve(model, w, device, mb), wl, rep)
                results.add(pop, name, params, stats, metric="tokens_per_s", unit="tokens/s",
                            setup_s=setup, model_mb=mb_frod, **ex)
        del model
        gc.collect()
    else:
        why = (f"over this run's cap of {caps['peft_frod']} adapters (PEFT FRoD keeps a copy of U "
               "per adapter and re-decomposes the base on every add_adapter)")
        skip_all("peft_frod", why)
        skip_all("merged", why)
    if N <= caps["peft_lora"]:
        rank = results.doc["settings"]["lora_rank"]
        model, setup = pc.build_peft_lora(base, N, rank)
        model.to(device)
        mb_lora = module_bytes(model) / 2**20
        for pop, wl in wls.items():
            params = {"adapters": N, "requests": len(wl.prompts), "distinct": wl.distinct}
            stats, ex = _timed(lambda w: pc.serve_peft_lora(model, w, device, mb), wl, rep)
            results.add(pop, "peft_lora", params, stats, metric="tokens_per_s", unit="tokens/s",
                        setup_s=setup, lora_rank=rank, model_mb=mb_lora, **ex)
        del model
        gc.collect()
    else:
        skip_all("peft_lora", f"over this run's cap of {caps['peft_lora']} adapters")


def _headline(results, st: dict) -> None:
    h = {}
    ns = st["adapters"]
    one = results.find("uniform", "frod_engine", adapters=ns[0])
    top = results.find("uniform", "frod_engine", adapters=ns[-1])
    base = results.find("base", "frod_base")
    if one and top:
        h[f"frod_engine_tokens_per_s_{ns[-1]}_vs_{ns[0]}_adapters"] = round(
            top["median"] / one["median"], 4)
    if one and base:
        h[f"frod_engine_{ns[0]}_adapter_vs_base"] = round(one["median"] / base["median"], 4)
    mid = 32 if 32 in ns else ns[len(ns) // 2]
    for pop in st["popularity"]:
        ours = results.find(pop, "frod_engine", adapters=mid)
        for other in ("peft_frod", "peft_lora", "merged"):
            theirs = results.find(pop, other, adapters=mid)
            if ours and theirs:
                h[f"frod_engine_vs_{other}_{pop}_{mid}_adapters"] = round(
                    ours["median"] / theirs["median"], 3)
    h["goals"] = ("1024-adapter tokens/s >= 90% of 1-adapter; >= 10x PEFT FRoD "
                  "(reported, never asserted)")
    results.doc["headline"] = h
