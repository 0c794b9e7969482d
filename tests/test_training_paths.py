"""The replace training path: roles of one input (shared-input categories) compute ``X V``
once per call, with the same gradients as computing it per role, with and without gradient
checkpointing."""
from __future__ import annotations

import pytest
import torch

from frod_rt import FrodConfig, get_frod_model
from frod_rt.method.state import FrodState

from frod_models import LLAMA_TARGETS, tiny_llama


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def _model():
    fm = get_frod_model(tiny_llama(dtype=torch.float64),
                        FrodConfig(LLAMA_TARGETS, sparse_rate=0.1, init_std=0.1,
                                   compute_path="replace", category_mode="shared_input",
                                   progress=False))
    return fm.train()


def _grads(fm, ids):
    fm.zero_grad(set_to_none=True)
    fm(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}


def _record(monkeypatch):
    calls, results = [], []
    real = FrodState.xv

    def xv(self, x, x2, V, dtype):
        z = real(self, x, x2, V, dtype)
        calls.append(id(x))
        if not any(z is r for r in results):
            results.append(z)
        return z
    monkeypatch.setattr(FrodState, "xv", xv)
    return calls, results


def test_roles_of_one_input_share_one_xv(monkeypatch):
    fm = _model()
    ids = torch.randint(1, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    per_role = None
    with monkeypatch.context() as m:        # reference: every role its own X V
        m.setattr(FrodState, "xv", lambda self, x, x2, V, dtype: x2 @ V.to(dtype))
        per_role = _grads(fm, ids)
    calls, results = _record(monkeypatch)
    shared = _grads(fm, ids)
    layers = fm.model.config.num_hidden_layers
    assert len(calls) == 7 * layers          # q, k, v, o, gate, up, down
    assert len(results) == 4 * layers        # one X V for q,k,v; o; one for gate,up; down
    assert set(shared) == set(per_role) and shared
    for n in shared:
        torch.testing.assert_close(shared[n], per_role[n], rtol=1e-10, atol=1e-12, msg=n)
    assert fm.state._xv is None              # nothing kept after the call


@pytest.mark.parametrize("reentrant", [True, False])
def test_shared_xv_under_gradient_checkpointing(reentrant):
    fm = _model()
    ids = torch.randint(1, 60, (3, 7), generator=torch.Generator().manual_seed(1))
    ref = _grads(fm, ids)
    fm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    got = _grads(fm, ids)
    assert set(got) == set(ref) and ref
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-12, msg=n)


def test_no_sharing_outside_a_model_call_or_without_gradients():
    fm = _model()
    layer = fm.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, layer.in_features, dtype=torch.float64)
    y1 = layer(x)                      # called directly: no FrodModel call, nothing kept
    assert fm.state._xv is None
    x.data.add_(1.0)                   # a .data change (no version bump) cannot go stale
    assert not torch.allclose(layer(x), y1)
    with torch.no_grad():
        fm(input_ids=torch.ones(1, 3, dtype=torch.long))
    assert fm.state._xv is None
