"""Times frod_rt's CUDA kernels against torch (cuBLAS) on the same shapes; JSON out.

For every case it first checks the result against a float32 torch computation (a benchmark of
a wrong kernel is worthless), then times with CUDA events: warm-up, then the median of
``--reps`` runs, rotating over 3 input sets so repeated runs do not just hit L2.

Reported per case: median ms, TFLOP/s (counted flops of the math, not of the kernel), GB/s
over the minimum bytes (each input read once, each output written once), and the same for the
torch baseline. Nothing is printed or written when no GPU is present.

    PYTHONPATH=python python bench/gpu/bench_kernels.py --out bench/results/gpu/kernels.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

import frod_rt
from frod_rt import _C
from frod_rt.ops import (cutlass_linear, fused_frod_linear, fused_weights, grouped_gemm,
                         replace_frod_linear, rotate_segments)

# (name, T rows, n in, out): MiniLM-size and LLaMA-7B-size layers, decode and prefill batches.
SHAPES = [
    ("minilm_prefill", 2048, 384, 384),
    ("llama_decode", 64, 4096, 4096),
    ("llama_prefill", 2048, 4096, 4096),
    ("llama_mlp_prefill", 2048, 4096, 11008),
]
ADAPTERS = 4
SPARSE_RATE = 0.01


def timeit(fn, inputs, reps: int, warmup: int = 5) -> float:
    """Median milliseconds of fn(*inputs[i % len(inputs)]) over `reps` runs (CUDA events)."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*inputs[i % len(inputs)])
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_layer(T, n, out, dtype, gen):
    k = round(n * n * SPARSE_RATE)
    dev = "cuda"
    f = dict(device=dev, dtype=torch.float32)
    V = torch.randn(n, n, **f) / n ** 0.5
    U = torch.randn(out, n, **f) / n ** 0.5
    l = 1 + 0.1 * torch.rand(n, **f)
    W = (U * l) @ V.T
    b = torch.randn(out, **f)
    dl = 0.1 * torch.randn(ADAPTERS, n, **f)
    s = 0.1 * torch.randn(ADAPTERS, k, **f)
    rows = torch.randint(0, n, (k,), device=dev)
    cols = ((rows + torch.randint(1, n, (k,), device=dev)) % n).to(torch.int32)
    rows = rows.to(torch.int32)
    bounds = torch.linspace(0, T, ADAPTERS + 1).round().to(torch.int32)
    indptr = bounds.to(dev)
    adapter = torch.arange(ADAPTERS, dtype=torch.int32, device=dev)
    q = lambda t: t.to(dtype)  # noqa: E731
    xs = [q(torch.randn(T, n, **f)) for _ in range(3)]
    return dict(W=q(W), b=q(b), V=q(V), U=q(U), l=q(l), dl=q(dl), s=q(s), rows=rows, cols=cols,
                indptr=indptr, adapter=adapter, xs=xs, k=k)


def record(results, case, shape, ms, flops, nbytes, ref_name=None, ref_ms=None, err=None):
    entry = {"case": case, "shape": shape, "median_ms": ms,
             "tflops": flops / ms / 1e9 if flops else None,
             "gbps": nbytes / ms / 1e6 if nbytes else None}
    if ref_name:
        entry.update({"baseline": ref_name, "baseline_median_ms": ref_ms,
                      "baseline_tflops": flops / ref_ms / 1e9 if flops else None,
                      "speedup_vs_baseline": ref_ms / ms})
    if err is not None:
        entry["rel_err_vs_fp32_torch"] = err
    results.append(entry)
    print(f"{case:28s} {shape['name']:18s} {ms:8.4f} ms"
          + (f" {entry['tflops']:7.1f} TFLOP/s" if flops else "")
          + (f" {entry['gbps']:7.0f} GB/s" if nbytes else "")
          + (f" | {ref_name} {ref_ms:8.4f} ms" if ref_name else ""), file=sys.stderr)


