"""Planned rotations: register_pattern (host planning in C++), SlotPatterns and rotate_slots
against the float64 reference, with patterns of different k in one call."""
from __future__ import annotations

import pytest
import torch

from frod_problems import TOL, random_pattern, rel_err
from frod_rt.ops import (SlotPatterns, register_pattern, rotate_segments, rotate_slots,
                         rotate_slots_reference)
from frod_rt.ops import plans as plans_mod

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def test_plan_is_csr_and_csc_of_the_pattern():
    g = torch.Generator().manual_seed(0)
    n, k = 23, 61
    rows, cols = random_pattern(n, k, g)
    plan = register_pattern(rows, cols, n)
    ptr, idx = plan.ptr, plan.idx
    assert torch.equal(ptr[0].diff(), torch.bincount(rows.long(), minlength=n).int())
    assert torch.equal(ptr[1].diff(), torch.bincount(cols.long(), minlength=n).int())
    # CSR: entries sorted by (row, j); CSC by (col, j)
    j_csr = idx[1].long()
    assert torch.equal(idx[0], cols[j_csr]) and torch.equal(rows[j_csr], rows[j_csr].sort().values)
    key = rows[j_csr].long() * k + j_csr
    assert bool((key.diff() > 0).all())
    j_csc = idx[3].long()
    assert torch.equal(idx[2], rows[j_csc])
    key = cols[j_csc].long() * k + j_csc
    assert bool((key.diff() > 0).all())
    assert not plan.identity
    srt = torch.argsort(rows.long() * n + cols.long())
    assert register_pattern(rows[srt], cols[srt], n).identity


def test_register_pattern_is_content_keyed_and_bounded(monkeypatch):
    g = torch.Generator().manual_seed(1)
    rows, cols = random_pattern(17, 20, g)
    a = register_pattern(rows, cols, 17)
    assert register_pattern(rows.clone().long(), cols.clone(), 17) is a
    assert register_pattern(rows, cols, 18) is not a
    monkeypatch.setattr(plans_mod, "PLAN_CACHE_SIZE", 3)
    for i in range(5):
        register_pattern(*random_pattern(17, 5 + i, g), 17)
    assert plans_mod.plan_cache_size() <= 3
    assert register_pattern(rows, cols, 17) is not a  # evicted, rebuilt: same content
    assert torch.equal(register_pattern(rows, cols, 17).idx, a.idx)


@pytest.mark.parametrize("mutate,exc,pattern", [
    (lambda r, c: r.__setitem__(2, 40), ValueError, r"rows\[2\] = 40 is out of range \[0, 17\)"),
    (lambda r, c: c.__setitem__(0, -1), ValueError, r"cols\[0\] = -1 is out of range"),
    (lambda r, c: c.__setitem__(4, int(r[4])), ValueError, "on the diagonal"),
])
def test_register_pattern_validates(mutate, exc, pattern):
    rows, cols = random_pattern(17, 9, torch.Generator().manual_seed(2))
    mutate(rows, cols)
    with pytest.raises(exc, match=pattern):
        register_pattern(rows, cols, 17)


def test_register_pattern_rejects_bad_arguments():
    r = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="cols: expected shape"):
        register_pattern(r, r[:1], 4)
    with pytest.raises(TypeError, match="rows: expected an integer dtype"):
        register_pattern(r.float(), r, 4)
    with pytest.raises(ValueError, match="rows: entries do not fit int32"):
        register_pattern(torch.tensor([2 ** 33, 1]), r, 4)


def _slots_problem(dtype, n=53, A=7, seed=3, lengths=None, adapters=None):
    """Slots with three patterns of different k (two slots share one), one slot without."""
    g = torch.Generator().manual_seed(seed)
    ks = [0, 40, 97, 13]
    pats = [random_pattern(n, k, g) for k in ks]
    plans = [register_pattern(r, c, n) for r, c in pats]
    table = SlotPatterns(n, A)
    slot_k = {}
    for a, p in zip(range(A), [1, 2, 1, None, 3, 0, 2]):
        if p is not None:
            table.set(a, plans[p])
        slot_k[a] = 0 if p is None else ks[p]
    kcap = max(ks) + 4
    if lengths is None:
        lengths = [1, 1, 2, 1, 40, 1, 0, 1, 1, 3, 1, 2, 1, 1, 33, 1, 1]
        adapters = [0, 1, 2, 6, 4, 0, 2, -1, 3, 5, 2, 1, 4, 6, 1, 0, -1]
    T = sum(lengths)
    indptr = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    seg = torch.tensor(adapters, dtype=torch.int32)
    z = torch.randn(T, n, generator=g, dtype=torch.float64).to(dtype)
    dl = torch.randn(A, n, generator=g, dtype=torch.float64).to(dtype)
    s = torch.randn(A, kcap, generator=g, dtype=torch.float64).to(dtype)
    return z, indptr, seg, dl, s, table


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_slots_matches_reference(dtype):
    z, indptr, seg, dl, s, table = _slots_problem(dtype)
    h = rotate_slots(z, indptr, seg, dl, s, table)
    ref = rotate_slots_reference(z.double(), indptr, seg, dl.double(), s.double(), table)
    assert h.dtype == dtype
    assert rel_err(h, ref) < TOL[dtype]
    # values beyond a slot's k never matter
    s2 = s.clone()
    for a in range(s.shape[0]):
        s2[a, table.k(a):] = 1e4
    assert torch.equal(rotate_slots(z, indptr, seg, dl, s2, table), h)


