"""GPU tests of the CUTLASS GEMM and the fused / replace FRoD linear forms (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

import frod_rt
from frod_rt.ops import (cutlass_linear, frod_linear, frod_linear_reference, fused_frod_linear,
                         fused_weights, replace_frod_linear)

from test_cuda_common import (LAYOUTS, REL_TOL, needs_cuda_build, random_pattern, rel_err,
                           segments, to_cuda)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not needs_cuda_build, reason="frod_rt built without CUDA kernels"),
]

GEMM_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", GEMM_DTYPES)
@pytest.mark.parametrize("M,N,K", [(1, 8, 8), (37, 24, 40), (129, 136, 264), (300, 520, 72)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cutlass_linear(gen, dtype, M, N, K, with_bias):
    x = torch.randn(M, K, generator=gen, dtype=torch.float64)
    w = torch.randn(N, K, generator=gen, dtype=torch.float64) / K ** 0.5
    b = torch.randn(N, generator=gen, dtype=torch.float64) if with_bias else None
    xq, wq = x.to(dtype), w.to(dtype)
    bq = b.to(dtype) if b is not None else None
    y = cutlass_linear(*to_cuda(xq, wq), bq.cuda() if bq is not None else None)
    ref = xq.double() @ wq.double().T + (bq.double() if bq is not None else 0)
    assert rel_err(y, ref) < REL_TOL[dtype] / 2


def test_cutlass_linear_rejects_unaligned():
    x = torch.randn(5, 12, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(8, 12, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiples of 8"):
        cutlass_linear(x, w)


def test_cutlass_backend_name():
    assert frod_rt._C.gemm_backend() in ("cutlass3x_sm90a_tma_wgmma", "cutlass2x_sm80_mma_sync")


def _layer(gen, n, out, A, k, dtype, per_adapter, layout):
    lengths, adapters = LAYOUTS[layout]
    indptr, adapter = segments(lengths, adapters)
    T = int(indptr[-1])
    f64 = dict(generator=gen, dtype=torch.float64)
    x = torch.randn(T, n, **f64)
    V = torch.randn(n, n, **f64) / n ** 0.5
    U = torch.randn(out, n, **f64) / n ** 0.5
    l = 1 + 0.1 * torch.rand(n, **f64)
    W = U @ torch.diag(l) @ V.T
    b = torch.randn(out, **f64)
    dl = 0.3 * torch.randn(A, n, **f64)
    s = 0.3 * torch.randn(A, k, **f64)
    rows, cols = random_pattern(gen, n, k, A if per_adapter else None)
    q = lambda t: t.to(dtype)  # noqa: E731
    return dict(x=q(x), W=q(W), b=q(b), V=q(V), U=q(U), l=q(l), indptr=indptr, adapter=adapter,
                dl=q(dl), s=q(s), rows=rows, cols=cols)


def _ref(p, use_bias=True):
    d = lambda t: t.to(torch.float64)  # noqa: E731
    return frod_linear_reference(d(p["x"]), d(p["W"]), d(p["b"]) if use_bias else None, d(p["V"]),
                                 d(p["U"]), p["indptr"], p["adapter"], d(p["dl"]), d(p["s"]),
                                 p["rows"], p["cols"])


@pytest.mark.parametrize("dtype", GEMM_DTYPES)
@pytest.mark.parametrize("layout", ["mixed", "decode", "long", "base_only"])
@pytest.mark.parametrize("per_adapter", [False, True])
def test_fused_matches_reference(gen, dtype, layout, per_adapter):
    p = _layer(gen, n=40, out=24, A=3, k=150, dtype=dtype, per_adapter=per_adapter, layout=layout)
    c = {k: v.cuda() for k, v in p.items()}
    vt, wu = fused_weights(c["W"], c["V"], c["U"])
    y = fused_frod_linear(c["x"], vt, wu, c["b"], c["indptr"], c["adapter"], c["dl"], c["s"],
                          c["rows"], c["cols"])
    assert y.shape == (p["x"].shape[0], 24)
    assert rel_err(y, _ref(p)) < REL_TOL[dtype]
    # and agrees with the factored CUDA path (torch matmuls + CUDA rotation)
    y2 = frod_linear(c["x"], c["W"], c["b"], c["V"], c["U"], c["indptr"], c["adapter"], c["dl"],
                     c["s"], c["rows"], c["cols"])
    assert rel_err(y, y2) < REL_TOL[dtype]


def test_fused_without_bias_and_3d_input(gen):
    p = _layer(gen, n=72, out=56, A=3, k=300, dtype=torch.bfloat16, per_adapter=False,
               layout="mixed")
    c = {k: v.cuda() for k, v in p.items()}
    vt, wu = fused_weights(c["W"], c["V"], c["U"])
    T = p["x"].shape[0]
    y = fused_frod_linear(c["x"].reshape(1, T, 72), vt, wu, None, c["indptr"], c["adapter"],
                          c["dl"], c["s"], c["rows"], c["cols"])
    assert y.shape == (1, T, 56)
    assert rel_err(y[0], _ref(p, use_bias=False)) < REL_TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", GEMM_DTYPES)
@pytest.mark.parametrize("per_adapter", [False, True])
def test_replace_matches_reference(gen, dtype, per_adapter):
    p = _layer(gen, n=48, out=40, A=3, k=200, dtype=dtype, per_adapter=per_adapter,
               layout="long")  # every row has an adapter
    c = {k: v.cuda() for k, v in p.items()}
    y = replace_frod_linear(c["x"], c["V"].t(), c["U"], c["l"], c["b"], c["indptr"], c["adapter"],
                            c["dl"], c["s"], c["rows"], c["cols"])
    # W was built as U diag(l) V^T in float64 and then rounded, so compare with the math the
    # replace form computes: X V diag(l+dl) U^T + X V S^T U^T + b, in float64
    assert rel_err(y, _ref(p)) < 2 * REL_TOL[dtype]


def test_replace_base_rows_get_bias(gen):
    p = _layer(gen, n=32, out=16, A=3, k=60, dtype=torch.float16, per_adapter=False,
               layout="base_only")
    c = {k: v.cuda() for k, v in p.items()}
    y = replace_frod_linear(c["x"], c["V"].t(), c["U"], c["l"], c["b"], c["indptr"], c["adapter"],
                            c["dl"], c["s"], c["rows"], c["cols"])
    torch.testing.assert_close(y, c["b"].expand_as(y))


def test_fused_rejects_bad_shapes(gen):
    p = _layer(gen, n=40, out=24, A=3, k=50, dtype=torch.bfloat16, per_adapter=False,
               layout="mixed")
    c = {k: v.cuda() for k, v in p.items()}
    vt, wu = fused_weights(c["W"], c["V"], c["U"])
    with pytest.raises(ValueError, match="wu"):
        fused_frod_linear(c["x"], vt, wu[:, :-8], c["b"], c["indptr"], c["adapter"], c["dl"],
                          c["s"], c["rows"], c["cols"])
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        fused_frod_linear(c["x"].float(), vt.float(), wu.float(), None, c["indptr"], c["adapter"],
                          c["dl"].float(), c["s"].float(), c["rows"], c["cols"])


def test_fused_opcheck(gen):
    p = _layer(gen, n=40, out=24, A=3, k=50, dtype=torch.bfloat16, per_adapter=False,
               layout="mixed")
    c = {k: v.cuda() for k, v in p.items()}
    vt, wu = fused_weights(c["W"], c["V"], c["U"])
    torch.library.opcheck(torch.ops.frod_rt.fused_frod_linear.default,
                          (c["x"], vt, wu, c["b"], c["indptr"], c["adapter"], c["dl"], c["s"],
                           c["rows"], c["cols"]))


@pytest.mark.parametrize("dtype", GEMM_DTYPES)
def test_gemm_and_fused_are_batch_invariant(gen, dtype):
    """One CUTLASS instantiation, no split-K: a row's output does not depend on the other rows
    of the batch (bit for bit), for the dense GEMM and for the whole fused layer."""
    p = _layer(gen, n=64, out=48, A=3, k=300, dtype=dtype, per_adapter=False, layout="long")
    c = {k: v.cuda() for k, v in p.items()}
    full = cutlass_linear(c["x"], c["W"], c["b"])
    part = cutlass_linear(c["x"][41:50].contiguous(), c["W"], c["b"])
    assert torch.equal(full[41:50], part)
    vt, wu = fused_weights(c["W"], c["V"], c["U"])
    rot = (c["dl"], c["s"], c["rows"], c["cols"])
    yf = fused_frod_linear(c["x"], vt, wu, c["b"], c["indptr"], c["adapter"], *rot)
    lo, hi = int(p["indptr"][2]), int(p["indptr"][3])  # the third segment, adapter 2
    one = torch.tensor([0, hi - lo], dtype=torch.int32, device="cuda")
    ys = fused_frod_linear(c["x"][lo:hi].contiguous(), vt, wu, c["b"], one,
                           c["adapter"][2:3].contiguous(), *rot)
    assert torch.equal(yf[lo:hi], ys)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view with t's values (every other element of a wider buffer)."""
    wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1] + 1), dtype=t.dtype, device=t.device)
    wide[..., 1::2][..., : t.shape[-1]] = t
    return wide[..., 1::2][..., : t.shape[-1]]


