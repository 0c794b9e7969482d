"""Shared-input categories (DESIGN.md 2.1): roles reading one input share a basis V."""
from __future__ import annotations

import pytest
import torch

from frod_models import BERT_TARGETS, LLAMA_TARGETS, tiny_bert, tiny_llama
from frod_rt import FrodConfig, get_frod_model
from frod_rt.method import Decomposition, decompose
from frod_rt.method.categories import decomposition_category_mode
from frod_rt.method.joint import joint_basis


def test_joint_basis_blocks_of_different_heights():
    g = torch.Generator().manual_seed(0)
    Ws = [torch.randn(o, 9, generator=g, dtype=torch.float64) for o in (9, 3, 3, 9, 3, 3)]
    V, Bs = joint_basis(Ws, 1e-3)
    assert V.shape == (9, 9) and [tuple(b.shape) for b in Bs] == [tuple(w.shape) for w in Ws]
    for W, B in zip(Ws, Bs):
        assert torch.linalg.norm(B @ V.T - W) / torch.linalg.norm(W) < 1e-13
    # fewer stacked rows than inputs: the SVD branch
    V, Bs = joint_basis([torch.randn(2, 9, generator=g, dtype=torch.float64),
                         torch.randn(3, 9, generator=g, dtype=torch.float64)], 1e-3)
    assert torch.allclose(V.T @ V, torch.eye(9, dtype=torch.float64), atol=1e-12)


def test_llama_groups_and_reconstruction(tmp_path):
    model = tiny_llama(dtype=torch.float64)
    d = decompose(model, LLAMA_TARGETS, cache_dir=tmp_path, progress=False,
                  category_mode="shared_input")
    keys = sorted(d.categories)
    assert keys == sorted([
        "model.layers.*.self_attn.{q_proj,k_proj,v_proj}:20+10+10x20",
        "model.layers.*.mlp.{gate_proj,up_proj}:29+29x20",
        "model.layers.*.self_attn.o_proj:20x20", "model.layers.*.mlp.down_proj:20x29"])
    qkv = d.categories["model.layers.*.self_attn.{q_proj,k_proj,v_proj}:20+10+10x20"]
    assert qkv.layers == [f"model.layers.{i}.self_attn.{r}" for i in range(2)
                          for r in ("q_proj", "k_proj", "v_proj")]
    assert qkv.out_features == 40 and qkv.in_features == 20
    assert max(d.reconstruction_errors(model).values()) < 1e-13
    assert decomposition_category_mode(d.categories) == "shared_input"
    per_role = decompose(model, LLAMA_TARGETS, cache_dir=tmp_path, progress=False)
    assert per_role.fingerprint != d.fingerprint and len(per_role.categories) == 7
    # the cache and save/load keep per-layer shapes
    again = decompose(model, LLAMA_TARGETS, cache_dir=tmp_path, progress=False,
                      category_mode="shared_input")
    assert torch.equal(again.categories[qkv.key].V, qkv.V)
    d.save(tmp_path / "saved")
    back = Decomposition.load(tmp_path / "saved")
    assert back.layers["model.layers.1.self_attn.k_proj"].U.shape == (10, 20)


def test_subset_of_roles_and_bert(tmp_path):
    model = tiny_llama()
    d = decompose(model, ["q_proj", "v_proj", "o_proj"], cache_dir=tmp_path, progress=False,
                  category_mode="shared_input")
    # a targeted role brings its siblings: the category is the model's, not the targets'
    assert sorted(d.categories) == ["model.layers.*.self_attn.o_proj:20x20",
                                    "model.layers.*.self_attn.{q_proj,k_proj,v_proj}:20+10+10x20"]
    assert "model.layers.1.self_attn.k_proj" in d.layers
    bert = tiny_bert()
    d = decompose(bert, BERT_TARGETS, cache_dir=tmp_path, progress=False,
                  category_mode="shared_input")
    assert "encoder.layer.*.attention.self.{query,key,value}:24+24+24x24" in d.categories
    with pytest.raises(ValueError, match="category_mode"):
        decompose(bert, BERT_TARGETS, cache_dir=tmp_path, category_mode="shared")