def test_rotate_slots_equals_rotate_segments_per_adapter():
    """Same k for every slot: rotate_slots == rotate_segments with an (A, k) pattern."""
    g = torch.Generator().manual_seed(9)
    n, A, k = 31, 4, 25
    pats = [random_pattern(n, k, g) for _ in range(A)]
    rows = torch.stack([p[0] for p in pats])
    cols = torch.stack([p[1] for p in pats])
    table = SlotPatterns(n, A)
    for a in range(A):
        table.set(a, register_pattern(rows[a], cols[a], n))
    z = torch.randn(40, n, generator=g)
    dl, s = torch.randn(A, n, generator=g), torch.randn(A, k, generator=g)
    indptr = torch.tensor([0, 1, 2, 3, 20, 40], dtype=torch.int32)
    seg = torch.tensor([0, 1, 3, 2, 0], dtype=torch.int32)
    assert torch.equal(rotate_slots(z, indptr, seg, dl, s, table),
                       rotate_segments(z, indptr, seg, dl, s, rows, cols))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_slots_batch_invariant(dtype):
    """A row's output is bitwise equal alone and in a mixed batch (mixed tiles of several
    plans, a dense slot beside sparse ones)."""
    n, A = 45, 7
    lengths = [1] * 60 + [20]
    adapters = [i % A for i in range(60)] + [2]
    z, indptr, seg, dl, s, table = _slots_problem(dtype, n=n, A=A, seed=4, lengths=lengths,
                                                  adapters=adapters)
    full = rotate_slots(z, indptr, seg, dl, s, table)
    one = torch.tensor([0, 1], dtype=torch.int32)
    for t in (0, 5, 13, 33, 59, 60, 70):
        a = adapters[t] if t < 60 else 2
        alone = rotate_slots(z[t:t + 1], one, torch.tensor([a], dtype=torch.int32), dl, s, table)
        assert torch.equal(alone, full[t:t + 1]), t


def test_rotate_slots_backward_matches_reference():
    z, indptr, seg, dl, s, table = _slots_problem(torch.float64, seed=6)
    leaves = [t.clone().requires_grad_() for t in (z, dl, s)]
    rotate_slots(leaves[0], indptr, seg, leaves[1], leaves[2], table).square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (z, dl, s)]
    rotate_slots_reference(ref[0], indptr, seg, ref[1], ref[2], table).square().sum().backward()
    for got, want, name in zip(leaves, ref, ("z", "dl", "s")):
        assert rel_err(got.grad, want.grad) < 1e-12, name


def test_rotate_planned_opcheck_and_gradcheck():
    z, indptr, seg, dl, s, table = _slots_problem(torch.float64, n=11, seed=7,
                                                  lengths=[3, 1, 1, 4, 2],
                                                  adapters=[1, 4, -1, 2, 0])
    tensors = table.table.tensors()
    zr, dlr, sr = (t.clone().requires_grad_() for t in (z, dl, s))
    torch.library.opcheck(torch.ops.frod_rt.rotate_planned.default,
                          (zr, indptr, seg, dlr, sr, *tensors))
    torch.library.opcheck(torch.ops.frod_rt.rotate_planned_backward.default,
                          (z, torch.randn_like(z), indptr, seg, dl, s, *tensors, True, True))
    assert torch.autograd.gradcheck(
        lambda z, dl, s: rotate_slots(z, indptr, seg, dl, s, table), (zr, dlr, sr))


