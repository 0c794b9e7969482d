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


def test_group_of_roles_over_two_bases_in_one_batch(tmp_path, monkeypatch):
    """q,k,v and gate,up adapted by one adapter on frod_rt's basis and one on PEFT's, in one
    batch with base rows: the LinearGroup path groups the adapted rows by basis (one X V_b per
    basis and role) and every row's greedy tokens equal its own reference."""
    import copy

    from engine_helpers import hf_greedy
    from frod_rt.engine import Engine
    from frod_rt.engine.models import grouped
    from frod_rt.engine.models.slots import SlotTables
    from frod_rt.engine.toy import load_merged, merged_weights, random_adapter
    from frod_rt.method import FrodConfig, get_frod_model
    from frod_rt.method.decompose import decompose

    targets = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
    model = toy_llama(vocab_size=53, hidden=24, intermediate=36, eos_token_id=None, std=0.1,
                      dtype=torch.float64)
    native = random_adapter(model, tmp_path / "native", targets, scale=0.3, seed=2,
                            cache_dir=tmp_path)
    dec = decompose(model, targets, basis="peft", cache_dir=tmp_path, progress=False)
    torch.manual_seed(3)
    fm = get_frod_model(copy.deepcopy(model), FrodConfig(targets, init_std=0.05, progress=False,
                                                         category_mode="per_role"),
                        decomposition=dec)
    fm.save_adapter(tmp_path / "pbasis")
    fm.eval()
    merged = copy.deepcopy(model)
    load_merged(merged, merged_weights(merged, native, cache_dir=tmp_path))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 53, (int(n),), generator=g).tolist() for n in (5, 7, 4)]
    want = {"native": [hf_greedy(merged, p, 5) for p in prompts],
            None: [hf_greedy(model, p, 5) for p in prompts]}
    with fm.adapter_routing(["default"]):
        want["pbasis"] = [hf_greedy(fm, p, 5) for p in prompts]
    assert want["pbasis"] != want[None] and want["native"] != want[None]

    seen = {"groups": 0, "rotations": 0}
    real_groups, real_rotate = SlotTables.basis_groups, grouped.rotate_slots

    def groups(self, slots):
        out = real_groups(self, slots)
        seen["groups"] = max(seen["groups"], len(out))
        return out

    def rotate(*a):
        seen["rotations"] += 1
        return real_rotate(*a)
    monkeypatch.setattr(SlotTables, "basis_groups", groups)
    monkeypatch.setattr(grouped, "rotate_slots", rotate)
    eng = Engine.load(copy.deepcopy(model), adapters={"native": tmp_path / "native",
                                                      "pbasis": tmp_path / "pbasis"},
                      cache_dir=tmp_path)
    names = ["native", "pbasis", None] * len(prompts)
    batch = [p for p in prompts for _ in range(3)]
    res = eng.generate(batch, adapters=names, max_tokens=5, ignore_eos=True)
    for i, r in enumerate(res):
        assert r.token_ids == want[names[i]][i // 3], names[i]
    assert seen["groups"] == 2 and seen["rotations"] > 0     # the grouped, two-basis path ran
    eng.close()
