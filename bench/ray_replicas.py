"""Throughput of 1 vs 2 engine replicas on Ray Serve (``frod_rt.server.ray_app``).

    PYTHONPATH=python python -m bench.ray_replicas [--requests 48] [--max-tokens 32]
        [--repeats 3] [--hidden 256] [--layers 4] [--out bench/results]

A local Ray (loopback, no dashboard, ``num_cpus`` = the machine's cores) serves a random
toy Llama with 4 adapters (q,k,v,o,gate,up,down) through the router; each replica has 1
torch thread and reserves 1 CPU. One round = ``--requests`` concurrent greedy completions
(``ignore_eos``, exactly ``--max-tokens`` each) spread evenly over the base and the 4
adapters, sent with httpx from this process; tokens/s = generated tokens / wall time of the
round. The JSON records ``machine.cpu_cores``: with 2 cores, 2 replicas of 1 thread share
them with Ray's proxy, the router and the load generator, so the ratio's ceiling is below 2.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")    # Ray on loopback only

import frod_rt  # noqa: E402,F401  (OpenMP wait default before torch)

from .machine import machine_info  # noqa: E402
from .results import Results  # noqa: E402
from .timing import summarize  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = "the quick brown fox jumps over the lazy dog once upon a time".split()


def _model(root: Path, hidden: int, layers: int) -> tuple[Path, dict]:
    from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=hidden, layers=layers,
                      intermediate=int(hidden * 8 / 3), heads=4, kv_heads=2, seed=1)
    base = save_toy_model(model, tok, root / "benchbase")
    adapters = {}
    for i in range(4):
        random_adapter(model, root / f"ad{i}", TARGETS, sparse_rate=0.01, seed=i,
                       cache_dir=root / "cache")
        adapters[f"ad{i}"] = str(root / f"ad{i}")
    return base, adapters


async def _round(url: str, models: list[str], n: int, max_tokens: int) -> tuple[float, int]:
    import httpx
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        async def one(i):
            prompt = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 + i % 8))
            r = await c.post("/v1/completions", json={
                "model": models[i % len(models)], "prompt": prompt, "temperature": 0,
                "max_tokens": max_tokens, "ignore_eos": True})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]
        t0 = time.perf_counter()
        toks = await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0, sum(toks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    import ray
    from ray import serve

    from frod_rt.server import free_port
    from frod_rt.server.ray_app import build_app, run_app

    machine = machine_info("cpu")
    settings = {k: getattr(args, k) for k in ("requests", "max_tokens", "repeats", "hidden",
                                                "layers", "replicas")}
    settings.update(threads_per_replica=1, cpus_per_replica=1, adapters=4,
                    ray=ray.__version__, ray_num_cpus=os.cpu_count(),
                    load="concurrent httpx clients in the benchmark process, evenly over "
                         "base + 4 adapters")
    res = Results("ray_replicas", "cpu", False, machine, settings)
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = _model(Path(tmp), args.hidden, args.layers)
        models = ["benchbase"] + list(adapters)
        try:
            port = free_port()
            for n in args.replicas:
                app = build_app(base, adapters, replicas=n,
                                engine_options={"cache_dir": str(Path(tmp) / "cache")},
                                threads_per_replica=1, replica_cpus=1,
                                adapters_per_replica=4)
                run_app(app, host="127.0.0.1", port=port, num_cpus=os.cpu_count())
                url = f"http://127.0.0.1:{port}"
                asyncio.run(_round(url, models, 2 * len(models), 2))       # warm-up
                rates = []
                for _ in range(args.repeats):
                    wall, toks = asyncio.run(_round(url, models, args.requests,
                                                    args.max_tokens))
                    rates.append(toks / wall)
                stats = summarize(rates)
                res.add("replicas", f"ray_{n}_replica{'s' if n > 1 else ''}",
                        {"replicas": n}, stats, metric="tokens_per_s", unit="tokens/s")
                medians[n] = stats["median"]
                print(f"{n} replica(s): {stats['median']:.0f} tokens/s "
                      f"(repeats {[round(r) for r in rates]})", flush=True)
                serve.delete("frod_rt")
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    if 1 in medians and 2 in medians:
        res.doc["headline"] = {"ratio_2_over_1": medians[2] / medians[1],
                               "cpu_cores": machine["cpu_cores"]}
        res.doc["notes"].append(
            f"2 vs 1 replicas: {medians[2] / medians[1]:.2f}x on {machine['cpu_cores']} "
            "cores, shared with Ray's proxy, the router and the load generator")
    res.doc["notes"].append("load average (1, 5, 15 min) at the end: "
                            + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    path = res.save(args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
