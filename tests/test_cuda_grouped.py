"""GPU tests of the CUTLASS segment-grouped GEMM (merged hot adapters; skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from frod_rt import _C
from frod_rt._core import stream_of, view
from frod_rt.ops import grouped_gemm

from test_cuda_common import REL_TOL, needs_cuda_build, rel_err, segments

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not needs_cuda_build, reason="frod_rt built without CUDA kernels"),
]


def _problem(gen, dtype, lengths, slots, K=72, N=40, num_weights=3):
    indptr, slot = segments(lengths, slots)
    T = int(indptr[-1])
    x = torch.randn(T, K, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(num_weights, N, K, generator=gen, dtype=torch.float64) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=gen, dtype=torch.float64).to(dtype)
    return x, w, b, indptr, slot


def _reference(x, w, b, indptr, slot):
    y = torch.zeros(x.shape[0], w.shape[1], dtype=torch.float64)
    for g in range(slot.shape[0]):
        lo, hi, sl = int(indptr[g]), int(indptr[g + 1]), int(slot[g])
        if sl >= 0:
            y[lo:hi] = x[lo:hi].double() @ w[sl].double().T + (0 if b is None else b.double())
    return y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("lengths,slots", [
    ([5, 0, 131, 1, 7, 0, 300], [0, 2, 1, -1, 0, 1, 2]),
    ([1] * 9, [0, 1, 2, -1, 0, 2, 2, -1, 1]),
    ([3, 4], [-1, -1]),
])
def test_grouped_matches_reference(gen, dtype, with_bias, lengths, slots):
    x, w, b, indptr, slot = _problem(gen, dtype, lengths, slots)
    b = b if with_bias else None
    y = grouped_gemm(x.cuda(), w.cuda(), None if b is None else b.cuda(), indptr.cuda(),
                     slot.cuda())
    ref = _reference(x, w, b, indptr, slot)
    assert rel_err(y, ref) < REL_TOL[dtype] / 2 or ref.abs().max() == 0
    if ref.abs().max() == 0:
        assert torch.count_nonzero(y) == 0


def test_grouped_leaves_other_rows_untouched_and_flags_bad_slots(gen):
    x, w, b, indptr, slot = _problem(gen, torch.bfloat16, [4, 6, 5], [0, 7, -1])
    xc, wc, bc, ic, sc = (t.cuda() for t in (x, w, b, indptr, slot))
    y = torch.full((x.shape[0], w.shape[1]), 3.0, dtype=x.dtype, device="cuda")
    err = torch.zeros(1, dtype=torch.int32, device="cuda")
    _C.segment_gemm(view(xc), view(wc), view(bc), view(ic), view(sc), view(y), view(err),
                    stream_of(xc))
    torch.cuda.synchronize()
    assert int(err.item()) == 2  # slot 7 is out of range: skipped, flagged
    assert torch.all(y[4:] == 3.0)
    ref = _reference(x, w, b, indptr, torch.tensor([0, -1, -1], dtype=torch.int32))
    assert rel_err(y[:4], ref[:4]) < REL_TOL[torch.bfloat16] / 2


def test_grouped_opcheck(gen):
    x, w, b, indptr, slot = _problem(gen, torch.float16, [3, 9, 2], [1, 0, -1])
    torch.library.opcheck(torch.ops.frod_rt.grouped_gemm.default,
                          tuple(t.cuda() for t in (x, w, b, indptr, slot)))


def test_grouped_accepts_views(gen):
    """Strided views of every argument give the contiguous result (issue 12 item 4)."""
    x, w, b, indptr, slot = (t.cuda() for t in _problem(gen, torch.bfloat16, [5, 0, 13, 1],
                                                         [0, 2, 1, -1]))
    want = grouped_gemm(x, w, b, indptr, slot)
    args = [x, w, b, indptr, slot]
    for i in range(len(args)):
        t = args[i]
        wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1] + 1), dtype=t.dtype, device=t.device)
        wide[..., 1::2][..., : t.shape[-1]] = t
        got = grouped_gemm(*args[:i], wide[..., 1::2][..., : t.shape[-1]], *args[i + 1:])
        assert torch.equal(got, want), i
