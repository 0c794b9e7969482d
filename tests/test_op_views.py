"""Every op gives the same result for strided, transposed, offset and expanded views of its
tensor arguments as for contiguous copies (issue 12 item 4: temporaries kept alive for the
whole C++ call)."""
from __future__ import annotations

import pytest
import torch

from frod_problems import make_problem
from frod_rt.ops import frod_linear, rotate_segments, segments_from_ids


def _views(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Non-contiguous views holding the values of ``t`` (1-D or 2-D)."""
    out = {}
    if t.dim() == 2:
        out["transposed"] = t.t().contiguous().t()
        wide = torch.zeros(t.shape[0], t.shape[1] * 2 + 3, dtype=t.dtype)
        wide[:, 1::2][:, : t.shape[1]] = t
        out["strided"] = wide[:, 1::2][:, : t.shape[1]]
        if t.shape[0] > 0:
            same = (t == t[:1]).all()
            if same:  # only expandable when every row is equal
                out["expanded"] = t[:1].expand_as(t)
    else:
        wide = torch.zeros(t.shape[0] * 2 + 1, dtype=t.dtype)
        wide[1::2][: t.shape[0]] = t
        out["strided"] = wide[1::2][: t.shape[0]]
        if t.numel() > 0 and bool((t == t[0]).all()):
            out["expanded"] = t[:1].expand_as(t)
    buf = torch.zeros(t.numel() + 5, dtype=t.dtype)
    buf[5:] = t.reshape(-1)
    out["offset"] = buf[5:].view(t.shape)
    for name, v in out.items():
        assert torch.equal(v, t), name
    return out


def _problem(per_adapter=False):
    p = make_problem(dtype=torch.float32, per_adapter=per_adapter, seed=3)
    p.dl[2] = p.dl[0]  # some equal rows so the tables also have expandable variants below
    return p


ROT_FIELDS = ("z", "seg_indptr", "seg_adapter", "dl", "s", "rows", "cols")


@pytest.mark.parametrize("per_adapter", [False, True])
@pytest.mark.parametrize("field", ROT_FIELDS)
def test_rotate_segments_views(field, per_adapter):
    p = _problem(per_adapter)
    args = dict(zip(ROT_FIELDS, p.args()))
    want = rotate_segments(**args)
    for kind, v in _views(args[field]).items():
        got = rotate_segments(**{**args, field: v})
        assert torch.equal(got, want), (field, kind)


def test_rotate_segments_expanded_tables():
    """dl / s of one adapter broadcast to A rows (stride 0)."""
    p = _problem()
    A = p.dl.shape[0]
    dl = p.dl[:1].expand(A, -1)
    s = p.s[1:2].expand(A, -1)
    want = rotate_segments(p.z, p.seg_indptr, p.seg_adapter, dl.contiguous(), s.contiguous(),
                           p.rows, p.cols)
    got = rotate_segments(p.z, p.seg_indptr, p.seg_adapter, dl, s, p.rows, p.cols)
    assert torch.equal(got, want)


@pytest.mark.parametrize("field", ("z", "dl", "s"))
def test_rotate_segments_backward_views(field):
    p = _problem()
    args = dict(zip(ROT_FIELDS, p.args()))
    gh = torch.randn(p.z.shape, generator=torch.Generator().manual_seed(2))

    def grads(a):
        leaves = {k: a[k].detach().clone().requires_grad_() if k in ("z", "dl", "s") else a[k]
                  for k in a}
        # the views themselves are leaves: keep the layout by cloning with preserve_format
        for k in ("z", "dl", "s"):
            if not a[k].is_contiguous():
                leaves[k] = a[k].detach().requires_grad_()
        rotate_segments(**leaves).backward(gh)
        return [leaves[k].grad.clone() for k in ("z", "dl", "s")]

    want = grads(args)
    for kind, v in _views(args[field]).items():
        if kind == "expanded":
            continue
        got = grads({**args, field: v.clone() if v.is_contiguous() else v})
        for g, w, name in zip(got, want, ("z", "dl", "s")):
            assert torch.equal(g, w), (field, kind, name)


LIN_FIELDS = ("x", "weight", "bias", "V", "U", "seg_indptr", "seg_adapter", "dl", "s",
              "rows", "cols")


def _linear_args():
    p = _problem()
    g = torch.Generator().manual_seed(4)
    T, n = p.z.shape
    out = 23
    return dict(x=p.z, weight=torch.randn(out, n, generator=g), bias=torch.randn(out, generator=g),
                V=torch.randn(n, n, generator=g) / n ** 0.5,
                U=torch.randn(out, n, generator=g) / n ** 0.5, seg_indptr=p.seg_indptr,
                seg_adapter=p.seg_adapter, dl=p.dl, s=p.s, rows=p.rows, cols=p.cols)


@pytest.mark.parametrize("field", LIN_FIELDS)
def test_frod_linear_views(field):
    args = _linear_args()
    with torch.no_grad():
        want = frod_linear(**args)
        for kind, v in _views(args[field]).items():
            got = frod_linear(**{**args, field: v})
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{field} {kind}")


def test_segments_from_ids_views():
    ids = torch.tensor([0, 0, 1, -1, -1, 2, 2, 2, 0], dtype=torch.int64)
    want = segments_from_ids(ids, 3)
    for kind, v in _views(ids).items():
        got = segments_from_ids(v, 3)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), kind


def test_segments_from_ids_rejects_int64_beyond_int32():
    for bad in (2 ** 32, 2 ** 31, -(2 ** 31) - 2):
        ids = torch.tensor([0, bad], dtype=torch.int64)
        with pytest.raises(ValueError, match=r"adapter_ids\[1\] = .* does not fit int32"):
            segments_from_ids(ids, 3)