def test_frod_model_shared_input_trains_and_roundtrips(tmp_path):
    model = tiny_llama(dtype=torch.float64)
    ids = torch.randint(0, 67, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    cfg = FrodConfig(LLAMA_TARGETS, sparse_rate=0.1, cache_dir=tmp_path, progress=False,
                     category_mode="shared_input")
    fm = get_frod_model(model, cfg)
    assert fm.category_mode == "shared_input"
    with torch.no_grad():
        torch.testing.assert_close(fm(ids).logits, ref, rtol=1e-10, atol=1e-10)
    layers = fm.frod_layers()
    assert layers["model.layers.0.self_attn.q_proj"].V is layers["model.layers.1.self_attn.v_proj"].V
    fm(ids).logits.sum().backward()
    g = layers["model.layers.0.self_attn.k_proj"].frod_s["default"].grad
    assert g is not None and g.abs().sum() > 0
    with pytest.raises(ValueError, match="category_mode"):
        fm.add_adapter("other", FrodConfig(LLAMA_TARGETS, category_mode="per_role"))
    # file round trip onto a fresh model decomposed the same way
    with torch.no_grad():
        for p in fm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
        want = fm(ids).logits
    fm.save_adapter(tmp_path / "ad")
    fm2 = get_frod_model(tiny_llama(dtype=torch.float64), cfg, adapter_name="x")
    name = fm2.load_adapter(tmp_path / "ad")
    fm2.set_adapter(name)
    with torch.no_grad():
        torch.testing.assert_close(fm2(ids).logits, want, rtol=1e-10, atol=1e-10)
    # a per-role model refuses the shared-input adapter clearly
    fm3 = get_frod_model(tiny_llama(dtype=torch.float64),
                         FrodConfig(LLAMA_TARGETS, cache_dir=tmp_path, progress=False,
                                    category_mode="per_role"))
    from frod_rt.method.adapter_io import AdapterError
    with pytest.raises(AdapterError, match="category"):
        fm3.load_adapter(tmp_path / "ad", name="y")


def test_peft_export_refuses_shared_input(tmp_path):
    pytest.importorskip("peft")
    from frod_rt.interop import export_peft
    from frod_rt.method.adapter_io import AdapterError
    model = tiny_llama()
    fm = get_frod_model(model, FrodConfig(["q_proj", "v_proj"], cache_dir=tmp_path,
                                          progress=False, category_mode="shared_input"))
    with pytest.raises(AdapterError, match="per_role"):
        export_peft(fm.adapter_file("default"), tiny_llama(), tmp_path / "out")


def test_subset_adapter_loads_on_full_shared_decomposition(tmp_path):
    ids = torch.randint(0, 67, (2, 5), generator=torch.Generator().manual_seed(2))
    small = get_frod_model(tiny_llama(dtype=torch.float64), FrodConfig(
        ["q_proj"], cache_dir=tmp_path, progress=False, category_mode="shared_input",
        init_std=0.05))
    assert "model.layers.0.self_attn.k_proj" in small.frod_layers()     # sibling, no adapter
    assert "default" not in small.frod_layers()["model.layers.0.self_attn.k_proj"].frod_dl
    small.save_adapter(tmp_path / "q")
    big = get_frod_model(tiny_llama(dtype=torch.float64), FrodConfig(
        LLAMA_TARGETS, cache_dir=tmp_path, progress=False, category_mode="shared_input"))
    assert big.fingerprint != small.fingerprint
    big.load_adapter(tmp_path / "q", "q")
    big.set_adapter("q")
    small.set_adapter("default")
    with torch.no_grad():
        torch.testing.assert_close(big(ids).logits, small(ids).logits, rtol=1e-12, atol=1e-12)


def test_shared_input_key_parsing():
    from frod_rt.method.categories import (category_accepts, layer_out_in_category,
                                           shared_input_parts)
    key = "model.layers.*.self_attn.{q_proj,k_proj,v_proj}:20+10+10x20"
    assert shared_input_parts(key) == ("model.layers.*.self_attn.", ["q_proj", "k_proj", "v_proj"],
                                       [20, 10, 10], 20)
    assert category_accepts(key, "model.layers.3.self_attn.k_proj", 40, 20)
    assert not category_accepts(key, "model.layers.3.self_attn.o_proj", 40, 20)
    assert not category_accepts(key, "model.layers.3.mlp.k_proj", 40, 20)
    assert not category_accepts(key, "model.layers.3.self_attn.k_proj", 30, 20)
    assert layer_out_in_category(key, "model.layers.0.self_attn.v_proj", 40) == 10
    for bad in ("a.{q_proj,k_proj}:x+1x2", "a.{q_proj}:1+2x3"):
        assert shared_input_parts(bad) is None
        assert not category_accepts(bad, "a.q_proj", 3, 3)


def test_peft_basis_needs_per_role():
    with pytest.raises(ValueError, match="per_role"):
        decompose(tiny_llama(), ["q_proj"], basis="peft", category_mode="shared_input",
                  use_cache=False, progress=False)


def test_shared_input_adapter_maps_onto_the_backbone(tmp_path):
    """A shared-input adapter of LlamaForCausalLM fits its LlamaModel backbone (prefix
    'model.' removed): shapes checked per role, the key rebuilt under the new names, and the
    mapped adapter gives the backbone the same hidden states."""
    from frod_rt.method.adapter_fit import fit_adapter_to_model
    from frod_rt.method.categories import key_for_layer
    assert key_for_layer("model.layers.*.self_attn.{q_proj,k_proj}:8+4x8",
                         "layers.0.self_attn.q_proj", 12, 8) == "layers.*.self_attn.{q_proj,k_proj}:8+4x8"
    ids = torch.randint(0, 67, (2, 5), generator=torch.Generator().manual_seed(3))
    fm = get_frod_model(tiny_llama(dtype=torch.float64), FrodConfig(
        ["q_proj", "k_proj", "v_proj"], cache_dir=tmp_path, progress=False,
        category_mode="shared_input", init_std=0.05))
    f = fm.adapter_file("default")
    backbone = tiny_llama(dtype=torch.float64).model
    mapped = fit_adapter_to_model(f, backbone)
    assert mapped is not f and all(k.startswith("layers.*.self_attn.{q_proj,k_proj,v_proj}:")
                                   for k in mapped.config.categories)
    bb = get_frod_model(backbone, FrodConfig(["q_proj", "k_proj", "v_proj"], cache_dir=tmp_path,
                                             progress=False, category_mode="shared_input"),
                        adapter_name=None)
    fm.save_adapter(tmp_path / "qkv")
    bb.load_adapter(tmp_path / "qkv", "m")
    bb.set_adapter("m")
    fm.set_adapter("default")
    with torch.no_grad():
        want = fm.model.model(ids).last_hidden_state
        got = bb(ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
