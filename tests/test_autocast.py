"""Mixed precision: autocast (bf16, and fp16 with GradScaler) training and inference on both
compute paths, with several adapters in one batch. Gradients and outputs are compared with
the same model run in float32 (no autocast)."""
from __future__ import annotations

import pytest
import torch

from frod_rt import FrodConfig, get_frod_model

from frod_models import BERT_TARGETS, tiny_bert

# relative (Frobenius) error allowed against float32, per autocast dtype
TOL = {torch.bfloat16: 4e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def _model(path):
    cfg = lambda seed: FrodConfig(BERT_TARGETS, sparse_rate=0.1, init_std=0.05, seed=seed,
                                  compute_path=path, progress=False)
    fm = get_frod_model(tiny_bert(), cfg(0), adapter_name="a")
    fm.add_adapter("b", cfg(3))          # its own patterns: per-adapter indices in a batch
    return fm


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _run(fm, ids, names, dtype, scaler=None):
    fm.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast(
        "cpu", enabled=False)
    with ctx:
        out = fm(input_ids=ids, adapter_names=names).last_hidden_state
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        loss = (out.float() * probe).sum()
    (scaler.scale(loss) if scaler is not None else loss).backward()
    grads = {n: p.grad.detach().clone() for n, p in fm.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


# dense: one adapter over every row (the dense path needs a single adapter); factored: mixed rows
@pytest.mark.parametrize("path,names", [("dense", ["a"] * 4),
                                        ("factored", ["a", "b", "__base__", "b"])])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_matches_float32(path, names, dtype):
    fm = _model(path)
    ids = torch.randint(0, 60, (4, 11), generator=torch.Generator().manual_seed(1))
    ref_out, ref_g = _run(fm, ids, names, None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if dtype == torch.float16 \
        else None
    out, g = _run(fm, ids, names, dtype, scaler)
    assert out.dtype == torch.float32
    assert _rel(out, ref_out) < TOL[dtype]
    assert set(g) == set(ref_g) and len(g) == 2 * 12 * len(set(names) - {"__base__"})
    for n in ref_g:
        scale = scaler.get_scale() if scaler is not None else 1.0
        assert g[n].dtype == torch.float32
        assert _rel(g[n] / scale, ref_g[n]) < 3 * TOL[dtype], n
    if scaler is not None:  # GradScaler: unscale, step, update with finite grads
        opt = torch.optim.AdamW([p for p in fm.parameters() if p.requires_grad], lr=1e-3)
        before = fm.model.encoder.layer[0].attention.self.query.frod_dl["a"].detach().clone()
        scaler.step(opt)
        scaler.update()
        after = fm.model.encoder.layer[0].attention.self.query.frod_dl["a"]
        assert torch.isfinite(after).all() and not torch.equal(before, after)


@pytest.mark.parametrize("path", ["dense", "factored", "replace"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_inference(path, dtype):
    fm = _model(path)
    ids = torch.randint(0, 60, (4, 7), generator=torch.Generator().manual_seed(2))
    names = ["b", "a", "__base__", "a"]
    with torch.no_grad():
        ref = fm(input_ids=ids, adapter_names=names).last_hidden_state
        with torch.autocast("cpu", dtype=dtype):
            out = fm(input_ids=ids, adapter_names=names).last_hidden_state
            one = fm(input_ids=ids).last_hidden_state            # active adapter on every row
        ref_one = fm(input_ids=ids).last_hidden_state
    assert _rel(out.float(), ref) < TOL[dtype]
    assert _rel(one.float(), ref_one) < TOL[dtype]
