"""Engine suite: generation tokens/s and per-request latency (p50/p99) with 1..1024 distinct
adapters (uniform and Zipf popularity) for the frod_rt Engine and the alternatives, all on the
same small random Llama and the same requests (see ``peft_contenders`` / ``frod_contenders``)."""
from __future__ import annotations

import gc
import statistics
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..plots import model_label, sweep_plot
from ..timing import summarize
from ..train.memory import module_bytes
from . import frod_contenders as fc
from . import peft_contenders as pc
from .hf_serve import chunks, serve_batches
from .model import MEDIUM_TARGETS, TARGETS, clone, describe, make_base
from .workload import make_workload

SETTINGS = {
    # issue 13's model: ~50M parameters, 64 requests x (32 + 32), q,k,v,o,gate,up adapted; the
    # engine serving the base runs in every round so adapted/base is a per-round ratio
    "medium": dict(model="medium", requests=64, prompt_len=32, max_tokens=32, max_batch=64,
                   sparse_rate=0.01, adapters=[1, 8, 32], popularity=["uniform"], repeats=5,
                   max_adapters={"peft_frod": 0, "merged": 0, "peft_lora": 32},
                   peft_adapters=[32], targets=MEDIUM_TARGETS, base_every_round=True,
                   category_modes=["per_role", "shared_input"], auto_merge_at=[1]),
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


def _timed_all(servers: dict, wl, repeats: int) -> dict[str, tuple[dict, dict]]:
    """Warm every server up on a few requests, then ``repeats`` rounds in which every server
    serves the whole workload once (round-robin, so load from other processes hits all alike).
    Returns {name: (tokens/s stats, extras)}; extras carry p50/p99 latency and, per contender,
    ``frod_engine_speedup`` = median over rounds of frod_engine tokens/s / its tokens/s."""
    small = type(wl)(wl.prompts[:WARMUP_REQUESTS], wl.adapters[:WARMUP_REQUESTS],
                     wl.num_adapters, wl.popularity, wl.max_tokens)
    for serve in servers.values():
        serve(small)
    runs: dict[str, list] = {k: [] for k in servers}
    for _ in range(repeats):
        for name, serve in servers.items():
            runs[name].append(serve(wl))
    tps = {k: [r["tokens"] / r["wall_s"] for r in v] for k, v in runs.items()}
    out = {}
    for name, rs in runs.items():
        p50 = [_pct(r["latencies_s"], 0.50) for r in rs]
        p99 = [_pct(r["latencies_s"], 0.99) for r in rs]
        extra = {"latency_p50_s": statistics.median(p50), "latency_p99_s": statistics.median(p99),
                 "latency_p50_repeats": p50, "latency_p99_repeats": p99,
                 "wall_s": statistics.median(r["wall_s"] for r in rs), "tokens": rs[0]["tokens"]}
        ref = tps.get("frod_engine") or tps.get("frod_base")
        if ref is not None and name not in ("frod_engine", "frod_base"):
            extra["frod_engine_speedup"] = statistics.median(a / b for a, b in zip(ref, tps[name]))
        if "frod_base" in tps:
            extra["vs_frod_base"] = statistics.median(
                a / b for a, b in zip(tps[name], tps["frod_base"]))
        out[name] = (summarize(tps[name]), extra)
    return out


def run(results, device: str, mode: str, out_dir: Path) -> None:
    st = SETTINGS[mode]
    base = make_base(st["model"])
    targets = st.get("targets", TARGETS)
    results.doc["settings"].update(st, model=describe(base, targets), lora_rank=pc.lora_rank(
        base, st["sparse_rate"], targets), latency="seconds from t=0 (all requests queued at once) "
        "until the request's last token", rounds="contenders of one configuration are run "
        "round-robin, once per round; frod_engine_speedup is the median per-round ratio")
    rep, mb, V = st["repeats"], st["max_batch"], base.config.vocab_size
    wl_kw = dict(num_requests=st["requests"], prompt_len=st["prompt_len"],
                 max_tokens=st["max_tokens"], vocab=V)
    tmp = Path(tempfile.mkdtemp(prefix="frod-bench-engine-"))
    max_len = st["prompt_len"] + st["max_tokens"]
    tiny_setup: dict[str, float] = {}

    # the base model alone: frod_rt Engine and plain HF generate
    wl = make_workload(num_adapters=1, popularity="uniform", base_only=True, **wl_kw)
    eng, tiny_setup["frod_base"] = fc.build_engine(base, {}, device, mb, max_len, tmp / "cache")
    hf = clone(base).to(device)
    servers = {"frod_base": lambda w: fc.serve_engine(eng, w, device),
               "hf_base": lambda w: serve_batches(((None, part, {}) for part in chunks(
                   list(range(len(w.prompts))), mb)), hf, w, device)}
    for name, (stats, ex) in _timed_all(servers, wl, rep).items():
        results.add("base", name, {"adapters": 0}, stats, metric="tokens_per_s",
                    unit="tokens/s", setup_s=tiny_setup.get(name, 0.0), **ex)
    base_server = None
    if st.get("base_every_round"):
        base_wl = wl
        base_server = lambda w: fc.serve_engine(eng, type(w)(  # noqa: E731
            base_wl.prompts[:len(w.prompts)], [None] * len(w.prompts), 0, "none", w.max_tokens),
            device)
    else:
        del eng
    del hf, servers

    for N in tqdm(st["adapters"], desc="engine", unit="adapter count"):
        wls = {pop: make_workload(num_adapters=N, popularity=pop, **wl_kw)
               for pop in st["popularity"] if not (pop == "zipf" and N == 1)}
        _one_count(results, base, N, wls, st, device, tmp, max_len, base_server)
        gc.collect()
    _headline(results, st)
    plots(results, out_dir)


def plots(results, out_dir: Path) -> None:
    """The engine suite's PNGs, from the measurements in ``results`` (also ``bench.replot``)."""
    st = results.doc["settings"]
    stem = results.stem()
    base_tps = results.find("base", "frod_base")
    fixed = {"model": model_label(st.get("model")),
             "requests": st["requests"], "prompt": st["prompt_len"],
             "generated": st["max_tokens"], "sparse_rate": st["sparse_rate"]}
    for pop in st["popularity"]:
        sweep_plot(results, pop, "adapters", out_dir / f"{stem}-{pop}-tokens_per_s.png",
                   ylabel="generated tokens/s (median, q1..q3)", logy=True,
                   title=f"engine throughput over resident adapters, {pop} popularity",
                   hline=base_tps["median"] if base_tps else None,
                   hline_label="frod_rt, base model alone", fixed=fixed)
        sweep_plot(results, pop, "adapters", out_dir / f"{stem}-{pop}-latency_p99.png",
                   y="latency_p99_s", ylabel="p99 request latency (s)", logy=True,
                   title=f"engine p99 latency over resident adapters, {pop} popularity",
                   fixed=fixed)
        if st.get("base_every_round"):
            sweep_plot(results, pop, "adapters", out_dir / f"{stem}-{pop}-vs_base.png",
                       y="vs_frod_base", ylabel="tokens/s / engine base tokens/s (per round)",
                       title=f"engine, {pop}: throughput relative to the engine serving the base",
                       hline=1.0, fixed=fixed)


def _one_count(results, base, N: int, wls: dict, st: dict, device: str, tmp: Path,
               max_len: int, base_server=None) -> None:
    """Build every contender for N adapters, then measure each popularity round-robin
    (with ``base_server``, the engine serving the base model takes part in every round)."""
    mb, caps = st["max_batch"], st["max_adapters"]
    targets = st.get("targets", TARGETS)
    servers, setup, sizes, skipped = {}, {}, {}, {}
    if base_server is not None:
        servers["frod_base"] = base_server
        setup["frod_base"] = 0.0
    paths, wsec = fc.write_frod_adapters(base, N, st["sparse_rate"], tmp / f"n{N}",
                                         targets=targets)
    eng, t = fc.build_engine(base, paths, device, mb, max_len, tmp / "cache")
    servers["frod_engine"] = lambda w, e=eng: fc.serve_engine(e, w, device)
    setup["frod_engine"] = t + wsec
    if N in st.get("auto_merge_at", ()):     # with uniform traffic over N > 1 it never merges
        eng_a, t = fc.build_engine(base, paths, device, mb, max_len, tmp / "cache",
                                   auto_merge=True)
        servers["frod_engine_auto"] = lambda w, e=eng_a: fc.serve_engine(e, w, device)
        setup["frod_engine_auto"] = t + wsec
    if "shared_input" in st.get("category_modes", ()):
        spaths, wsec = fc.write_frod_adapters(base, N, st["sparse_rate"], tmp / f"n{N}-shared",
                                              targets=targets, category_mode="shared_input")
        eng_s, t = fc.build_engine(base, spaths, device, mb, max_len, tmp / "cache")
        servers["frod_engine_shared"] = lambda w, e=eng_s: fc.serve_engine(e, w, device)
        setup["frod_engine_shared"] = t + wsec
    hot = [f"a{i}" for i in range(min(HOT, N))]       # Zipf ranks adapter 0 most popular
    if "zipf" in wls:
        eng_hot, t = fc.build_engine(base, paths, device, mb, max_len, tmp / "cache",
                                     merge_hot=hot)
        servers["frod_engine_hot"] = lambda w, e=eng_hot: fc.serve_engine(e, w, device)
        setup["frod_engine_hot"] = t + wsec
    only = st.get("peft_adapters")
    if only is not None and N not in only:
        for name in ("peft_frod", "merged", "peft_lora"):
            skipped[name] = f"this run measures the PEFT contenders at {only} adapters only"
    else:
        if N <= min(caps["peft_frod"], caps["merged"]):
            frod_model, t = pc.build_peft_frod(base, N, st["sparse_rate"], targets=targets)
            frod_model.to(device)
            sizes["peft_frod"] = sizes["merged"] = module_bytes(frod_model) / 2**20
            setup["peft_frod"] = setup["merged"] = t
            servers["peft_frod"] = lambda w, m=frod_model: pc.serve_peft_frod(m, w, device, mb)
            servers["merged"] = lambda w, m=frod_model: pc.serve_merged(m, w, device, mb)
        else:
            skipped["peft_frod"] = skipped["merged"] = (
                f"over this run's cap of {caps['peft_frod']} adapters (PEFT FRoD keeps a copy of "
                "U per adapter and re-decomposes the base on every add_adapter)")
        if N <= caps["peft_lora"]:
            rank = results.doc["settings"]["lora_rank"]
            lora_model, t = pc.build_peft_lora(base, N, rank, targets=targets)
            lora_model.to(device)
            sizes["peft_lora"] = module_bytes(lora_model) / 2**20
            setup["peft_lora"] = t
            servers["peft_lora"] = lambda w, m=lora_model: pc.serve_peft_lora(m, w, device, mb)
        else:
            skipped["peft_lora"] = f"over this run's cap of {caps['peft_lora']} adapters"
    for pop, wl in wls.items():
        params = {"adapters": N, "requests": len(wl.prompts), "distinct": wl.distinct}
        here = {k: v for k, v in servers.items() if k != "frod_engine_hot" or pop == "zipf"}
        for name, (stats, ex) in _timed_all(here, wl, st["repeats"]).items():
            extra = dict(ex, setup_s=setup[name])
            if name in sizes:
                extra["model_mb"] = sizes[name]
            if name == "frod_engine_hot":
                extra["merge_hot"] = hot
            results.add(pop, name, params, stats, metric="tokens_per_s", unit="tokens/s",
                        **extra)
        for name, why in skipped.items():
            results.skip(pop, name, params, why)


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
    hf = results.find("base", "hf_base")
    if hf and base:
        h["frod_base_vs_hf_generate_base"] = round(base["median"] / hf["median"], 4)
    mid = 32 if 32 in ns else ns[len(ns) // 2]
    for pop in st["popularity"]:
        for other in ("peft_frod", "peft_lora", "merged", "frod_engine_hot"):
            theirs = results.find(pop, other, adapters=mid)
            if theirs and "frod_engine_speedup" in theirs:
                h[f"frod_engine_vs_{other}_{pop}_{mid}_adapters"] = round(
                    theirs["frod_engine_speedup"], 3)
    for pop in st["popularity"]:             # the default category mode against PEFT LoRA
        ours = results.find(pop, "frod_engine_shared", adapters=mid)
        theirs = results.find(pop, "peft_lora", adapters=mid)
        if ours and theirs and ours.get("repeats") and theirs.get("repeats"):
            h[f"frod_engine_shared_vs_peft_lora_{pop}_{mid}_adapters"] = round(statistics.median(
                a / b for a, b in zip(ours["repeats"], theirs["repeats"])), 3)
    if st.get("base_every_round"):
        for name in ("frod_engine", "frod_engine_shared", "frod_engine_auto"):
            for N in ns:
                m = results.find("uniform", name, adapters=N)
                if m and "vs_frod_base" in m:
                    h[f"{name}_uniform_{N}_vs_base_per_round"] = round(m["vs_frod_base"], 4)
        h["goals"] = ("issue 13: 32 adapters uniform >= 0.80x engine base; one adapter >= 0.95x; "
                      "engine base >= 1.0x HF generate; >= 2.2x PEFT LoRA mixed batches "
                      "(reported, never asserted)")
    else:
        h["goals"] = ("1024-adapter tokens/s >= 90% of 1-adapter; >= 10x PEFT FRoD "
                      "(reported, never asserted)")
    results.doc["headline"] = h
