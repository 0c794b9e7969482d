"""FRoD layers and models: init identity, gradients, both compute paths, multi-adapter batches,
gradient isolation, merge/unmerge, optimizer groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from frod_rt import FrodConfig, get_frod_model
from frod_rt.method import FrodLinear
from frod_rt.method.dense_path import dense_frod_linear, training_path

from frod_models import (BERT_TARGETS, GPT2_TARGETS, LLAMA_TARGETS, tiny_bert, tiny_gpt2,
                         tiny_llama)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def _cfg(targets, **kw):
    kw.setdefault("progress", False)
    return FrodConfig(targets, **kw)


def _mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 11), nn.Tanh(), nn.Linear(11, 9), nn.Tanh(),
                         nn.Linear(9, 11)).to(dtype)


@pytest.mark.parametrize("factory,targets", [(tiny_bert, BERT_TARGETS),
                                             (tiny_llama, LLAMA_TARGETS),
                                             (tiny_gpt2, GPT2_TARGETS)])
def test_init_outputs_equal_base(factory, targets):
    model = factory()
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)[0].clone()
    fm = get_frod_model(model, _cfg(targets, sparse_rate=0.05))
    assert all(not p.requires_grad for n, p in fm.named_parameters() if "frod_" not in n)
    with torch.no_grad():
        out = fm(ids)[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out = fm(ids)[0]  # grad enabled: replace or dense path (cost rule), base up to rounding
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=1e-6)
    out.float().pow(2).mean().backward()
    grads = [p.grad for n, p in fm.named_parameters() if "frod_" in n]
    assert grads and all(g is not None for g in grads)


def _layer_model(path, n_adapters=1, dtype=torch.float64):
    fm = get_frod_model(_mlp(dtype), _cfg(["0", "2", "4"], sparse_rate=0.2, init_std=0.3,
                                          compute_path=path))
    for i in range(1, n_adapters):
        fm.add_adapter(f"a{i}", _cfg(["0", "2", "4"], sparse_rate=0.2, init_std=0.3,
                                     seed=i if i % 2 else 0, compute_path=path))
    return fm


@pytest.mark.parametrize("path", ["factored", "dense", "replace"])
def test_gradcheck_frod_layer(path):
    fm = _layer_model(path)
    layer = fm.model[2]
    assert isinstance(layer, FrodLinear)
    x = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    dl = layer.frod_dl["default"].detach().clone().requires_grad_(True)
    s = layer.frod_s["default"].detach().clone().requires_grad_(True)

    def f(x, dl, s):
        return functional_call(layer, {"frod_dl.default": dl, "frod_s.default": s}, (x,))
    assert torch.autograd.gradcheck(f, (x, dl, s))


def test_gradcheck_mixed_routing():
    fm = _layer_model("factored", n_adapters=3)  # a2 shares the default pattern, a1 its own
    layer = fm.model[2]
    x = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    params = {f"frod_{p}.{a}": getattr(layer, f"frod_{p}")[a].detach().clone().requires_grad_()
              for a in ("default", "a1", "a2") for p in ("dl", "s")}
    keys = list(params)

    def f(x, *vals):
        with fm.adapter_routing(["a1", "default", "__base__", "a2", "a1", "default"]):
            return functional_call(layer, dict(zip(keys, vals)), (x,))
    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_dense_path_function_gradcheck():
    g = torch.Generator().manual_seed(1)
    n, o, k = 7, 5, 9
    args = [torch.randn(4, n, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(o, n, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(o, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(o, n, generator=g, dtype=torch.float64),
            torch.randn(n, n, generator=g, dtype=torch.float64),
            torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True)]
    from frod_rt.method.patterns import sparse_pattern
    rows, cols = sparse_pattern("t", "t", n, k)
    assert torch.autograd.gradcheck(lambda *a: dense_frod_linear(*a, rows, cols), tuple(args))


@pytest.mark.parametrize("path", ["dense", "replace"])
def test_training_paths_agree_with_factored(path):
    """dense (W' materialised) and replace (y = (Z (l + dl) + S Z) U^T) give the factored
    delta form's outputs and gradients in float64."""
    torch.manual_seed(0)
    outs = {}
    for p in ("factored", path):
        fm = _layer_model(p)
        x = torch.randn(40, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                        requires_grad=True)
        y = fm(x)
        (y.sin().sum()).backward()
        outs[p] = (y.detach(), x.grad, {n: q.grad.clone() for n, q in fm.named_parameters()
                                        if q.grad is not None})
    yf, xf, gf = outs["factored"]
    yd, xd, gd = outs[path]
    torch.testing.assert_close(yd, yf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xd, xf, rtol=1e-12, atol=1e-12)
    assert set(gd) == set(gf) and len(gf) == 6
    for n in gf:
        torch.testing.assert_close(gd[n], gf[n], rtol=1e-10, atol=1e-12)


def test_auto_path_uses_cost_rule(monkeypatch):
    calls = []
    import frod_rt.method.layers as layers_mod
    real = layers_mod.dense_frod_linear
    monkeypatch.setattr(layers_mod, "dense_frod_linear",
                        lambda *a: calls.append(a[0].shape[0]) or real(*a))
    replaced = []
    real_rot = layers_mod.ops.rotate_segments
    monkeypatch.setattr(layers_mod.ops, "rotate_segments",
                        lambda *a: replaced.append(a[0].shape[0]) or real_rot(*a))
    fm = _layer_model("auto")
    fm(torch.randn(3, 13, dtype=torch.float64))   # few rows, training: replace
    assert calls == [] and replaced and set(replaced) == {3}
    replaced.clear()
    fm(torch.randn(30, 13, dtype=torch.float64))  # many rows, training: dense (13 -> 11 layer)
    assert calls and calls[0] == 30
    calls.clear()
    replaced.clear()                               # (the dense path rotates U's rows too)
    with torch.no_grad():                          # inference: always factored (batch invariant)
        fm(torch.randn(30, 13, dtype=torch.float64))
    assert calls == [] and replaced == []
    # square layers: dense only past 2n rows; never when out >= 2n; MiniLM's output layer
    assert training_path(769, 384, 384) == "dense" and training_path(767, 384, 384) == "replace"
    assert training_path(10**6, 1536, 384) == "replace"
    assert training_path(512, 384, 1536) == "dense" and training_path(512, 1536, 384) == "replace"
    assert training_path(438, 384, 1536) == "replace" and training_path(439, 384, 1536) == "dense"


def _three_adapter_llama(dtype=torch.float32):
    fm = get_frod_model(tiny_llama(dtype=dtype), _cfg(LLAMA_TARGETS, sparse_rate=0.05,
                                                      init_std=0.05))
    fm.add_adapter("b", _cfg(["q_proj", "v_proj", "down_proj"], sparse_rate=0.05, init_std=0.05))
    fm.add_adapter("c", _cfg(["q_proj", "up_proj"], sparse_rate=0.1, seed=7, init_std=0.05))
    return fm


@pytest.mark.parametrize("grad", [False, True])
def test_mixed_batch_matches_single_adapter(grad):
    fm = _three_adapter_llama()
    ids = torch.randint(0, 67, (5, 8), generator=torch.Generator().manual_seed(3))
    names = ["c", "default", "__base__", "b", "c"]
    with torch.set_grad_enabled(grad):
        mixed = fm(ids, adapter_names=names).logits
        for i, n in enumerate(names):
            fm.set_adapter(None if n == "__base__" else n)
            alone = fm(ids).logits  # whole batch through one adapter
            torch.testing.assert_close(mixed[i], alone[i], rtol=1e-5, atol=1e-5)
        with fm.disable_adapters():
            base = fm(ids).logits
    torch.testing.assert_close(mixed[2], base[2], rtol=0, atol=1e-6)
    assert not torch.allclose(mixed[0], base[0], atol=1e-3)


def test_each_adapter_gets_only_its_gradients():
    fm = _three_adapter_llama(torch.float64)
    ids = torch.randint(0, 67, (4, 6), generator=torch.Generator().manual_seed(4))
    names = ["b", "default", "b", "__base__"]
    fm(ids, adapter_names=names).logits.pow(2).sum().backward()
    mixed = {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}
    assert not any(n.endswith(".c") for n in mixed)          # c was not in the batch
    assert any(n.endswith(".b") for n in mixed) and any(n.endswith(".default") for n in mixed)
    for adapter, rows in (("b", [0, 2]), ("default", [1])):
        fm.zero_grad(set_to_none=True)
        fm.set_adapter(adapter)
        fm(ids[rows]).logits.pow(2).sum().backward()
        for n, p in fm.named_parameters():
            if n.endswith("." + adapter):
                torch.testing.assert_close(mixed[n], p.grad, rtol=1e-9, atol=1e-12)
            else:
                assert p.grad is None, n


def test_shared_buffers_not_copied_per_adapter():
    fm = get_frod_model(tiny_bert(), _cfg(BERT_TARGETS))
    before = {id(b) for b in fm.buffers()}
    nbytes = sum(b.numel() for b in fm.buffers())
    fm.add_adapter("x", _cfg(BERT_TARGETS))
    fm.add_adapter("y", _cfg(["query"], sparse_rate=0.02))
    after = list(fm.buffers())
    # only the new pattern of "y" (a different k) is added: U, l, V are never copied
    assert sum(b.numel() for b in after) - nbytes == 2 * 12
    assert before <= {id(b) for b in after}
    U = [m.frod_U for m in fm.frod_layers().values()]
    assert len({u.data_ptr() for u in U}) == len(U) == 12


@pytest.mark.parametrize("factory,targets", [(tiny_llama, LLAMA_TARGETS),
                                             (tiny_gpt2, GPT2_TARGETS)])
def test_merge_unmerge_roundtrip(factory, targets):
    fm = get_frod_model(factory(), _cfg(targets, sparse_rate=0.05, init_std=0.05))
    fm.add_adapter("other", _cfg(targets, init_std=0.05))
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(5))
    weights = {n: p.detach().clone() for n, p in fm.named_parameters() if "frod_" not in n}
    with torch.no_grad():
        unmerged = fm(ids)[0]
        fm.merge_adapter("default")
        assert all(m.merged_adapter == "default" for m in fm.frod_layers().values())
        merged = fm(ids)[0]
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="merged"):
            fm(ids, adapter_names=["other", "default"])
        with pytest.raises(ValueError, match="already merged"):
            fm.merge_adapter("other")
        fm.unmerge_adapter()
        for n, p in fm.named_parameters():
            if "frod_" not in n:
                assert torch.equal(p, weights[n]), n
        torch.testing.assert_close(fm(ids)[0], unmerged, rtol=0, atol=0)


