"""Bad input to the ops raises a clear TypeError / ValueError naming the argument."""
from __future__ import annotations

import re

import pytest
import torch

from frod_problems import make_problem
from frod_rt import _C
from frod_rt._core import view
from frod_rt.ops import frod_linear, rotate_segments, segments_from_ids
from frod_rt.ops.plans import table_for_pattern


@pytest.fixture
def p():
    return make_problem(dtype=torch.float32)


def _call(p, **over):
    args = dict(z=p.z, seg_indptr=p.seg_indptr, seg_adapter=p.seg_adapter, dl=p.dl, s=p.s,
                rows=p.rows, cols=p.cols)
    args.update(over)
    return rotate_segments(**args)


@pytest.mark.parametrize("field,value,exc,pattern", [
    ("z", "fn", TypeError, "z: expected a torch.Tensor"),
    ("z", lambda p: p.z[0], ValueError, "z: expected a 2-D"),
    ("z", lambda p: p.z.int(), TypeError, "z: expected dtype"),
    ("dl", lambda p: p.dl.double(), TypeError, "dl: dtype"),
    ("s", lambda p: p.s.half(), TypeError, "s: dtype"),
    ("dl", lambda p: p.dl[:, :-1], ValueError, r"dl: expected shape \(A, 67\)"),
    ("s", lambda p: p.s[:-1], ValueError, r"s: expected shape \(5, k\) to match dl.s 5 adapters"),
    ("rows", lambda p: p.rows.long(), TypeError, "rows: expected dtype int32"),
    ("cols", lambda p: p.cols[:-1], ValueError, "cols: expected shape"),
    ("rows", lambda p: p.rows.expand(5, -1).contiguous()[:4], ValueError, "rows: expected shape"),
    ("seg_indptr", lambda p: p.seg_indptr[:-1], ValueError, "seg_indptr: expected shape"),
    ("seg_adapter", lambda p: p.seg_adapter.float(), TypeError, "seg_adapter: expected dtype int32"),
    ("seg_adapter", lambda p: p.seg_adapter[None], ValueError, "seg_adapter: expected a 1-D"),
])
def test_metadata_errors(p, field, value, exc, pattern):
    bad = value(p) if callable(value) else value
    with pytest.raises(exc, match=pattern):
        _call(p, **{field: bad})


@pytest.mark.parametrize("field,mutate,pattern", [
    ("rows", lambda t: t.__setitem__(3, 67), r"rows\[3\] = 67 is out of range \[0, 67\)"),
    ("cols", lambda t: t.__setitem__(5, -1), r"cols\[5\] = -1 is out of range"),
    ("seg_indptr", lambda t: t.__setitem__(2, 70), "seg_indptr must be non-decreasing"),
    ("seg_indptr", lambda t: t.__setitem__(0, 1), r"seg_indptr\[0\] must be 0"),
    ("seg_indptr", lambda t: t.__setitem__(-1, 130), r"seg_indptr\[-1\] must equal the number of rows"),
    ("seg_adapter", lambda t: t.__setitem__(1, 5), r"seg_adapter\[1\] = 5 is out of range \[-1, 5\)"),
    ("seg_adapter", lambda t: t.__setitem__(1, -2), r"seg_adapter\[1\] = -2 is out of range"),
])
def test_value_errors(p, field, mutate, pattern):
    t = getattr(p, field).clone()
    mutate(t)
    with pytest.raises(ValueError, match=pattern):
        _call(p, **{field: t})


def test_diagonal_entry_rejected(p):
    rows = p.rows.clone()
    rows[4] = p.cols[4]
    with pytest.raises(ValueError, match="on the diagonal"):
        _call(p, rows=rows)


def test_per_adapter_pattern_error_names_adapter():
    p = make_problem(dtype=torch.float32, per_adapter=True)
    rows = p.rows.clone()
    rows[2, 7] = 1000
    with pytest.raises(ValueError, match=r"rows\[2, 7\] = 1000"):
        _call(p, rows=rows)


def test_device_mismatch_named(p):
    meta = p.dl.to("meta")
    with pytest.raises(TypeError, match="dl: expected a tensor on cpu"):
        _call(p, dl=meta)


def _table_views(p):
    table = table_for_pattern(p.rows, p.cols, p.z.shape[1], p.dl.shape[0])
    return [view(t) for t in table.tensors()]


def test_backward_checks_grad_shape(p):
    """The C++ layer validates too: calling the binding directly with a wrong grad shape."""
    gh = torch.zeros(p.z.shape[0], p.z.shape[1] + 1)
    with pytest.raises(ValueError, match=re.escape("grad_h: expected shape (131, 67)")):
        _C.rotate_backward(view(p.z), view(gh), view(p.seg_indptr), view(p.seg_adapter),
                           view(p.dl), view(p.s), *_table_views(p))


def test_binding_rejects_wrong_h_dtype(p):
    h = torch.empty(p.z.shape, dtype=torch.float64)
    with pytest.raises(TypeError, match="h: expected dtype float32"):
        _C.rotate_forward(view(p.z), view(p.seg_indptr), view(p.seg_adapter), view(p.dl),
                          view(p.s), *_table_views(p), view(h))


def test_binding_rejects_garbage_descriptor(p):
    with pytest.raises(TypeError):
        _C.rotate_forward("nope", view(p.seg_indptr), view(p.seg_adapter), view(p.dl),
                          view(p.s), *_table_views(p), view(p.z))


def test_segments_from_ids_errors():
    with pytest.raises(ValueError, match=r"adapter_ids\[2\] = 4 is out of range \[-1, 4\)"):
        segments_from_ids(torch.tensor([0, 1, 4]), 4)
    with pytest.raises(TypeError, match="adapter_ids: expected an integer dtype"):
        segments_from_ids(torch.tensor([0.0, 1.0]), 4)


def test_frod_linear_errors(p):
    x = torch.randn(p.z.shape)
    W = torch.randn(9, 67)
    V = torch.randn(67, 67)
    U = torch.randn(9, 67)
    rest = (p.seg_indptr, p.seg_adapter, p.dl, p.s, p.rows, p.cols)
    with pytest.raises(ValueError, match=r"weight: expected shape \(out_features, 67\)"):
        frod_linear(x, W[:, :-1], None, V, U, *rest)
    with pytest.raises(ValueError, match=r"V: expected shape \(67, 67\)"):
        frod_linear(x, W, None, V[:-1], U, *rest)
    with pytest.raises(ValueError, match=r"U: expected shape \(9, 67\)"):
        frod_linear(x, W, None, V, U.t(), *rest)
    with pytest.raises(ValueError, match=r"bias: expected shape \(9,\)"):
        frod_linear(x, W, torch.zeros(8), V, U, *rest)
    with pytest.raises(TypeError, match="U: dtype"):
        frod_linear(x, W, None, V, U.double(), *rest)
