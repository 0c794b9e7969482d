"""Decode attention microbench (issue 13): the engine's paged decode kernel against what it
replaced, per layer and step.

Shapes of the medium engine model's decode: 64 sequences, 12 query / 4 kv heads, head size 64,
KV blocks of 16 tokens handed out in random order, float32; contexts 48 (the bench workload),
256 and 1,024 tokens. Contenders, sampled round-robin:
  * ``gather_sdpa``: the blocks of every sequence gathered into a padded (B, L) context, then one
    masked ``scaled_dot_product_attention`` call (the engine's decode path before the kernel;
    still its path off CPU);
  * ``paged_kernel``: ``frod_rt.ops.paged_decode_attention`` (C++), straight from the blocks.

Writes ``<out>/decode_attention-cpu-<stamp>.json`` (bench/results.py schema) and prints one line
per context length. Usage::

    PYTHONPATH=python python -m bench.engine.decode_attention [--threads 2] [--repeats 7]
        [--contexts 48 256 1024]
"""
from __future__ import annotations

import argparse

import frod_rt  # noqa: F401  (OpenMP wait defaults before torch)
import torch
import torch.nn.functional as F

B, HQ, HKV, D, BS = 64, 12, 4, 64, 16
CONTEXTS = (48, 256, 1024)


def problem(ctx: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    nb = -(-ctx // BS)
    NB = B * nb + 7
    kc = torch.randn(NB, BS, HKV, D, generator=g)
    vc = torch.randn(NB, BS, HKV, D, generator=g)
    bt = torch.randperm(NB, generator=g)[:B * nb].view(B, nb)
    q = torch.randn(B, HQ, D, generator=g)
    ctx_lens = torch.full((B,), ctx, dtype=torch.long)
    mask = (torch.arange(nb * BS)[None, :] < ctx_lens[:, None])[:, None, None, :]
    return dict(q=q, kc=kc, vc=vc, bt=bt, ctx=ctx_lens, mask=mask)


def gather_sdpa(p: dict, scale: float) -> torch.Tensor:
    nb = p["bt"].shape[1]
    ks = p["kc"][p["bt"]].reshape(B, nb * BS, HKV, D).transpose(1, 2)
    vs = p["vc"][p["bt"]].reshape(B, nb * BS, HKV, D).transpose(1, 2)
    return F.scaled_dot_product_attention(p["q"][:, :, None, :], ks, vs, attn_mask=p["mask"],
                                          scale=scale, enable_gqa=True)[:, :, 0, :]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS),
                    help="context lengths in tokens")
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from frod_rt.ops import paged_decode_attention

    from bench.machine import machine_info
    from bench.results import Results
    from bench.timing import auto_inner, measure_interleaved
    res = Results("decode_attention", "cpu", False, machine_info("cpu"),
                  {"sequences": B, "q_heads": HQ, "kv_heads": HKV, "head_size": D,
                   "block_size": BS, "dtype": "float32", "threads": a.threads,
                   "contexts": a.contexts, "repeats": a.repeats})
    scale = D ** -0.5
    for ctx in a.contexts:
        p = problem(ctx)
        fns = {"gather_sdpa": lambda: gather_sdpa(p, scale),
               "paged_kernel": lambda: paged_decode_attention(p["q"], p["kc"], p["vc"], p["bt"],
                                                              p["ctx"], scale)}
        err = float((fns["paged_kernel"]() - fns["gather_sdpa"]()).abs().max())
        inners = {k: auto_inner(f, target_s=0.05, cap=200) for k, f in fns.items()}
        st = measure_interleaved(fns, inners, warmup=2, repeats=a.repeats)
        for name, s in st.items():
            res.add("context", name, {"context": ctx}, s, metric="time", unit="s",
                    inner=inners[name], **({"max_abs_diff_vs_gather_sdpa": err}
                                           if name == "paged_kernel" else {}))
        speed = st["gather_sdpa"]["median"] / st["paged_kernel"]["median"]
        res.doc["headline"][f"paged_kernel_speedup_ctx_{ctx}"] = round(speed, 3)
        line = (f"context {ctx:5d}: gather+SDPA {st['gather_sdpa']['median'] * 1e3:7.3f} ms | "
                f"paged kernel {st['paged_kernel']['median'] * 1e3:7.3f} ms | x{speed:.2f} "
                f"(max |diff| {err:.1e})")
        print(line)
        res.doc["notes"].append(line)
    print(f"wrote {res.save(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