@pytest.mark.parametrize("op", ["fused", "replace", "cutlass"])
def test_cuda_linear_ops_accept_views(gen, op):
    """Strided views of every tensor argument give the contiguous result (issue 12 item 4)."""
    p = {k: v.cuda() for k, v in _layer(gen, 48, 40, 3, 70, torch.bfloat16, False, "mixed").items()}
    vt, wu = fused_weights(p["W"], p["V"], p["U"])
    if op == "fused":
        names = ["x", "vt", "wu", "b", "indptr", "adapter", "dl", "s", "rows", "cols"]
        args = dict(zip(names, (p["x"], vt, wu, p["b"], p["indptr"], p["adapter"], p["dl"],
                                p["s"], p["rows"], p["cols"])))
        fn = fused_frod_linear
    elif op == "replace":
        names = ["x", "vt", "U", "l", "b", "indptr", "adapter", "dl", "s", "rows", "cols"]
        args = dict(zip(names, (p["x"], vt, p["U"], p["l"], p["b"], p["indptr"], p["adapter"],
                                p["dl"], p["s"], p["rows"], p["cols"])))
        fn = replace_frod_linear
    else:
        names = ["x", "W", "b"]
        args = dict(x=p["x"], W=p["W"], b=p["b"])
        fn = cutlass_linear
    want = fn(*args.values())
    for name in names:
        got = fn(*{**args, name: _strided(args[name])}.values())
        assert torch.equal(got, want), name


