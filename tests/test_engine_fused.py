"""Fused base projections (q,k,v and gate,up as one GEMM each) without a second weight copy."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from frod_rt.engine.models.fused import fuse_linears, shares_storage
from frod_rt.engine.models.llama import LlamaModel
from frod_rt.engine.toy import toy_llama


@pytest.mark.parametrize("dt,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fuse_linears_views_and_outputs(dt, tol):
    torch.manual_seed(0)
    mods = [nn.Linear(7, 5).to(dt), nn.Linear(7, 3, bias=False).to(dt), nn.Linear(7, 4).to(dt)]
    x = torch.randn(11, 7, dtype=dt)
    want = [m(x) for m in mods]
    fused = fuse_linears(mods)
    assert fused.weight.shape == (12, 7) and fused.bias.shape == (12,)
    assert shares_storage(fused, mods)
    assert mods[1].bias is None and torch.equal(fused.bias[5:8], torch.zeros(3, dtype=dt))
    for got, ref, m in zip(fused(x), want, mods):
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)       # HF's own forward unchanged
    with pytest.raises(ValueError, match="input size"):
        fuse_linears([nn.Linear(3, 2), nn.Linear(4, 2)])
    with pytest.raises(TypeError):
        fuse_linears([])


def test_llama_wrapper_holds_one_weight_copy():
    model = toy_llama(vocab_size=31, hidden=24, eos_token_id=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    n_bytes = sum(p.numel() for p in model.parameters())
    lm = LlamaModel(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert sum(p.numel() for p in model.parameters()) == n_bytes
    layer = model.model.layers[0]
    at, mlp = layer.self_attn, layer.mlp
    assert shares_storage(lm.layers[0]["qkv"].fused, [at.q_proj, at.k_proj, at.v_proj])
    assert shares_storage(lm.layers[0]["gate_up"].fused, [mlp.gate_proj, mlp.up_proj])
    assert lm.layers[0]["q_proj"].weight.data_ptr() == lm.layers[0]["qkv"].fused.weight.data_ptr()
