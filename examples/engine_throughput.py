"""Engine throughput: tokens/s with 1, 8 and 64 adapters (requests spread uniformly over
them) against the base model alone, on one Llama-style model.

    python examples/engine_throughput.py [--device cpu] [--requests 64] [--max-tokens 32]
        [--hidden 256] [--layers 4] [--json out.json]

Every configuration serves the same prompts with the same batch limits; only the adapter of
each request changes. All adapters target every linear layer (q,k,v,o,gate,up,down) at a
sparse rate of 1%, so each adapted row runs the 'replace' form (Z = XV, rotation, H U^T).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from frod_rt import Engine, SamplingParams
from frod_rt.engine.toy import random_adapter, toy_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run(eng, prompts, names, sp, repeats):
    eng.generate(prompts[:4], adapters=names[:4], sampling=sp)          # warm-up
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = eng.generate(prompts, adapters=names, sampling=sp)
        dt = time.perf_counter() - t
        n = sum(len(r.token_ids) for r in res)
        best = max(best or 0.0, n / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--counts", default="0,1,8,64", help="adapter counts (0 = base model)")
    ap.add_argument("--merge-hot", action="store_true",
                    help="serve every adapter with a merged weight (opt-in 'merged' form)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    model = toy_llama(vocab_size=1024, hidden=args.hidden, layers=args.layers,
                      heads=max(1, args.hidden // 64), kv_heads=max(1, args.hidden // 128),
                      intermediate=args.hidden * 8 // 3, eos_token_id=None, std=0.05)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 1024, (args.prompt_len,), generator=g).tolist()
               for _ in range(args.requests)]
    sp = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    out = {"device": args.device, "requests": args.requests, "max_tokens": args.max_tokens,
           "prompt_len": args.prompt_len, "hidden": args.hidden, "layers": args.layers,
           "threads": torch.get_num_threads(), "merge_hot": args.merge_hot,
           "tokens_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        need = max(counts)
        for i in range(need):
            random_adapter(model, tmp / f"a{i}", TARGETS, sparse_rate=0.01, seed=i,
                           cache_dir=tmp / "cache")
        eng = Engine.load(model, adapters=[tmp / f"a{i}" for i in range(need)],
                          device=args.device, cache_dir=tmp / "cache",
                          max_num_seqs=args.requests, device_adapter_capacity=max(need, 1),
                          merge_hot=[f"a{i}" for i in range(need)] if args.merge_hot else ())
        for c in counts:
            names = [None] * args.requests if c == 0 else \
                [f"a{i % c}" for i in range(args.requests)]
            tps = run(eng, prompts, names, sp, args.repeats)
            label = "base" if c == 0 else f"{c} adapters"
            out["tokens_per_s"][label] = tps
            print(f"{label:>12}: {tps:8.1f} tokens/s")
    base = out["tokens_per_s"].get("base")
    if base:
        for k, v in out["tokens_per_s"].items():
            print(f"{k:>12}: {v / base:5.2f}x of base")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
