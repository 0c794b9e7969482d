"""frod_linear (x W^T + b + rotate(x V) U^T) against the per-row dense float64 reference."""
from __future__ import annotations

import pytest
import torch

from frod_problems import TOL, make_problem, rel_err
from frod_rt.ops import frod_linear, frod_linear_reference, segments_from_ids


def _layer(n, out, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, n, generator=g, dtype=torch.float64) / n ** 0.5
    b = torch.randn(out, generator=g, dtype=torch.float64)
    V = torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5
    U = torch.randn(out, n, generator=g, dtype=torch.float64) / n ** 0.5
    return [t.to(dtype) for t in (W, b, V, U)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_adapter", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_dense_reference(dtype, per_adapter, with_bias):
    p = make_problem(dtype=dtype, per_adapter=per_adapter)
    W, b, V, U = _layer(67, 45, dtype)
    b = b if with_bias else None
    y = frod_linear(p.z, W, b, V, U, *p.args()[1:])
    d = lambda t: None if t is None else t.double()
    ref = frod_linear_reference(p.z.double(), W.double(), d(b), V.double(), U.double(),
                                p.seg_indptr, p.seg_adapter, p.dl.double(), p.s.double(),
                                p.rows, p.cols)
    assert y.shape == (131, 45) and y.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 4e-2}[dtype]
    assert rel_err(y, ref) < tol


def test_leading_dims_and_segments_from_ids():
    g = torch.Generator().manual_seed(0)
    B, L, n, out, A, k = 3, 7, 19, 10, 4, 15
    x = torch.randn(B, L, n, generator=g, dtype=torch.float64)
    per_seq = torch.tensor([2, -1, 2])
    seg_indptr, seg_adapter = segments_from_ids(per_seq.repeat_interleave(L), A)
    assert seg_indptr.tolist() == [0, 7, 14, 21] and seg_adapter.tolist() == [2, -1, 2]
    p = make_problem(T=B * L, n=n, A=A, k=k, seg_lengths=[B * L], seg_adapters=[0])
    W, b, V, U = _layer(n, out, torch.float64)
    y = frod_linear(x, W, b, V, U, seg_indptr, seg_adapter, p.dl, p.s, p.rows, p.cols)
    ref = frod_linear_reference(x.reshape(-1, n), W, b, V, U, seg_indptr, seg_adapter, p.dl,
                                p.s, p.rows, p.cols)
    assert y.shape == (B, L, out)
    assert rel_err(y.reshape(-1, out), ref) < 1e-12


def test_gradients_match_reference():
    p = make_problem(T=29, n=13, A=3, k=10, seg_lengths=[9, 4, 16], seg_adapters=[1, -1, 0])
    W, b, V, U = _layer(13, 8, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (p.z, W, b, V, U, p.dl, p.s)]
    x, W_, b_, V_, U_, dl, s = leaves
    assert torch.autograd.gradcheck(
        lambda x, W_, b_, V_, U_, dl, s: frod_linear(x, W_, b_, V_, U_, p.seg_indptr,
                                                     p.seg_adapter, dl, s, p.rows, p.cols),
        tuple(leaves))


def test_inference_path_equals_grad_path():
    p = make_problem(dtype=torch.float32)
    W, b, V, U = _layer(67, 30, torch.float32)
    with torch.no_grad():
        y0 = frod_linear(p.z, W, b, V, U, *p.args()[1:])
    x = p.z.clone().requires_grad_()
    y1 = frod_linear(x, W, b, V, U, *p.args()[1:])
    assert torch.allclose(y0, y1.detach(), rtol=1e-6, atol=1e-6)
