"""GPU tests of the CUDA rotation kernels against float64 references (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from frod_rt import _C
from frod_rt._core import stream_of, view
from frod_rt.ops import rotate_segments, rotate_segments_reference
from frod_rt.ops.cuda_common import check_rotate_indices_cuda

from test_cuda_common import LAYOUTS, REL_TOL, needs_cuda_build, rel_err, rotation_problem, to_cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not needs_cuda_build, reason="frod_rt built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _reference(z, indptr, adapter, dl, s, rows, cols):
    f = lambda t: t.to(torch.float64)  # noqa: E731
    return rotate_segments_reference(f(z), indptr, adapter, f(dl), f(s), rows, cols)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("per_adapter", [False, True])
def test_forward_matches_reference(gen, dtype, layout, per_adapter):
    n, k = 37, 90
    cpu = rotation_problem(gen, layout, n, k, dtype, per_adapter)
    out = rotate_segments(*to_cuda(*cpu))
    assert out.device.type == "cuda" and out.dtype == dtype
    assert rel_err(out, _reference(*cpu)) < REL_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 130, 1031])
def test_forward_widths(gen, dtype, n):
    k = max(0, min(3 * n, 2000)) if n > 1 else 0
    cpu = rotation_problem(gen, "mixed", n, k, dtype, False) if n > 1 else None
    if cpu is None:  # n = 1: no off-diagonal entry exists, k = 0
        z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "mixed", 2, 0, dtype, False)
        cpu = (z[:, :1].contiguous(), indptr, adapter, dl[:, :1].contiguous(), s, rows, cols)
    out = rotate_segments(*to_cuda(*cpu))
    assert rel_err(out, _reference(*cpu)) < REL_TOL[dtype]


def test_every_element_written_and_deterministic(gen):
    """Poison h with NaN before the kernel: every element must be overwritten; two runs agree
    bit for bit."""
    cpu = rotation_problem(gen, "mixed", 53, 200, torch.float32, True)
    z, indptr, adapter, dl, s, rows, cols = to_cuda(*cpu)
    outs = []
    for _ in range(2):
        h = torch.full_like(z, float("nan"))
        _C.rotate_forward(view(z), view(indptr), view(adapter), view(dl), view(s), view(rows),
                          view(cols), view(h), 1, stream_of(z))
        torch.cuda.synchronize()
        assert not torch.isnan(h).any()
        outs.append(h)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariance(gen, dtype):
    """A segment's rows come out bit-identical alone and inside a larger, differently tiled batch."""
    n, k = 96, 400
    z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "long", n, k, dtype, False)
    z, indptr, adapter, dl, s, rows, cols = to_cuda(z, indptr, adapter, dl, s, rows, cols)
    full = rotate_segments(z, indptr, adapter, dl, s, rows, cols)
    lo, hi = int(indptr[2]), int(indptr[3])  # the third segment (adapter 2)
    for t0, t1 in ((lo, hi), (lo + 3, lo + 4)):  # the whole segment, then one row (tile R=1)
        one = rotate_segments(z[t0:t1].contiguous(),
                              torch.tensor([0, t1 - t0], dtype=torch.int32, device="cuda"),
                              adapter[2:3].contiguous(), dl, s, rows, cols)
        assert torch.equal(one, full[t0:t1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_adapter", [False, True])
def test_backward_matches_reference(gen, dtype, per_adapter):
    n, k = 45, 120
    cpu = rotation_problem(gen, "mixed", n, k, dtype, per_adapter)
    z, indptr, adapter, dl, s, rows, cols = cpu
    zc, ic, ac, dlc, sc, rc, cc = to_cuda(*cpu)
    leaves = [t.clone().requires_grad_(True) for t in (zc, dlc, sc)]
    out = rotate_segments(leaves[0], ic, ac, leaves[1], leaves[2], rc, cc)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(g.to(dtype).cuda())

    ref_leaves = [t.to(torch.float64).requires_grad_(True) for t in (z, dl, s)]
    ref = rotate_segments_reference(ref_leaves[0], indptr, adapter, ref_leaves[1], ref_leaves[2],
                                    rows, cols)
    ref.backward(g.to(dtype).to(torch.float64))
    for got, want, name in zip(leaves, ref_leaves, ("z", "dl", "s")):
        assert got.grad is not None, name
        assert rel_err(got.grad, want.grad) < REL_TOL[dtype], name


def test_backward_leaves_absent_adapters_untouched(gen):
    """grad_dl / grad_s rows of adapters absent from the batch keep their previous contents;
    present rows are overwritten (not accumulated into)."""
    z, indptr, adapter, dl, s, rows, cols = to_cuda(
        *rotation_problem(gen, "mixed", 29, 60, torch.float32, False, A=5))
    gh = torch.randn(z.shape, device="cuda")
    gdl = torch.full((5, 29), 7.0, device="cuda")
    gs = torch.full((5, 60), 7.0, device="cuda")
    _C.rotate_backward(view(z), view(gh), view(indptr), view(adapter), view(dl), view(s),
                       view(rows), view(cols), None, view(gdl), view(gs), 1, stream_of(z))
    torch.cuda.synchronize()
    present = {0, 1, 2}
    for a in range(5):
        if a in present:
            assert not torch.all(gdl[a] == 7.0)
        else:
            assert torch.all(gdl[a] == 7.0) and torch.all(gs[a] == 7.0)
    # the same call on zero-initialised buffers gives the same present rows
    gdl0, gs0 = torch.zeros_like(gdl), torch.zeros_like(gs)
    _C.rotate_backward(view(z), view(gh), view(indptr), view(adapter), view(dl), view(s),
                       view(rows), view(cols), None, view(gdl0), view(gs0), 1, stream_of(z))
    torch.cuda.synchronize()
    torch.testing.assert_close(gdl[:3], gdl0[:3])
    torch.testing.assert_close(gs[:3], gs0[:3])


def test_cpu_and_cuda_agree(gen):
    cpu = rotation_problem(gen, "decode", 64, 300, torch.float32, True)
    torch.testing.assert_close(rotate_segments(*to_cuda(*cpu)).cpu(), rotate_segments(*cpu),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["indptr", "adapter", "pattern"])
def test_bad_indices_are_reported_not_out_of_bounds(gen, bad):
    z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "mixed", 31, 50, torch.float32,
                                                             False)
    if bad == "indptr":
        indptr = indptr.clone()
        indptr[3] = 10_000
    elif bad == "adapter":
        adapter = adapter.clone()
        adapter[0] = 99
    else:
        rows = rows.clone()
        rows[5] = -4
        cols = cols.clone()
        cols[7] = rows[7]  # diagonal
    args = to_cuda(z, indptr, adapter, dl, s, rows, cols)
    with pytest.raises(ValueError, match="invalid indices"):
        check_rotate_indices_cuda(*args)
    out = torch.ops.frod_rt.rotate_segments(*args)  # must not fault
    torch.cuda.synchronize()
    assert out.shape == z.shape


def test_check_passes_valid_indices(gen):
    check_rotate_indices_cuda(*to_cuda(*rotation_problem(gen, "mixed", 31, 50, torch.float32,
                                                         True)))


def test_opcheck_cuda(gen):
    args = to_cuda(*rotation_problem(gen, "mixed", 24, 40, torch.float32, False))
    torch.library.opcheck(torch.ops.frod_rt.rotate_segments.default, args)


def test_replace_form_rotation(gen):
    """rotate_forward_scaled: H = Z diag(base + dl_a) + S_a Z."""
    z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "mixed", 40, 80, torch.float32,
                                                             False)
    base = torch.randn(40, generator=gen)
    ref = _reference(z, indptr, adapter, dl + base, s, rows, cols)
    zc, ic, ac, dlc, sc, rc, cc = to_cuda(z, indptr, adapter, dl, s, rows, cols)
    h = torch.full_like(zc, float("nan"))
    _C.rotate_forward_scaled(view(zc), view(ic), view(ac), view(dlc), view(sc), view(rc),
                             view(cc), view(base.cuda()), view(h), None, stream_of(zc))
    assert rel_err(h, ref) < REL_TOL[torch.float32]
