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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_slot_table_with_patterns_of_different_k(dtype):
    """frod_linear(table=...) with per-slot patterns of different k equals the dense
    reference of each slot's own pattern, forward and gradients (padding values get none)."""
    from frod_problems import random_pattern
    from frod_rt.ops import plan_of, table_of_plans
    g = torch.Generator().manual_seed(12)
    n, out, A = 29, 17, 3
    W, b, V, U = _layer(n, out, dtype)
    pats = [random_pattern(n, k, g) for k in (11, 40, 5)]
    plans = [plan_of(r, c, n) for r, c in pats]
    table = table_of_plans(plans, n, "cpu")
    assert table_of_plans(plans, n, "cpu") is table
    x = torch.randn(23, n, generator=g, dtype=torch.float64).to(dtype)
    dl = (0.3 * torch.randn(A, n, generator=g, dtype=torch.float64)).to(dtype)
    s_list = [(0.3 * torch.randn(r.shape[0], generator=g, dtype=torch.float64)).to(dtype)
              .requires_grad_() for r, _ in pats]
    indptr = torch.tensor([0, 5, 6, 7, 15, 23], dtype=torch.int32)
    seg = torch.tensor([2, 0, 1, -1, 1], dtype=torch.int32)
    s = torch.stack([torch.nn.functional.pad(v, (0, 40 - v.shape[0])) for v in s_list])
    y = frod_linear(x, W, b, V, U, indptr, seg, dl, s, table=table)
    y.square().sum().backward()
    ids = torch.repeat_interleave(seg, torch.diff(indptr).long())
    want = torch.empty(23, out, dtype=torch.float64)
    for t in range(23):
        a = int(ids[t])
        Wt = W.double()
        if a >= 0:
            M = torch.diag(dl[a].double())
            r, c = pats[a]
            M = M.index_put((r.long(), c.long()), s_list[a].detach().double(), accumulate=True)
            Wt = Wt + U.double() @ M @ V.double().T
        want[t] = x[t].double() @ Wt.T + b.double()
    assert rel_err(y, want) < TOL[dtype] * 10
    for a, v in enumerate(s_list):  # gradient of each slot's own entries only
        ref_s = v.detach().double().clone().requires_grad_()
        rows_a = ids == a
        M = torch.diag(dl[a].double())
        r, c = pats[a]
        M = M.index_put((r.long(), c.long()), ref_s, accumulate=True)
        ya = x[rows_a].double() @ (W.double() + U.double() @ M @ V.double().T).T + b.double()
        ya.square().sum().backward()
        assert rel_err(v.grad, ref_s.grad) < TOL[dtype] * 10, a
    with pytest.raises(ValueError, match="either rows/cols or table"):
        frod_linear(x, W, b, V, U, indptr, seg, dl, s, pats[0][0], pats[0][1], table=table)
