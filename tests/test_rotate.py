"""frod_rt::rotate_segments against the float64 reference: forward, backward, opcheck."""
from __future__ import annotations

import pytest
import torch

from frod_problems import TOL, make_problem, rel_err
from frod_rt.ops import rotate_segments, rotate_segments_reference

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _ref(p):
    args = [a.double() if a.is_floating_point() else a for a in p.args()]
    return rotate_segments_reference(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_adapter", [False, True])
@pytest.mark.parametrize("sort", [False, True])
def test_forward_matches_reference(dtype, per_adapter, sort):
    p = make_problem(dtype=dtype, per_adapter=per_adapter, sort=sort)
    h = rotate_segments(*p.args())
    assert h.dtype == dtype and h.shape == p.z.shape
    assert rel_err(h, _ref(p)) < TOL[dtype]


def test_rows_without_adapter_are_zero():
    p = make_problem(dtype=torch.float32)
    h = rotate_segments(*p.args())
    base = slice(int(p.seg_indptr[2]), int(p.seg_indptr[3]))  # segment with adapter -1
    assert torch.count_nonzero(h[base]) == 0
    assert torch.count_nonzero(h[: int(p.seg_indptr[1])]) > 0


@pytest.mark.parametrize("T", [1, 2, 3, 7, 31, 32, 33, 64, 100])
def test_tile_widths(T):
    """Every tile width (1..32 rows, padded) and multi-tile segments."""
    p = make_problem(T=T, n=29, A=2, k=40, seg_lengths=[T], seg_adapters=[1],
                     dtype=torch.float32, seed=T)
    assert rel_err(rotate_segments(*p.args()), _ref(p)) < TOL[torch.float32]


def test_non_contiguous_z():
    p = make_problem(dtype=torch.float32)
    wide = torch.randn(p.z.shape[0], p.z.shape[1] + 9)
    wide[:, 3:3 + p.z.shape[1]] = p.z
    z = wide[:, 3:3 + p.z.shape[1]]
    assert not z.is_contiguous()
    h = rotate_segments(z, *p.args()[1:])
    assert rel_err(h, _ref(p)) < TOL[torch.float32]
    zt = p.z.t().contiguous().t()  # column-major: copied internally
    assert rel_err(rotate_segments(zt, *p.args()[1:]), _ref(p)) < TOL[torch.float32]


def test_empty_batch_and_no_adapters():
    p = make_problem(T=0, seg_lengths=[0], seg_adapters=[2])
    assert rotate_segments(*p.args()).shape == (0, 67)
    p = make_problem(T=5, seg_lengths=[5], seg_adapters=[-1])
    assert torch.count_nonzero(rotate_segments(*p.args())) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_adapter", [False, True])
def test_backward_matches_reference(dtype, per_adapter):
    p = make_problem(dtype=dtype, per_adapter=per_adapter)
    g = torch.Generator().manual_seed(7)
    grad_h = torch.randn(p.z.shape, generator=g, dtype=torch.float64)

    leaves = [t.detach().clone().requires_grad_() for t in (p.z, p.dl, p.s)]
    h = rotate_segments(leaves[0], p.seg_indptr, p.seg_adapter, leaves[1], leaves[2], p.rows, p.cols)
    h.backward(grad_h.to(dtype))

    ref_leaves = [t.detach().double().requires_grad_() for t in (p.z, p.dl, p.s)]
    ref = rotate_segments_reference(ref_leaves[0], p.seg_indptr, p.seg_adapter, ref_leaves[1],
                                    ref_leaves[2], p.rows, p.cols)
    ref.backward(grad_h)
    for got, want, name in zip(leaves, ref_leaves, ("z", "dl", "s")):
        assert got.grad.dtype == dtype, name
        assert rel_err(got.grad, want.grad) < TOL[dtype] * 4, name


def test_absent_adapters_get_zero_grad():
    p = make_problem(dtype=torch.float32, A=7)  # adapters 5 and 6 never appear
    dl = p.dl.clone().requires_grad_()
    s = p.s.clone().requires_grad_()
    rotate_segments(p.z, p.seg_indptr, p.seg_adapter, dl, s, p.rows, p.cols).sum().backward()
    assert torch.count_nonzero(dl.grad[5:]) == 0 and torch.count_nonzero(s.grad[5:]) == 0
    assert torch.count_nonzero(dl.grad[:5]) > 0


def test_backward_deterministic_and_thread_count_agnostic():
    p = make_problem(T=300, seg_lengths=[300], seg_adapters=[1], dtype=torch.float64)
    grads = []
    old = torch.get_num_threads()
    try:
        for nt in (1, 2, 2):
            torch.set_num_threads(nt)
            dl = p.dl.clone().requires_grad_()
            s = p.s.clone().requires_grad_()
            rotate_segments(p.z, p.seg_indptr, p.seg_adapter, dl, s, p.rows, p.cols).square().sum().backward()
            grads.append((dl.grad.clone(), s.grad.clone()))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(grads[1][0], grads[2][0]) and torch.equal(grads[1][1], grads[2][1])
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    p = make_problem(T=23, n=11, A=3, k=9, seg_lengths=[5, 0, 6, 3, 9],
                     seg_adapters=[2, 0, -1, 2, 1], per_adapter=True)
    z, dl, s = (t.clone().requires_grad_() for t in (p.z, p.dl, p.s))
    assert torch.autograd.gradcheck(
        lambda z, dl, s: rotate_segments(z, p.seg_indptr, p.seg_adapter, dl, s, p.rows, p.cols),
        (z, dl, s))


@pytest.mark.parametrize("per_adapter", [False, True])
def test_opcheck(per_adapter):
    p = make_problem(T=37, n=13, A=3, k=11, seg_lengths=[10, 20, 7], seg_adapters=[0, -1, 2],
                     per_adapter=per_adapter, dtype=torch.float32)
    z, dl, s = (t.clone().requires_grad_() for t in (p.z, p.dl, p.s))
    torch.library.opcheck(torch.ops.frod_rt.rotate_segments.default,
                          (z, p.seg_indptr, p.seg_adapter, dl, s, p.rows, p.cols))
    gh = torch.randn(p.z.shape)
    torch.library.opcheck(torch.ops.frod_rt.rotate_segments_backward.default,
                          (p.z, gh, p.seg_indptr, p.seg_adapter, p.dl, p.s, p.rows, p.cols,
                           True, True))


def test_torch_compile_fullgraph():
    p = make_problem(T=40, n=16, A=2, k=12, seg_lengths=[15, 25], seg_adapters=[1, 0],
                     dtype=torch.float32)
    fn = torch.compile(lambda z: rotate_segments(z, *p.args()[1:]) * 2, fullgraph=True,
                       backend="aot_eager")
    assert rel_err(fn(p.z), 2 * _ref(p)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sort", [False, True])
def test_many_short_segments(dtype, sort):
    """Decode-like batches: segments of 1-2 rows with distinct adapters are packed into
    mixed tiles (per-lane dl and s); base rows interleaved; odd total."""
    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(1, 3, (70,), generator=g).tolist() + [3, 1]
    adapters = torch.randint(-1, 9, (len(lengths),), generator=g).tolist()
    T = sum(lengths)
    p = make_problem(T=T, n=45, A=9, k=60, seg_lengths=lengths, seg_adapters=adapters,
                     dtype=dtype, sort=sort, seed=5)
    assert rel_err(rotate_segments(*p.args()), _ref(p)) < TOL[dtype]


def test_mixed_tiles_batch_invariant():
    """A row's output does not depend on which rows share its batch (bitwise)."""
    p = make_problem(T=60, n=33, A=6, k=50, seg_lengths=[20] + [1] * 40,
                     seg_adapters=[5] + [i % 6 for i in range(40)], dtype=torch.float32)
    full = rotate_segments(*p.args())
    ids = torch.repeat_interleave(p.seg_adapter, torch.diff(p.seg_indptr).long())
    for t in (0, 13, 20, 37, 59):
        alone = rotate_segments(p.z[t:t + 1], torch.tensor([0, 1], dtype=torch.int32),
                                ids[t:t + 1].int(), p.dl, p.s, p.rows, p.cols)
        assert torch.equal(alone, full[t:t + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_tiles_of_one_and_two_row_segments_batch_invariant(dtype):
    """Mixed tiles hold one lane per short segment (its one or two rows side by side): both
    rows of a 2-row segment, and a 1-row segment beside 2-row ones, equal the segment
    computed alone, bitwise; and the batch matches the float64 reference."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 3, (41,), generator=g).tolist()    # > 16 lanes: several tiles
    adapters = [i % 7 for i in range(len(lengths))]
    p = make_problem(T=sum(lengths), n=37, A=7, k=55, seg_lengths=lengths,
                     seg_adapters=adapters, dtype=dtype, seed=9)
    full = rotate_segments(*p.args())
    assert rel_err(full, _ref(p)) < TOL[dtype]
    starts = p.seg_indptr.tolist()
    for g_ in (0, 1, 2, 17, 25, 40):
        b, e = starts[g_], starts[g_ + 1]
        alone = rotate_segments(p.z[b:e], torch.tensor([0, e - b], dtype=torch.int32),
                                torch.tensor([adapters[g_]], dtype=torch.int32), p.dl, p.s,
                                p.rows, p.cols)
        assert torch.equal(alone, full[b:e]), g_


def test_eager_fast_path_equals_custom_op():
    """Eager inference calls the kernel directly; it must equal the registered op bitwise."""
    p = make_problem(dtype=torch.float32)
    with torch.no_grad():
        fast = rotate_segments(*p.args())
    op = torch.ops.frod_rt.rotate_segments(*p.args())
    assert torch.equal(fast, op)
