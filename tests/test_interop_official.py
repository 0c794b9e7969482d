"""Import of checkpoints of the official FRoD research code (Bane-Elvin/AAAI2026-FRoD).

That code is a fork of PEFT and cannot be installed next to upstream PEFT, so these tests use
a faithful re-implementation of what it stores and computes (written from its source,
``peft/src/peft/tuners/frod/{model,layer}.py`` at commit cab87b0):

* basis: numpy float32 ``qr`` of the stacked weights, ``T = mean inv(Q_i^T Q_i + alpha I)``,
  ``eigh``, ``V = R^T E``, stored as float16 for a float32 model; ``U, l`` from
  ``W @ inv(V).T`` in float32 numpy; pattern = ``nonzero`` of a random off-diagonal mask;
* files: ``save_pretrained`` keys ``base_model.model.<layer>.FROD_lambda_l`` /
  ``FROD_lambda_S_values`` and the cache ``FROD_v.pth`` / ``FROD_s_indices.pth``
  (``{category: BufferDict({adapter: tensor})}``);
* forward: ``y = base(x) + F.linear((x V) S + (x V) * lambda, U)`` with ``(x V) S`` computed
  as ``torch.sparse.mm(S.t(), z.t()).t()``.

The frod_rt import must reproduce that forward output (S transposed, update on top of the
unzeroed base), which differs clearly from the code's own merge formula.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from frod_rt import FrodConfig, get_frod_model  # noqa: E402
from frod_rt.method import AdapterError  # noqa: E402
from frod_rt.interop import import_official  # noqa: E402
from frod_rt.interop.official import official_category  # noqa: E402

TARGETS = ["query", "value", "intermediate.dense", "output.dense"]


def _bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(2)
    cfg = BertConfig(hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=72, vocab_size=97, max_position_embeddings=32)
    return BertModel(cfg).eval()


def _targets(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t)
                                                      for t in TARGETS)]


def _official_basis(mats, alpha=1e-3):
    stacked = np.vstack(mats)
    q, r = np.linalg.qr(stacked)
    dim = r.shape[1]
    t = np.zeros((dim, dim), dtype=r.dtype)
    start = 0
    for m in mats:
        qi = q[start:start + m.shape[0], :]
        start += m.shape[0]
        t += np.linalg.inv(qi.T @ qi + alpha * np.eye(dim))
    t /= len(mats)
    return r.T @ np.linalg.eigh(t)[1]


def _official_u_l(V, W):
    v = V.to(torch.float32).numpy()
    w = W.detach().to(torch.float32).numpy()
    bi = w @ np.linalg.inv(v).T
    lam = np.linalg.norm(bi, axis=0)
    return torch.from_numpy(bi / lam).float(), torch.from_numpy(lam).float()


def _official_checkpoint(base, tmp_path, rate=0.05, seed=0):
    """Write an official-format checkpoint with trained-like values; return what the official
    code would hold in memory: {layer: (V, U, lambda, indices, s)}."""
    from peft.tuners._buffer_dict import BufferDict
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(seed)
    by_cat = {}
    for n, m in _targets(base):
        by_cat.setdefault(official_category(n), []).append((n, m))
    V_cache, idx_cache, state = {}, {}, {}
    sd = {}
    for cat, members in by_cat.items():
        mats = [m.weight.detach().to(torch.float32).numpy() for _, m in members]
        V = torch.from_numpy(_official_basis(mats)).to(torch.float32).to(torch.float16)
        n = V.shape[0]
        k = int(n * n * rate)
        off = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"),
                          -1).reshape(-1, 2)
        off = off[off[:, 0] != off[:, 1]]
        sel = off[torch.randperm(off.shape[0], generator=g)[:k]]
        mask = torch.zeros(n, n)
        mask[sel[:, 0], sel[:, 1]] = 1.0
        idx = torch.nonzero(mask).t()
        V_cache[cat] = BufferDict({"default": V}, persistent=False)
        idx_cache[cat] = BufferDict({"default": idx}, persistent=False)
        for name, mod in members:
            U, lam0 = _official_u_l(V, mod.weight)
            lam = lam0 * (1 + 0.3 * torch.randn(lam0.shape, generator=g))
            s = 0.2 * float(lam0.mean()) * torch.randn(k, generator=g)
            sd[f"base_model.model.{name}.FROD_lambda_l"] = lam
            sd[f"base_model.model.{name}.FROD_lambda_S_values"] = s
            state[name] = (V, U, lam, idx, s)
    adir, pdir = tmp_path / "official_adapter", tmp_path / "proj_cache"
    adir.mkdir()
    pdir.mkdir()
    (adir / "adapter_config.json").write_text(json.dumps({
        "peft_type": "FROD", "sparse_rate": rate, "target_modules": TARGETS,
        "save_projection": False, "model_dir": str(pdir), "projection_prng_key": 0,
        "regularization_alpha": 1e-3}))
    save_file(sd, str(adir / "adapter_model.safetensors"))
    torch.save(V_cache, str(pdir / "FROD_v.pth"))
    torch.save(idx_cache, str(pdir / "FROD_s_indices.pth"))
    torch.save({c: BufferDict({"default": torch.tensor([v["default"].shape[0]] * 2)},
                              persistent=False)
                for c, v in V_cache.items()}, str(pdir / "FROD_s_size.pth"))
    return adir, pdir, state


def _official_forward_model(base, state, transpose_s=True):
    """The official forward, re-implemented with forward hooks on a copy of the base. With
    ``transpose_s=False`` it applies S as the official *merge* does (for contrast)."""
    model = copy.deepcopy(base)
    mods = dict(model.named_modules())
    for name, (V, U, lam, idx, s) in state.items():
        def hook(mod, inp, out, V=V, U=U, lam=lam, idx=idx, s=s):
            x = inp[0]
            z = x.reshape(-1, x.shape[-1]) @ V.to(x.dtype)
            S = torch.sparse_coo_tensor(idx, s, (V.shape[0], V.shape[0])).coalesce()
            zS = torch.sparse.mm(S.t() if transpose_s else S, z.t()).t()
            add = F.linear(zS + z * lam, U)
            return out + add.reshape(*x.shape[:-1], -1)
        mods[name].register_forward_hook(hook)
    return model.eval()


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.fixture
def ids():
    return torch.randint(0, 97, (3, 13), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("basis", ["auto", "file"])
def test_import_reproduces_official_forward(basis, ids, tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    adir, pdir, state = _official_checkpoint(base, tmp_path)
    ref = _hidden(_official_forward_model(base, state), ids)
    merge_semantics = _hidden(_official_forward_model(base, state, transpose_s=False), ids)
    gap = float((ref - merge_semantics).abs().max())
    assert gap > 1e-2                      # transposing S matters on this checkpoint
    res = import_official(adir, base, pdir, trust_pickle=True, basis=basis)
    assert res.adapter.config.extra["imported_from"] == "official"
    names = [n for c in res.adapter.config.categories.values() for n in c["layers"]]
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=names, progress=False),
                        adapter_name="zero", decomposition=res.decomposition)
    fm.add_adapter_from_file(res.adapter, "official")
    fm.set_adapter("official")
    out = _hidden(fm.eval(), ids)
    if res.basis == "file":                 # exact: the official basis itself
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:                                   # mapped onto frod_rt's basis: measured error
        assert basis == "auto" and 0 < res.max_rel_error <= 1e-3
        effect = float((ref - _hidden(base, ids)).abs().max())
        assert float((out - ref).abs().max()) <= 5 * res.max_rel_error * effect + 1e-5
    assert float((out - merge_semantics).abs().max()) > gap / 2


def test_projections_given_directly(ids, tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    adir, _, state = _official_checkpoint(base, tmp_path, seed=4)
    V = {official_category(n): st[0] for n, st in state.items()}
    idx = {official_category(n): st[3] for n, st in state.items()}
    res = import_official(adir, base, V=V, indices=idx, basis="file")
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=list(state),
                                                        progress=False),
                        adapter_name="zero", decomposition=res.decomposition)
    fm.add_adapter_from_file(res.adapter, "official")
    fm.set_adapter("official")
    torch.testing.assert_close(_hidden(fm.eval(), ids),
                               _hidden(_official_forward_model(base, state), ids),
                               rtol=1e-4, atol=5e-5)


def test_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    adir, pdir, _ = _official_checkpoint(base, tmp_path)
    with pytest.raises(AdapterError, match="trust_pickle"):
        import_official(adir, base, pdir)                 # pickled BufferDicts refused
    with pytest.raises(FileNotFoundError):
        import_official(adir, base, tmp_path / "missing", trust_pickle=True)
    with pytest.raises(FileNotFoundError):
        import_official(tmp_path / "nope", base, pdir, trust_pickle=True)
    with pytest.raises(ValueError, match="basis"):
        import_official(adir, base, pdir, trust_pickle=True, basis="x")
    torch.manual_seed(99)
    other = _bert()
    with torch.no_grad():
        for p in other.parameters():
            p.normal_(0, 0.05)
    with pytest.raises(AdapterError, match="another base"):
        import_official(adir, other, pdir, trust_pickle=True)


def test_official_import_in_its_own_basis_is_served_by_the_engine(ids, tmp_path, monkeypatch):
    """An official checkpoint imported exactly (``basis="file"``) and saved with its basis
    (``res.save``) is served by the engine: per-token hidden states pooled by ``embed`` equal
    those of the official forward."""
    from frod_rt.engine import Engine
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    adir, pdir, state = _official_checkpoint(base, tmp_path)
    ref = _hidden(_official_forward_model(base, state), ids)
    res = import_official(adir, base, pdir, trust_pickle=True, basis="file")
    res.save(tmp_path / "served")
    assert (tmp_path / "served" / "decomposition" / "decomposition.json").is_file()
    eng = Engine.load(copy.deepcopy(base), adapters={"off": tmp_path / "served"},
                      cache_dir=tmp_path / "cache")
    got = eng.embed(ids.tolist(), adapter="off", normalize=False)
    torch.testing.assert_close(got, ref.mean(1), rtol=1e-4, atol=1e-5)
    plain = eng.embed(ids.tolist(), normalize=False)
    assert float((plain - ref.mean(1)).abs().max()) > 1e-3
    # a basis saved with an adapter must reconstruct this base's weights
    with pytest.raises(AdapterError, match="does not reconstruct .* belongs to another base"):
        Engine.load(_other_bert(), adapters={"off": tmp_path / "served"},
                    cache_dir=tmp_path / "cache")
    eng.close()


def _other_bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(3)
    return BertModel(BertConfig(hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=72, vocab_size=97,
                                max_position_embeddings=32)).eval()