def test_slot_patterns_set_clear_and_errors():
    g = torch.Generator().manual_seed(8)
    n = 19
    p1 = register_pattern(*random_pattern(n, 10, g), n)
    p2 = register_pattern(*random_pattern(n, 30, g), n)
    t = SlotPatterns(n, 3)
    t.set(0, p1)
    t.set(1, p2)
    t.set(2, p1)
    assert t.max_k() == 30 and t.k(0) == 10 and len(t.table.plans) == 2
    t.clear(1)
    assert t.max_k() == 10 and t.plan(1) is None and t.k(1) == 0
    with pytest.raises(IndexError, match="slot 3 is out of range"):
        t.set(3, p1)
    with pytest.raises(ValueError, match="built for n = 7"):
        t.set(0, register_pattern(*random_pattern(7, 3, g), 7))
    with pytest.raises(TypeError, match="expected a PatternPlan"):
        t.set(0, "p")
    t.set(1, p2)
    z = torch.randn(2, n)
    indptr = torch.tensor([0, 2], dtype=torch.int32)
    seg = torch.tensor([1], dtype=torch.int32)
    with pytest.raises(ValueError, match="s: has 20 columns but a slot's pattern has k = 30"):
        rotate_slots(z, indptr, seg, torch.zeros(3, n), torch.zeros(3, 20), t)
    with pytest.raises(ValueError, match="table: has 3 slots, dl/s have 2"):
        rotate_slots(z, indptr, seg, torch.zeros(2, n), torch.zeros(2, 30), t)


def test_rotate_segments_follows_in_place_pattern_changes():
    """The per-tensor table cache must notice an in-place change of rows/cols."""
    g = torch.Generator().manual_seed(10)
    n, k = 21, 15
    rows, cols = random_pattern(n, k, g)
    z, dl, s = torch.randn(9, n, generator=g), torch.randn(2, n, generator=g), torch.randn(2, k, generator=g)
    indptr = torch.tensor([0, 4, 9], dtype=torch.int32)
    seg = torch.tensor([1, 0], dtype=torch.int32)
    h1 = rotate_segments(z, indptr, seg, dl, s, rows, cols)
    r2, c2 = random_pattern(n, k, g)
    rows.copy_(r2)
    cols.copy_(c2)
    h2 = rotate_segments(z, indptr, seg, dl, s, rows, cols)
    assert torch.equal(h2, rotate_segments(z, indptr, seg, dl, s, r2.clone(), c2.clone()))
    assert not torch.equal(h1, h2)


@pytest.mark.gpu
def test_cuda_tensors_without_cuda_kernels_fall_back_with_one_warning(monkeypatch):
    """A build without CUDA kernels runs the reference on CUDA tensors (one warning)."""
    from frod_rt.ops import cuda_fallback
    monkeypatch.setattr(cuda_fallback, "cuda_kernels_built", lambda: False)
    monkeypatch.setattr(cuda_fallback, "_warned", False)
    z, indptr, seg, dl, s, _ = _slots_problem(torch.float32)
    g = torch.Generator().manual_seed(5)
    rows, cols = random_pattern(z.shape[1], 20, g)
    args = [t.cuda() for t in (z, indptr, seg, dl, s[:, :20], rows, cols)]
    with pytest.warns(RuntimeWarning, match="without CUDA kernels"):
        out = rotate_segments(*args)
    ref = rotate_segments(*[t.cpu() for t in args])
    assert rel_err(out.cpu(), ref) < TOL[torch.float32]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rotate_segments(*args)  # no second warning


def test_rotate_slots_torch_compile_fullgraph():
    z, indptr, seg, dl, s, table = _slots_problem(torch.float32, seed=11)
    fn = torch.compile(lambda z: rotate_slots(z, indptr, seg, dl, s, table) * 2, fullgraph=True,
                       backend="aot_eager")
    ref = rotate_slots_reference(z.double(), indptr, seg, dl.double(), s.double(), table)
    assert rel_err(fn(z), 2 * ref) < TOL[torch.float32]


def test_rotation_is_visible_to_the_profiler():
    """Eager inference skips the dispatcher for speed, but not while torch.profiler records:
    the rotation must appear as its op (an engine profile once missed ~10% of its time)."""
    z, indptr, seg, dl, s, table = _slots_problem(torch.float32, seed=8)
    with torch.inference_mode():
        plain = rotate_slots(z, indptr, seg, dl, s, table)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            seen = rotate_slots(z, indptr, seg, dl, s, table)
    assert torch.equal(plain, seen)
    assert "frod_rt::rotate_planned" in {e.name for e in prof.events()}
