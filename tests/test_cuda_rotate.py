"""GPU tests of the CUDA rotation kernels against float64 references (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from frod_rt import _C
from frod_rt._core import stream_of, view
from frod_rt.ops import (SlotPatterns, check_cuda_errors, register_pattern, rotate_segments,
                         rotate_segments_reference, rotate_slots, rotate_slots_reference)
from frod_rt.ops.cuda_common import check_rotate_indices_cuda
from frod_rt.ops.plans import table_for_pattern

from test_cuda_common import LAYOUTS, REL_TOL, needs_cuda_build, rel_err, rotation_problem, to_cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not needs_cuda_build, reason="frod_rt built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _table_views(z, dl, rows, cols):
    return [view(t) for t in table_for_pattern(rows, cols, z.shape[1], dl.shape[0]).tensors()]


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
        _C.rotate_forward(view(z), view(indptr), view(adapter), view(dl), view(s),
                          *_table_views(z, dl, rows, cols), view(h), 1, stream_of(z))
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


def test_backward_adds_into_present_rows_and_leaves_absent_ones(gen):
    """CUDA backward contract: grad_dl / grad_s rows of present adapters are accumulated into
    (callers pass zeros), rows of absent adapters keep their contents."""
    z, indptr, adapter, dl, s, rows, cols = to_cuda(
        *rotation_problem(gen, "mixed", 29, 60, torch.float32, False, A=5))
    gh = torch.randn(z.shape, device="cuda")
    tv = _table_views(z, dl, rows, cols)
    gdl = torch.full((5, 29), 7.0, device="cuda")
    gs = torch.full((5, 60), 7.0, device="cuda")
    _C.rotate_backward(view(z), view(gh), view(indptr), view(adapter), view(dl), view(s), *tv,
                       None, view(gdl), view(gs), 1, stream_of(z))
    gdl0, gs0 = torch.zeros_like(gdl), torch.zeros_like(gs)
    _C.rotate_backward(view(z), view(gh), view(indptr), view(adapter), view(dl), view(s), *tv,
                       None, view(gdl0), view(gs0), 1, stream_of(z))
    torch.cuda.synchronize()
    torch.testing.assert_close(gdl[:3], gdl0[:3] + 7.0)
    torch.testing.assert_close(gs[:3], gs0[:3] + 7.0)
    assert torch.all(gdl[3:] == 7.0) and torch.all(gs[3:] == 7.0)


def test_cpu_and_cuda_agree(gen):
    cpu = rotation_problem(gen, "decode", 64, 300, torch.float32, True)
    torch.testing.assert_close(rotate_segments(*to_cuda(*cpu)).cpu(), rotate_segments(*cpu),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["indptr", "adapter"])
def test_bad_indices_are_reported_not_out_of_bounds(gen, bad, monkeypatch):
    z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "mixed", 31, 50, torch.float32,
                                                             False)
    if bad == "indptr":
        indptr = indptr.clone()
        indptr[3] = 10_000
    else:
        adapter = adapter.clone()
        adapter[0] = 99
    args = to_cuda(z, indptr, adapter, dl, s, rows, cols)
    with pytest.raises(ValueError, match="seg_"):
        check_rotate_indices_cuda(*args)
    check_cuda_errors()  # clear
    out = torch.ops.frod_rt.rotate_segments(*args)  # must not fault
    torch.cuda.synchronize()
    assert out.shape == z.shape
    with pytest.raises(ValueError, match="invalid indices"):
        check_cuda_errors()
    monkeypatch.setenv("FROD_RT_CUDA_CHECKS", "1")
    with pytest.raises(ValueError, match="invalid indices"):
        torch.ops.frod_rt.rotate_segments(*args)


def test_bad_pattern_raises_when_planned(gen):
    z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "mixed", 31, 50, torch.float32,
                                                             False)
    rows = rows.clone()
    rows[5] = -4
    with pytest.raises(ValueError, match=r"rows\[5\] = -4 is out of range"):
        rotate_segments(*to_cuda(z, indptr, adapter, dl, s, rows, cols))


def test_check_passes_valid_indices(gen):
    check_rotate_indices_cuda(*to_cuda(*rotation_problem(gen, "mixed", 31, 50, torch.float32,
                                                         True)))


def test_opcheck_cuda(gen):
    args = to_cuda(*rotation_problem(gen, "mixed", 24, 40, torch.float32, False))
    torch.library.opcheck(torch.ops.frod_rt.rotate_segments.default, args)


def test_replace_form_rotation(gen):
    """rotate_forward with base_scale: H = Z diag(base + dl_a) + S_a Z."""
    z, indptr, adapter, dl, s, rows, cols = rotation_problem(gen, "mixed", 40, 80, torch.float32,
                                                             False)
    base = torch.randn(40, generator=gen)
    ref = _reference(z, indptr, adapter, dl + base, s, rows, cols)
    zc, ic, ac, dlc, sc, rc, cc = to_cuda(z, indptr, adapter, dl, s, rows, cols)
    h = torch.full_like(zc, float("nan"))
    bc = base.cuda()
    _C.rotate_forward(view(zc), view(ic), view(ac), view(dlc), view(sc),
                      *_table_views(zc, dlc, rc, cc), view(h), 1, stream_of(zc), view(bc))
    assert rel_err(h, ref) < REL_TOL[torch.float32]


def _slots(gen, dtype, n=57, A=6):
    ks = [30, 111, 7]
    plans = [register_pattern(*random_pattern_cpu(gen, n, k), n, "cuda") for k in ks]
    table = SlotPatterns(n, A, "cuda")
    for a, p in enumerate([0, 1, 0, None, 2, 1]):
        if p is not None:
            table.set(a, plans[p])
    lengths = [1] * 40 + [19, 0, 3]
    adapters = [i % A for i in range(40)] + [1, 2, -1]
    indptr = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    T = int(indptr[-1])
    z = torch.randn(T, n, generator=gen, dtype=torch.float64).to(dtype)
    dl = torch.randn(A, n, generator=gen, dtype=torch.float64).to(dtype)
    s = torch.randn(A, max(ks) + 3, generator=gen, dtype=torch.float64).to(dtype)
    return (z.cuda(), indptr.cuda(), torch.tensor(adapters, dtype=torch.int32).cuda(),
            dl.cuda(), s.cuda(), table)


def random_pattern_cpu(gen, n, k):
    flat = torch.randperm(n * (n - 1), generator=gen)[:k]
    r, c = flat // (n - 1), flat % (n - 1)
    c = c + (c >= r).long()
    return r.int(), c.int()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_slots_patterns_of_different_k(gen, dtype):
    z, indptr, adapter, dl, s, table = _slots(gen, dtype)
    out = rotate_slots(z, indptr, adapter, dl, s, table)
    f = lambda t: t.to(torch.float64)  # noqa: E731
    ref = rotate_slots_reference(f(z), indptr, adapter, f(dl), f(s), table)
    assert rel_err(out, ref) < REL_TOL[dtype]
    # batch invariance: rows alone equal their rows in the batch, bitwise
    one = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    for t in (0, 7, 39, 45):
        g = int(torch.searchsorted(indptr.cpu(), torch.tensor(t), right=True)) - 1
        alone = rotate_slots(z[t:t + 1], one, adapter[g:g + 1], dl, s, table)
        assert torch.equal(alone, out[t:t + 1]), t


def test_rotate_slots_backward(gen):
    z, indptr, adapter, dl, s, table = _slots(gen, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (z, dl, s)]
    rotate_slots(leaves[0], indptr, adapter, leaves[1], leaves[2], table).square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (z, dl, s)]
    rotate_slots_reference(ref[0], indptr, adapter, ref[1], ref[2], table).square().sum().backward()
    for got, want in zip(leaves, ref):
        assert rel_err(got.grad, want.grad) < 1e-10


@pytest.mark.parametrize("field", ["z", "dl", "s", "seg_indptr", "seg_adapter"])
def test_cuda_rotation_accepts_views(gen, field):
    """Non-contiguous views of every argument give the contiguous result (temporaries kept
    alive while the kernel runs on the stream)."""
    args = dict(zip(("z", "seg_indptr", "seg_adapter", "dl", "s", "rows", "cols"),
                    to_cuda(*rotation_problem(gen, "mixed", 37, 90, torch.float32, False))))
    want = rotate_segments(**args)
    t = args[field]
    wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1] + 1), dtype=t.dtype, device="cuda")
    wide[..., 1::2][..., : t.shape[-1]] = t
    got = rotate_segments(**{**args, field: wide[..., 1::2][..., : t.shape[-1]]})
    assert torch.equal(got, want)