def bench_shape(name, T, n, out, dtype, reps, gen, results):
    L = make_layer(T, n, out, dtype, gen)
    esz = torch.finfo(dtype).bits // 8
    shape = {"name": name, "T": T, "n": n, "out": out, "k": L["k"], "adapters": ADAPTERS,
             "dtype": str(dtype).replace("torch.", "")}
    xs = [(x,) for x in L["xs"]]
    rot = (L["indptr"], L["adapter"], L["dl"], L["s"], L["rows"], L["cols"])

    # 1. dense GEMM: CUTLASS vs cuBLAS
    y = cutlass_linear(L["xs"][0], L["W"], L["b"])
    err = rel_err(y, F.linear(L["xs"][0].float(), L["W"].float(), L["b"].float()))
    ms = timeit(lambda x: cutlass_linear(x, L["W"], L["b"]), xs, reps)
    ref = timeit(lambda x: F.linear(x, L["W"], L["b"]), xs, reps)
    record(results, "gemm_cutlass", shape, ms, 2 * T * n * out, esz * (T * n + out * n + T * out),
           "torch.nn.functional.linear (cuBLAS)", ref, err)

    # 2. rotation forward / backward (memory-bound: Z in, H out, plus the pattern)
    zs = [(x @ L["V"],) for x in L["xs"]]
    pat_bytes = L["k"] * (4 + 4) + ADAPTERS * (n + L["k"]) * esz
    h = rotate_segments(zs[0][0], *rot)
    from frod_rt.ops import rotate_segments_reference
    err = rel_err(h, rotate_segments_reference(zs[0][0].float(), L["indptr"], L["adapter"],
                                               L["dl"].float(), L["s"].float(), L["rows"],
                                               L["cols"]))
    ms = timeit(lambda z: rotate_segments(z, *rot), zs, reps)
    ref = timeit(lambda z: torch.mul(z, 1.0), zs, reps)  # a copy: the bandwidth floor
    record(results, "rotate_forward", shape, ms, 2 * T * (n + L["k"]), 2 * esz * T * n + pat_bytes,
           "elementwise copy of Z (bandwidth floor)", ref, err)
    gh = torch.randn_like(zs[0][0])

    def bwd(z):
        return torch.ops.frod_rt.rotate_segments_backward(z, gh, *rot, True, True)
    ms = timeit(bwd, zs, reps)
    record(results, "rotate_backward", shape, ms, 4 * T * (n + L["k"]),
           3 * esz * T * n + pat_bytes + 4 * ADAPTERS * (n + L["k"]))

    # 3. the adapted linear: fused (1 GEMM with K = 2n after Z = XV) vs factored torch path
    vt, wu = fused_weights(L["W"], L["V"], L["U"])
    flops = 2 * T * n * n + 2 * T * 2 * n * out
    y = fused_frod_linear(L["xs"][0], vt, wu, L["b"], *rot)
    yref = frod_rt.ops.frod_linear(L["xs"][0].float(), L["W"].float(), L["b"].float(),
                                   L["V"].float(), L["U"].float(), L["indptr"], L["adapter"],
                                   L["dl"].float(), L["s"].float(), L["rows"], L["cols"])
    err = rel_err(y, yref)
    ms = timeit(lambda x: fused_frod_linear(x, vt, wu, L["b"], *rot), xs, reps)
    ref = timeit(lambda x: frod_rt.ops.frod_linear(x, L["W"], L["b"], L["V"], L["U"], *rot), xs,
                 reps)
    record(results, "fused_frod_linear", shape, ms, flops,
           esz * (T * n + n * n + 2 * n * out + T * out),
           "frod_linear (3 cuBLAS GEMMs + CUDA rotation)", ref, err)
    base = timeit(lambda x: F.linear(x, L["W"], L["b"]), xs, reps)
    results[-1]["base_linear_ms"] = base

    # 4. replace form (adapted rows only)
    y = replace_frod_linear(L["xs"][0], vt, L["U"], L["l"], L["b"], *rot)
    err = rel_err(y, yref)
    ms = timeit(lambda x: replace_frod_linear(x, vt, L["U"], L["l"], L["b"], *rot), xs, reps)
    record(results, "replace_frod_linear", shape, ms, 2 * T * n * n + 2 * T * n * out,
           esz * (T * n + n * n + n * out + T * out), "F.linear with W (base rows)", base, err)

    # 5. merged hot adapters: one grouped GEMM vs one cuBLAS GEMM per segment
    Wm = torch.stack([L["W"]] * ADAPTERS) + 0.01 * torch.randn(
        ADAPTERS, out, n, device="cuda", dtype=torch.float32).to(dtype)
    slot = torch.arange(ADAPTERS, dtype=torch.int32, device="cuda")
    bounds = L["indptr"].tolist()
    y = grouped_gemm(L["xs"][0], Wm, L["b"], L["indptr"], slot)
    yref = torch.cat([F.linear(L["xs"][0][bounds[g]:bounds[g + 1]].float(), Wm[g].float(),
                               L["b"].float()) for g in range(ADAPTERS)])
    err = rel_err(y, yref)

    def per_segment(x):
        return torch.cat([F.linear(x[bounds[g]:bounds[g + 1]], Wm[g], L["b"])
                          for g in range(ADAPTERS)])
    ms = timeit(lambda x: grouped_gemm(x, Wm, L["b"], L["indptr"], slot), xs, reps)
    ref = timeit(per_segment, xs, reps)
    record(results, "grouped_gemm_merged", shape, ms, 2 * T * n * out,
           esz * (T * n + ADAPTERS * out * n + T * out), "cuBLAS per segment + cat", ref, err)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    args = ap.parse_args()
    if not torch.cuda.is_available() or not frod_rt.cuda_kernels_built():
        print("bench_kernels: needs a CUDA GPU and a frod_rt build with CUDA kernels",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.manual_seed(0)
    results: list[dict] = []
    wanted = set(args.shapes.split(","))
    for name, T, n, out in SHAPES:
        if name in wanted:
            bench_shape(name, T, n, out, dtype, args.reps, gen, results)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "frod_gemm_backend": _C.gemm_backend(),
            "cuda_architectures": _C.cuda_architectures, "python": platform.python_version(),
            "reps": args.reps, "timing": "CUDA events, median, 3 rotating input sets"}
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "results": results}, fh, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
