"""Mixed-adapter FRoD linear layer on random data.

One batch of T rows spread over A adapters (plus base-only rows) goes through
``frod_rt.ops.frod_linear``; the script prints the max error against a dense float64
per-row reference, and the time against (a) the dense floor, three plain GEMMs of the same
shapes, and (b) the per-adapter merged-weights loop (W'_a = W + U(diag(dl_a)+S_a)V^T, then
X_a W'_a^T per adapter), which is what serving without frod_rt amounts to.

    python examples/linear_demo.py [--tokens 512] [--hidden 768] [--adapters 32] [--rate 0.01]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import frod_rt
from frod_rt.ops import frod_linear, frod_linear_reference


def timeit(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs after two warm-ups (seconds)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_layer(T, n, out, A, rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = round(n * n * rate)
    W = torch.randn(out, n, generator=g) / n ** 0.5
    b = torch.randn(out, generator=g)
    V = torch.randn(n, n, generator=g) / n ** 0.5
    U = torch.randn(out, n, generator=g) / n ** 0.5
    dl = torch.randn(A, n, generator=g) * 0.1
    s = torch.randn(A, k, generator=g) * 0.1
    flat = torch.randperm(n * (n - 1), generator=g)[:k]
    r, c = flat // (n - 1), flat % (n - 1)
    c = c + (c >= r).long()
    order = torch.argsort(r * n + c)
    rows, cols = r[order].int(), c[order].int()
    x = torch.randn(T, n, generator=g)
    # Rows cycle over the adapters in contiguous segments; every 8th segment is base-only.
    per = T // (A + A // 8)
    ids = []
    for i in range(T):
        seg = min(i // max(per, 1), A + A // 8 - 1)
        ids.append(-1 if seg >= A else seg)
    seg_indptr, seg_adapter = frod_rt.ops.segments_from_ids(torch.tensor(ids), A)
    return dict(x=x, W=W, b=b, V=V, U=U, dl=dl, s=s, rows=rows, cols=cols,
                seg_indptr=seg_indptr, seg_adapter=seg_adapter)


def merged_loop(L):
    """Per adapter: materialise W'_a, then run its rows through one GEMM."""
    x, W, b, V, U = L["x"], L["W"], L["b"], L["V"], L["U"]
    y = torch.empty(x.shape[0], W.shape[0])
    ip, sa = L["seg_indptr"].tolist(), L["seg_adapter"].tolist()
    for g, a in enumerate(sa):
        lo, hi = ip[g], ip[g + 1]
        if a < 0:
            Wa = W
        else:
            M = torch.diag(L["dl"][a])
            M[L["rows"].long(), L["cols"].long()] += L["s"][a]
            Wa = W + U @ M @ V.T
        torch.addmm(b, x[lo:hi], Wa.T, out=y[lo:hi])
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--adapters", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    T, n, A = args.tokens, args.hidden, args.adapters
    L = make_layer(T, n, n, A, args.rate)
    seg = (L["seg_indptr"], L["seg_adapter"], L["dl"], L["s"], L["rows"], L["cols"])
    print(f"frod_linear: T={T} rows, n={n}, {A} adapters + base rows, "
          f"k={L['s'].shape[1]} sparse values/adapter, {torch.get_num_threads()} threads")

    with torch.no_grad():
        y = frod_linear(L["x"], L["W"], L["b"], L["V"], L["U"], *seg)
        d = {key: (v.double() if v.is_floating_point() else v) for key, v in L.items()}
        ref = frod_linear_reference(d["x"], d["W"], d["b"], d["V"], d["U"], d["seg_indptr"],
                                    d["seg_adapter"], d["dl"], d["s"], d["rows"], d["cols"])
        err = (y.double() - ref).abs().max().item()
        print(f"max |error| vs float64 dense reference: {err:.2e} (max |y| {ref.abs().max():.2f})")

        x, W, V, U = L["x"], L["W"], L["V"], L["U"]
        h = torch.randn(T, n)
        t_frod = timeit(lambda: frod_linear(x, W, L["b"], V, U, *seg), args.repeats)
        # The same three dense products frod_linear runs, without the rotation.
        t_floor = timeit(lambda: (F.linear(x, W), torch.matmul(x, V), F.linear(h, U)),
                         args.repeats)
        t_merged = timeit(lambda: merged_loop(L), max(3, args.repeats // 5))
    print(f"frod_linear          {t_frod * 1e3:8.2f} ms")
    print(f"dense floor (3 GEMM) {t_floor * 1e3:8.2f} ms   frod_linear / floor  = {t_frod / t_floor:.3f}x")
    print(f"merged-weights loop  {t_merged * 1e3:8.2f} ms   merged / frod_linear = {t_merged / t_frod:.1f}x")


if __name__ == "__main__":
    main()