def test_merge_and_unload_gives_plain_model():
    fm = get_frod_model(tiny_gpt2(), _cfg(GPT2_TARGETS, init_std=0.05))
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = fm(ids)[0]
        model = fm.merge_and_unload()
        from transformers.pytorch_utils import Conv1D
        assert not any(isinstance(m, FrodLinear) for m in model.modules())
        assert isinstance(model.h[0].attn.c_attn, Conv1D)
        torch.testing.assert_close(model(ids)[0], ref, rtol=1e-4, atol=1e-4)
    assert not any("frod" in k for k in model.state_dict())


def test_adapter_management_errors():
    # per-role: with shared-input categories "key" is decomposed as the sibling of query/value
    fm = get_frod_model(tiny_bert(), _cfg(["query", "value"], init_std=0.1,
                                          category_mode="per_role"))
    ids = torch.randint(0, 50, (2, 5))
    with pytest.raises(ValueError, match="already exists"):
        fm.add_adapter("default", _cfg(["query"]))
    with pytest.raises(ValueError, match="not\\s+decomposed|were not decomposed"):
        fm.add_adapter("k", _cfg(["key"]))
    with pytest.raises(ValueError, match="alpha"):
        fm.add_adapter("k", _cfg(["query"], alpha=1e-2))
    with pytest.raises(ValueError, match="adapter name"):
        fm.add_adapter("a.b", _cfg(["query"]))
    with pytest.raises(KeyError):
        fm(ids, adapter_names=["default", "nope"])
    with pytest.raises(ValueError, match="one name per batch row"):
        fm(ids, adapter_names=["default", "default", "default"])
    with pytest.raises(KeyError):
        fm.set_adapter("nope")
    fm.add_adapter("q", _cfg(["query"], init_std=0.1))
    fm.delete_adapter("default")
    assert fm.adapters == ["q"] and fm.active_adapter is None
    assert all("default" not in m.frod_dl for m in fm.frod_layers().values())
    with torch.no_grad():
        base = fm(ids).last_hidden_state
        fm.set_adapter("q")
        assert not torch.allclose(fm(ids).last_hidden_state, base)


