"""Sparse patterns: deterministic, off-diagonal, unique, sorted, sized by the rate."""
from __future__ import annotations

import pytest
import torch

from frod_rt.method import pattern_size, sparse_pattern


def _check(rows, cols, n, k):
    assert rows.dtype == torch.int32 and cols.dtype == torch.int32
    assert rows.shape == (k,) and cols.shape == (k,)
    if k:
        assert int(rows.min()) >= 0 and int(rows.max()) < n
        assert int(cols.min()) >= 0 and int(cols.max()) < n
    assert not bool((rows == cols).any())
    flat = rows.long() * n + cols.long()
    assert bool((flat[1:] > flat[:-1]).all())  # sorted by (row, col) and unique


@pytest.mark.parametrize("n,rate", [(2, 1.0), (7, 0.3), (24, 0.02), (37, 0.9), (384, 0.01),
                                    (1531, 0.005)])
def test_pattern_properties(n, rate):
    k = pattern_size(n, rate)
    rows, cols = sparse_pattern("fp", "cat:nxn", n, k)
    _check(rows, cols, n, k)
    r2, c2 = sparse_pattern("fp", "cat:nxn", n, k)
    assert torch.equal(rows, r2) and torch.equal(cols, c2)


def test_pattern_size():
    assert pattern_size(384, 0.01) == round(384 * 384 * 0.01)
    assert pattern_size(4, 1.0) == 12  # capped at n(n-1)
    assert pattern_size(1, 0.5) == 0
    assert pattern_size(10, 0.0) == 0
    with pytest.raises(ValueError):
        pattern_size(10, 1.5)


def test_pattern_depends_on_key():
    n, k = 50, 100
    a = sparse_pattern("fp1", "c", n, k)
    assert not torch.equal(a[0] * n + a[1], (lambda r: r[0] * n + r[1])(sparse_pattern("fp2", "c", n, k)))
    assert not torch.equal(a[0] * n + a[1], (lambda r: r[0] * n + r[1])(sparse_pattern("fp1", "d", n, k)))


def test_full_and_empty():
    rows, cols = sparse_pattern("fp", "c", 5, 20)  # every off-diagonal position
    _check(rows, cols, 5, 20)
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) == 20
    rows, cols = sparse_pattern("fp", "c", 5, 0)
    assert rows.numel() == 0
    with pytest.raises(ValueError, match="exceeds"):
        sparse_pattern("fp", "c", 5, 21)


def test_large_width_without_meshgrid():
    """n = 3000 at 1%: 90k entries drawn from 9M positions, spread over rows and columns."""
    n = 3000
    k = pattern_size(n, 0.01)
    rows, cols = sparse_pattern("fp", "wide", n, k)
    _check(rows, cols, n, k)
    counts = torch.bincount(rows.long(), minlength=n).double()
    assert abs(counts.mean().item() - k / n) < 1e-9
    assert counts.std().item() < 3 * (k / n) ** 0.5  # roughly binomial, no clustering
    assert abs(cols.double().mean().item() - (n - 1) / 2) < 0.02 * n
