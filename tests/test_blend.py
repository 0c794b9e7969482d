"""Blending adapters (``frod_rt.method.blend``): the blended values, their dense update against
a float64 reference, and the refusals (different patterns)."""
from __future__ import annotations

import pytest
import torch

from frod_rt.engine.toy import merged_weights, random_adapter, toy_llama
from frod_rt.method.adapter_io import read_adapter, write_adapter
from frod_rt.method.blend import BlendError, blend_adapters, normalize_weights
from frod_rt.method.decompose import decompose, linear_weight


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    model = toy_llama(vocab_size=97, hidden=24, intermediate=40, std=0.1, seed=2)
    names = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                   and n.rsplit(".", 1)[-1] in ("q_proj", "v_proj", "gate_proj", "down_proj"))
    d = decompose(model, names, cache_dir=root / "cache", progress=False)
    return model, d, root


def _adapter(base, name, targets, **kw):
    model, d, root = base
    return random_adapter(model, root / name, targets, cache_dir=root / "cache", name=name,
                          **kw)


def test_blend_values_and_dense_update(base):
    model, d, root = base
    a = _adapter(base, "a", ["q_proj", "v_proj"], seed=1)
    b = _adapter(base, "b", ["v_proj", "gate_proj", "down_proj"], seed=2)
    wa, wb = 0.7, -0.45
    f = blend_adapters([(a, wa), (b, wb)], name="mix")
    assert sorted(f.layers) == sorted(set(a.layers) | set(b.layers))
    for layer, delta in f.layers.items():
        want_dl = torch.zeros_like(delta.dl, dtype=torch.float64)
        want_s = torch.zeros_like(delta.s, dtype=torch.float64)
        for g, w in ((a, wa), (b, wb)):
            if layer in g.layers:
                want_dl += w * g.layers[layer].dl.double()
                want_s += w * g.layers[layer].s.double()
        assert delta.dl.dtype == torch.float32 and delta.rows is None
        torch.testing.assert_close(delta.dl, want_dl.float(), atol=0, rtol=0)
        torch.testing.assert_close(delta.s, want_s.float(), atol=0, rtol=0)
    # the dense update is the weighted sum of the components' updates (zeros where absent)
    mods = dict(model.named_modules())
    W = {n: linear_weight(mods[n]).detach().double() for n in f.layers}
    Wf, Wa, Wb = (merged_weights(model, x, decomposition=d) for x in (f, a, b))
    for layer in f.layers:
        want = W[layer] + sum(w * (Wx[layer] - W[layer]) for Wx, w in ((Wa, wa), (Wb, wb))
                              if layer in Wx)
        scale = float(W[layer].abs().max())
        torch.testing.assert_close(Wf[layer], want, atol=1e-6 * scale, rtol=0)
    # written and read back like any adapter
    write_adapter(root / "mix", f)
    g = read_adapter(root / "mix")
    assert g.config.extra["blend"] == {"a": wa, "b": wb}
    for layer in f.layers:
        assert torch.equal(g.layers[layer].dl, f.layers[layer].dl)
        assert torch.equal(g.layers[layer].s, f.layers[layer].s)


def test_own_patterns_blend_only_when_shared(base):
    own = _adapter(base, "own", ["q_proj"], seed=3, explicit_pattern=True)
    own2 = _adapter(base, "own2", ["q_proj"], seed=4, explicit_pattern=True)
    std = _adapter(base, "std", ["q_proj"], seed=5)
    with pytest.raises(BlendError, match=r"own \(imported\) pattern.*the default pattern"):
        blend_adapters([(own, 0.5), (std, 0.5)])
    with pytest.raises(BlendError, match="layer"):
        blend_adapters([(own, 0.5), (own2, 0.5)])
    f = blend_adapters([(own, 0.25), (own, 0.5)])           # the same pattern: fine
    for layer, delta in f.layers.items():
        assert torch.equal(delta.rows, own.layers[layer].rows)
        torch.testing.assert_close(delta.s, (0.75 * own.layers[layer].s.double()).float(),
                                   atol=0, rtol=0)
    # an own pattern on other layers than a default-pattern adapter: both kept
    v = _adapter(base, "v", ["v_proj"], seed=6)
    f = blend_adapters([(own, 1.0), (v, 1.0)])
    assert all(f.layers[n].rows is not None for n in own.layers)
    assert all(f.layers[n].rows is None for n in v.layers)


def test_default_patterns_must_match(base):
    a = _adapter(base, "pa", ["q_proj"], seed=7)
    seeded = _adapter(base, "pb", ["v_proj"], seed=8, pattern_seed=3)
    rate = _adapter(base, "pc", ["q_proj"], seed=9, sparse_rate=0.1)
    with pytest.raises(BlendError, match="seeds"):
        blend_adapters([(a, 0.5), (seeded, 0.5)])
    with pytest.raises(BlendError, match="sparse rates"):
        blend_adapters([(a, 0.5), (rate, 0.5)])


def test_normalize_weights():
    assert normalize_weights({"b": 1, "a": 0.5}) == (("a", 0.5), ("b", 1.0))
    for bad in ({}, {"a": float("nan")}, {"a": True}, {"": 1.0}, {"a": "1"}, [("a", 1.0)]):
        with pytest.raises(ValueError, match="adapter_weights"):
            normalize_weights(bad)


def test_trained_heads_are_not_blended(base):
    import dataclasses
    a = _adapter(base, "ha", ["q_proj"], seed=11)
    b = _adapter(base, "hb", ["q_proj"], seed=12)
    headed = dataclasses.replace(b, modules={"score": {"weight": torch.zeros(3, 24)}})
    with pytest.raises(BlendError, match="'hb'.*trained heads"):
        blend_adapters([(a, 0.5), (headed, 0.5)])


def test_refusal_says_whether_the_base_or_only_the_basis_differs(base):
    """Two bases of one base model (frod_rt's and PEFT's decomposition) are refused as such,
    not as 'different base models'; another base model still says so."""
    import copy
    import dataclasses
    a = _adapter(base, "ba", ["q_proj"], seed=13)
    cats = copy.deepcopy(a.config.categories)
    for c in cats.values():
        c["fingerprint"] = "f" * 64                      # another decomposition's category
    other_basis = dataclasses.replace(a, name="bb", config=dataclasses.replace(
        a.config, categories=cats))
    assert a.config.base_fingerprint and other_basis.config.base_fingerprint == \
        a.config.base_fingerprint
    with pytest.raises(BlendError, match="two different bases of the same base model"):
        blend_adapters([(a, 0.5), (other_basis, 0.5)])
    other_model = dataclasses.replace(other_basis, config=dataclasses.replace(
        other_basis.config, base_fingerprint="e" * 64))
    with pytest.raises(BlendError, match="different base models"):
        blend_adapters([(a, 0.5), (other_model, 0.5)])