def test_optimizer_param_groups_and_training_step():
    fm = get_frod_model(tiny_bert(), _cfg(["query", "value"]))
    fm.add_adapter("t2", _cfg(["query"]))
    groups = fm.optimizer_param_groups(weight_decay=0.01)
    assert [g["name"] for g in groups] == ["frod_dl", "frod_s"]
    assert groups[0]["lr"] == 5e-4 and groups[1]["lr"] == 5e-5
    assert len(groups[0]["params"]) == 4 + 2 and len(groups[1]["params"]) == 6
    only = fm.optimizer_param_groups(["t2"], lr_s=1e-5, lr_dl=1e-4)
    assert len(only[0]["params"]) == 2 and only[1]["lr"] == 1e-5
    fm.model.pooler.dense.weight.requires_grad_(True)
    assert fm.optimizer_param_groups()[2]["params"] == [fm.model.pooler.dense.weight]
    fm.model.pooler.dense.weight.requires_grad_(False)
    # a few steps on two tasks in one batch lower both losses
    ids = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(8))
    target = torch.randn(4, 6, 24, generator=torch.Generator().manual_seed(9))
    opt = torch.optim.Adam(fm.optimizer_param_groups(lr_s=3e-2, lr_dl=3e-2))
    names = ["default", "t2", "default", "t2"]
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = (fm(ids, adapter_names=names).last_hidden_state - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_generate_with_per_row_adapters():
    fm = get_frod_model(tiny_llama(), _cfg(LLAMA_TARGETS, init_std=0.5))
    fm.add_adapter("b", _cfg(["q_proj"], init_std=0.5))
    ids = torch.randint(0, 67, (2, 5), generator=torch.Generator().manual_seed(11))
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with fm.adapter_routing(["default", "b"]):
        mixed = fm.generate(ids, **kw)
    for row, name in enumerate(["default", "b"]):
        fm.set_adapter(name)
        assert torch.equal(mixed[row], fm.generate(ids, **kw)[row])


def test_reuse_decomposition():
    model = tiny_bert()
    fm = get_frod_model(model, _cfg(["query", "key"], init_std=0.1))
    d = fm.decomposition
    assert set(d.layers) == set(fm.frod_layers())
    assert d.layers["encoder.layer.1.attention.self.key"].U is \
        fm.frod_layers()["encoder.layer.1.attention.self.key"].frod_U  # live buffers, no copy
    other = get_frod_model(tiny_bert(), _cfg(["query", "key"]), decomposition=d)
    assert other.fingerprint == fm.fingerprint
    file = fm.adapter_file("default")
    other.add_adapter_from_file(file, "copied")
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        fm.set_adapter("default")
        other.set_adapter("copied")
        torch.testing.assert_close(other(ids).last_hidden_state, fm(ids).last_hidden_state,
                                   rtol=0, atol=0)