def test_unaligned_sizes_fall_back_with_one_warning(gen):
    """n or out not a multiple of 8: fused / replace warn once and compute the same result on
    torch GEMMs around the rotation kernel."""
    import warnings
    from frod_rt.ops import cuda_linear
    cuda_linear._fallback_warned.clear()
    p = _layer(gen, n=37, out=21, A=3, k=50, dtype=torch.float16, per_adapter=False,
               layout="mixed")
    c = {k: v.cuda() for k, v in p.items()}
    vt, wu = fused_weights(c["W"], c["V"], c["U"])
    rot = (c["indptr"], c["adapter"], c["dl"], c["s"], c["rows"], c["cols"])
    with pytest.warns(RuntimeWarning, match="multiples of 8"):
        y = fused_frod_linear(c["x"], vt, wu, c["b"], *rot)
    assert rel_err(y, _ref(p)) < REL_TOL[torch.float16] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_frod_linear(c["x"], vt, wu, c["b"], *rot)          # warned once only
    with pytest.warns(RuntimeWarning, match="multiples of 8"):
        yr = replace_frod_linear(c["x"], vt, c["U"], c["l"], c["b"], *rot)
    adapted = torch.repeat_interleave(p["adapter"], torch.diff(p["indptr"]).long()) >= 0
    assert rel_err(yr[adapted.cuda()], _ref(p)[adapted]) < REL_TOL[torch.float16] * 4
