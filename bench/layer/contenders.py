"""The layer-suite contenders. Each builder takes a :class:`LayerProblem` and returns a
zero-argument callable computing ``Y (T, out)`` for all rows; work a server would do once
(storing ``l + dl``, materialising hot weights) happens in the builder, untimed.

    base_gemm       X W^T alone: the single base GEMM (``ratio_to_base_gemm``)
    dense3          X W^T + (X V) U^T: the three dense GEMMs of the factored form, no rotation:
                    the 3-GEMM floor (``ratio_to_3gemm_floor``; the README's 1.15x goal)
    frod_factored   frod_rt.ops.frod_linear (3 shared GEMMs + per-segment rotation kernel)
    frod_replace    (Z*(l+dl) + S Z) U^T via frod_rt.ops.rotate_segments: 2 GEMMs, all rows adapted
    torch_loop      the factored math in plain torch, one index_add per adapter segment
                    (what ops/reference.py does)
    torch_gather    the same, vectorised over rows: Z*dl[ids], index_add of Z[:, cols]*s[ids]
    merged_loop     what PEFT effectively does: per adapter W' = W + U(diag(dl)+S)V^T,
                    then X_a W'^T (the merge is recomputed every call)
    frod_merged     frod_rt's own materialised form (frod_rt.method.delta.delta_weight):
                    per adapter W' = W + dW built each call, then X_a W'^T
    merged_cached   W'_a precomputed for every adapter (A weight copies), one GEMM per segment
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from frod_rt.ops import frod_linear, rotate_segments

from .problem import LayerProblem

MERGED_CACHE_LIMIT_BYTES = 2 << 30


class Skip(Exception):
    """Raised by a builder whose contender cannot run this configuration (reason = message)."""


def _segments(p: LayerProblem) -> list[tuple[int, int, int]]:
    ip = p.seg_indptr.tolist()
    return [(ip[g], ip[g + 1], a) for g, a in enumerate(p.seg_adapter.tolist())
            if a >= 0 and ip[g + 1] > ip[g]]


def _dense_rotation(p: LayerProblem, a: int, diag: torch.Tensor) -> torch.Tensor:
    M = torch.diag(diag)
    M[p.rows.long(), p.cols.long()] += p.s[a]
    return M


def base_gemm(p: LayerProblem) -> Callable:
    return lambda: F.linear(p.x, p.W)


def dense3(p: LayerProblem) -> Callable:
    def fn():
        z = p.x @ p.V
        return F.linear(p.x, p.W).addmm_(z, p.U.t())
    return fn


def _need_kernels(p: LayerProblem) -> None:
    if p.x.is_cuda:
        import frod_rt
        if not frod_rt.cuda_kernels_built():
            raise Skip("frod_rt was built without its CUDA kernels (FROD_CUDA=AUTO tools/dev_build.sh)")


def frod_factored(p: LayerProblem) -> Callable:
    _need_kernels(p)
    return lambda: frod_linear(p.x, p.W, None, p.V, p.U, p.seg_indptr, p.seg_adapter, p.dl, p.s,
                               p.rows, p.cols)


def frod_replace(p: LayerProblem) -> Callable:
    _need_kernels(p)
    dlp = (p.dl + p.l).contiguous()   # stored once per adapter by a server

    def fn():
        h = rotate_segments(p.x @ p.V, p.seg_indptr, p.seg_adapter, dlp, p.s, p.rows, p.cols)
        return h @ p.U.t()
    return fn


def torch_loop(p: LayerProblem) -> Callable:
    segs = _segments(p)
    r, c = p.rows.long(), p.cols.long()

    def fn():
        z = p.x @ p.V
        h = torch.zeros_like(z)
        for t0, t1, a in segs:
            zs = z[t0:t1]
            h[t0:t1] = (zs * p.dl[a]).index_add_(1, r, zs.index_select(1, c) * p.s[a])
        return F.linear(p.x, p.W).addmm_(h, p.U.t())
    return fn


def torch_gather(p: LayerProblem) -> Callable:
    r, c, ids = p.rows.long(), p.cols.long(), p.ids
    if p.x.shape[0] * r.numel() > (1 << 27):
        raise Skip(f"needs a T x k = {p.x.shape[0]} x {r.numel()} temporary")

    def fn():
        z = p.x @ p.V
        h = (z * p.dl[ids]).index_add_(1, r, z.index_select(1, c) * p.s[ids])
        return F.linear(p.x, p.W).addmm_(h, p.U.t())
    return fn


def merged_loop(p: LayerProblem) -> Callable:
    segs = _segments(p)

    def fn():
        y = torch.empty(p.x.shape[0], p.W.shape[0], dtype=p.x.dtype, device=p.x.device)
        for t0, t1, a in segs:
            Wa = torch.addmm(p.W, p.U @ _dense_rotation(p, a, p.dl[a]), p.V.t())
            torch.mm(p.x[t0:t1], Wa.t(), out=y[t0:t1])
        return y
    return fn


def frod_merged(p: LayerProblem) -> Callable:
    try:
        from frod_rt.method.delta import delta_weight
    except ImportError as e:
        raise Skip(f"frod_rt.method.dense_path not available ({e})") from e
    segs = _segments(p)

    def fn():
        y = torch.empty(p.x.shape[0], p.W.shape[0], dtype=p.x.dtype, device=p.x.device)
        for t0, t1, a in segs:
            Wa = p.W + delta_weight(p.U, p.V, p.dl[a], p.s[a], p.rows, p.cols)
            torch.mm(p.x[t0:t1], Wa.t(), out=y[t0:t1])
        return y
    return fn


def merged_cached(p: LayerProblem) -> Callable:
    A = p.num_adapters
    need = A * p.W.numel() * p.W.element_size()
    if need > MERGED_CACHE_LIMIT_BYTES:
        raise Skip(f"needs {need / 2**30:.1f} GiB of merged weights (limit "
                   f"{MERGED_CACHE_LIMIT_BYTES / 2**30:.0f} GiB)")
    Wm = torch.stack([torch.addmm(p.W, p.U @ _dense_rotation(p, a, p.dl[a]), p.V.t())
                      for a in range(A)])
    segs = _segments(p)

    def fn():
        y = torch.empty(p.x.shape[0], p.W.shape[0], dtype=p.x.dtype, device=p.x.device)
        for t0, t1, a in segs:
            torch.mm(p.x[t0:t1], Wm[a].t(), out=y[t0:t1])
        return y
    return fn


CONTENDERS: dict[str, Callable[[LayerProblem], Callable]] = {
    "base_gemm": base_gemm,
    "dense3": dense3,
    "frod_factored": frod_factored,
    "frod_replace": frod_replace,
    "torch_loop": torch_loop,
    "torch_gather": torch_gather,
    "merged_loop": merged_loop,
    "frod_merged": frod_merged,
    "merged_cached": merged_cached,
}
# contenders whose output is the adapted layer (checked against frod_factored)
ADAPTED = ("frod_factored", "frod_replace", "torch_loop", "torch_gather", "merged_loop",
           "frod_merged", "merged_cached")
