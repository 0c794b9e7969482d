"""Step-interleaved engine ratios on the medium model (for a machine whose load swings).

Every engine gets the same 64 x (32 + 32) workload queued at once; then the engines advance one
``step()`` each in turn until all are done, so a load burst hits all of them within the same few
hundred milliseconds. Each engine's time is the sum of its own step times; ``vs_base`` = the base
engine's time / its time (its throughput relative to the engine serving the base model).

    PYTHONPATH=python python -m bench.engine.interleaved [--repeats 2] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import frod_rt  # noqa: F401  (OpenMP wait defaults before torch)
import torch

from ..machine import machine_info
from . import frod_contenders as fc
from .model import MEDIUM_TARGETS, describe, make_base
from .workload import make_workload


def _queue(eng, wl):
    from frod_rt.engine import SamplingParams
    sp = SamplingParams(max_tokens=wl.max_tokens, temperature=0.0, ignore_eos=True)
    for p, a in zip(wl.prompts, wl.adapters):
        eng.add_request(p, adapter=None if a is None else f"a{a}", sampling=sp)


def run_interleaved(engines: dict, wls: dict) -> dict[str, float]:
    """Seconds spent in each engine's own steps while all advance in turn."""
    spent = {k: 0.0 for k in engines}
    for k, eng in engines.items():
        _queue(eng, wls[k])
    live = dict(engines)
    with torch.inference_mode():
        while live:
            for k in list(live):
                t = time.perf_counter()
                live[k].step()
                spent[k] += time.perf_counter() - t
                if not live[k].has_unfinished():
                    del live[k]
    for eng in engines.values():
        eng._seqs.clear()
    return spent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    args = ap.parse_args(argv)
    base = make_base("medium")
    tmp = Path(tempfile.mkdtemp(prefix="frod-interleaved-"))
    n_req, plen, ntok = 64, 32, 32
    V = base.config.vocab_size
    kw = dict(num_requests=n_req, prompt_len=plen, max_tokens=ntok, vocab=V)
    engines, wls = {}, {}
    engines["base"], _ = fc.build_engine(base, {}, "cpu", 64, plen + ntok, tmp / "c")
    wls["base"] = make_workload(num_adapters=1, popularity="uniform", base_only=True, **kw)
    for mode in ("per_role", "shared_input"):
        for N in (1, 32):
            paths, _ = fc.write_frod_adapters(base, N, 0.01, tmp / f"{mode}{N}",
                                              targets=MEDIUM_TARGETS, category_mode=mode)
            engines[f"{mode}_{N}"], _ = fc.build_engine(base, paths, "cpu", 64, plen + ntok,
                                                        tmp / "c")
            wls[f"{mode}_{N}"] = make_workload(num_adapters=N, popularity="uniform", **kw)
            if N == 1:
                engines[f"{mode}_1_auto"], _ = fc.build_engine(
                    base, paths, "cpu", 64, plen + ntok, tmp / "c", auto_merge=True)
                wls[f"{mode}_1_auto"] = wls[f"{mode}_1"]
    small = {k: type(w)(w.prompts[:8], w.adapters[:8], w.num_adapters, w.popularity, 4)
             for k, w in wls.items()}
    run_interleaved(engines, small)                                   # warm-up
    rounds = [run_interleaved(engines, wls) for _ in range(args.repeats)]
    tokens = n_req * ntok
    out = {"what": __doc__.splitlines()[0], "command": "python -m bench.engine.interleaved "
           + " ".join(argv or []), "model": describe(base, MEDIUM_TARGETS),
           "workload": f"{n_req} requests x ({plen} prompt + {ntok} new), uniform adapters",
           "machine": machine_info("cpu"), "rounds": rounds, "tokens": tokens, "results": {}}
    for k in engines:
        out["results"][k] = {
            "tokens_per_s": [tokens / r[k] for r in rounds],
            "vs_base": statistics.median(r["base"] / r[k] for r in rounds)}
        print(f"{k:24s} vs_base {out['results'][k]['vs_base']:.3f}  tokens/s "
              f"{[round(x, 1) for x in out['results'][k]['tokens_per_s']]}")
    path = Path(args.out) / f"engine-interleaved-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
