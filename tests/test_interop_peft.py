"""Interop with upstream PEFT's FRoD tuner, checked on OUTPUTS of PEFT's own model.

Small random-weight BERT and Llama models (odd sizes; the Llama down_proj stack is wider than
tall, so PEFT's SVD branch is covered), adapters with nonzero trained-like values.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import FrodConfig as PeftFrodConfig  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402

from frod_rt import FrodConfig, get_frod_model  # noqa: E402
from frod_rt.method import AdapterError  # noqa: E402
from frod_rt.interop import export_peft, import_peft  # noqa: E402
from frod_rt.interop._foreign import foreign_split  # noqa: E402

from frod_models import trained_peft  # noqa: E402

BERT_TARGETS = ["query", "value", "intermediate.dense", "output.dense"]
LLAMA_TARGETS = ["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"]


def _bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=72, vocab_size=97, max_position_embeddings=32)
    return BertModel(cfg).eval()


def _llama():
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=88, vocab_size=97,
                      max_position_embeddings=32)
    return LlamaModel(cfg).eval()


MODELS = {"bert": (_bert, BERT_TARGETS), "llama": (_llama, LLAMA_TARGETS)}


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def _trained_peft(base, targets, rate=0.05, seed=0):
    """A PEFT FRoD model with trained-like values: lambda_l = l0 * (1 + 0.2 N(0,1)),
    s ~ 0.1 * mean(l0) * N(0,1)."""
    return trained_peft(base, targets, rate, seed)


def _frod_with(base, imported):
    """A frod_rt FrodModel on a copy of ``base`` with the imported adapter active."""
    names = [n for c in imported.adapter.config.categories.values() for n in c["layers"]]
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=names, progress=False),
                        adapter_name="zero", decomposition=imported.decomposition)
    fm.add_adapter_from_file(imported.adapter, "imp")
    fm.set_adapter("imp")
    return fm.eval()


@pytest.fixture
def ids():
    return torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_import_dir_reproduces_peft_output(kind, ids, tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    make, targets = MODELS[kind]
    base = make()
    pm = _trained_peft(base, targets)
    ref, plain = _hidden(pm, ids), _hidden(base, ids)
    assert (ref - plain).abs().max() > 1e-2          # the adapter really changes the output
    pm.save_pretrained(tmp_path / "peft_adapter")
    res = import_peft(tmp_path / "peft_adapter", base)          # basis="auto"
    assert res.adapter.config.extra["imported_from"] == "peft"
    out = _hidden(_frod_with(base, res), ids)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)


def test_import_live_peft_model(ids, tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    pm = _trained_peft(base, BERT_TARGETS, seed=3)
    res = import_peft(pm, basis="file")
    assert res.basis == "file"
    torch.testing.assert_close(_hidden(_frod_with(base, res), ids), _hidden(pm, ids),
                               rtol=1e-4, atol=2e-5)


def test_untrained_peft_adapter_imports_as_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    pm = get_peft_model(copy.deepcopy(base), PeftFrodConfig(target_modules=BERT_TARGETS,
                                                            progressbar=False))
    pm.save_pretrained(tmp_path / "a")
    res = import_peft(tmp_path / "a", base, basis="file")
    for d in res.adapter.layers.values():
        assert float(d.dl.abs().max()) == 0.0 and float(d.s.abs().max()) == 0.0


def test_frod_rt_basis_error_is_measured(ids, tmp_path, monkeypatch):
    """Mapping onto frod_rt's own basis: PEFT's float32 basis is a signed permutation of ours
    up to a small deviation; the reported error bounds the output difference, and a tight
    tolerance is refused."""
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    pm = _trained_peft(base, BERT_TARGETS, seed=5)
    pm.save_pretrained(tmp_path / "a")
    with pytest.raises(AdapterError, match="tolerance"):
        import_peft(tmp_path / "a", base, basis="frod_rt", tol=1e-7)
    res = import_peft(tmp_path / "a", base, basis="frod_rt", tol=0.1)
    assert res.basis == "frod_rt" and 0 < res.max_rel_error < 0.1
    ref, plain = _hidden(pm, ids), _hidden(base, ids)
    out = _hidden(_frod_with(base, res), ids)
    effect = float((ref - plain).abs().max())
    assert float((out - ref).abs().max()) <= 5 * res.max_rel_error * effect + 1e-4
    # and the default-pattern adapter of frod_rt really is another adapter: pattern per layer
    assert all(d.rows is not None for d in res.adapter.layers.values())


def test_export_native_adapter_loads_in_peft(ids, tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=BERT_TARGETS,
                                                        sparse_rate=0.05, progress=False,
                                                        category_mode="per_role"))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in fm.frod_layers().values():
            m.frod_dl["default"].copy_(0.2 * m.frod_l * torch.randn(m.frod_l.shape, generator=g))
            s = m.frod_s["default"]
            s.copy_(0.1 * float(m.frod_l.mean()) * torch.randn(s.shape, generator=g))
    fm.eval()
    ours, plain = _hidden(fm, ids), _hidden(base, ids)
    adapter = fm.adapter_file("default")
    err = export_peft(adapter, base, tmp_path / "exp", fm.decomposition, tol=0.1)
    cfg = json.loads((tmp_path / "exp" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "FROD" and cfg["save_projection"] is True
    pm = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "exp").eval()
    theirs = _hidden(pm, ids)
    effect = float((ours - plain).abs().max())
    assert effect > 1e-2
    assert float((theirs - ours).abs().max()) <= 5 * err * effect + 1e-4


def test_file_basis_round_trip_is_exact(ids, tmp_path, monkeypatch):
    """PEFT -> frod_rt (file basis) -> PEFT gives PEFT's own output back."""
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _llama()
    pm = _trained_peft(base, LLAMA_TARGETS, seed=9)
    pm.save_pretrained(tmp_path / "a")
    res = import_peft(tmp_path / "a", base, basis="file")
    err = export_peft(res.adapter, base, tmp_path / "b", res.decomposition)
    assert err < 1e-5
    back = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "b").eval()
    torch.testing.assert_close(_hidden(back, ids), _hidden(pm, ids), rtol=1e-5, atol=1e-6)


def test_save_projection_false_regenerates_peft_basis(ids, tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    pm = get_peft_model(copy.deepcopy(base), PeftFrodConfig(
        target_modules=BERT_TARGETS, sparse_rate=0.05, save_projection=False,
        projection_prng_key=4, progressbar=False))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "frod_lambda_s_values" in n:
                p.normal_(0, 0.05)
    pm.eval().save_pretrained(tmp_path / "a")
    res = import_peft(tmp_path / "a", base, basis="file")
    assert res.adapter.config.extra["peft_basis_from"] == "regenerated"
    torch.testing.assert_close(_hidden(_frod_with(base, res), ids), _hidden(pm, ids),
                               rtol=1e-4, atol=2e-5)


def test_foreign_split_reconstructs(gen):
    W = torch.randn(13, 9, generator=gen, dtype=torch.float64)
    V = torch.randn(9, 9, generator=gen, dtype=torch.float64)
    U, l0 = foreign_split(W, V)
    torch.testing.assert_close(U @ torch.diag(l0) @ V.T, W)


def test_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    with pytest.raises(FileNotFoundError):
        import_peft(tmp_path / "nope", base)
    with pytest.raises(ValueError, match="base_model"):
        import_peft(tmp_path, None)
    with pytest.raises(ValueError, match="basis"):
        import_peft(tmp_path, base, basis="mine")
    with pytest.raises(TypeError):
        import_peft(42, base)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(AdapterError, match="FROD"):
        import_peft(tmp_path / "lora", base)
    # an adapter trained on another base is refused (its basis matches nothing of ours)
    pm = _trained_peft(base, BERT_TARGETS)
    pm.save_pretrained(tmp_path / "a")
    torch.manual_seed(123)
    other = _bert()
    with torch.no_grad():
        for p in other.parameters():
            p.normal_(0, 0.05)
    with pytest.raises(AdapterError, match="another base"):
        import_peft(tmp_path / "a", other)


def _bert_cls():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(2)
    cfg = BertConfig(hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=72, vocab_size=97, max_position_embeddings=32,
                     num_labels=5)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("source", ["dir", "live"])
def test_import_carries_modules_to_save_head(source, ids, tmp_path, monkeypatch):
    """PEFT's ``modules_to_save`` classifier comes over as the adapter's head: frod_rt's
    logits equal PEFT's, and the head survives save/load of the frod_rt adapter."""
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert_cls()
    pm = get_peft_model(copy.deepcopy(base), PeftFrodConfig(
        target_modules=["query", "value"], sparse_rate=0.05, progressbar=False,
        modules_to_save=["classifier"]))
    with torch.no_grad():
        for mod in pm.modules():
            if hasattr(mod, "frod_lambda_s_values") and "default" in mod.frod_lambda_s_values:
                mod.frod_lambda_s_values["default"].normal_(0, 0.05)
        head = pm.base_model.model.classifier.modules_to_save["default"]
        head.weight.add_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1)))
    pm.eval()
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
        assert (ref - base(input_ids=ids).logits).abs().max() > 0.1
    if source == "dir":
        pm.save_pretrained(tmp_path / "peft_adapter")
        res = import_peft(tmp_path / "peft_adapter", base, basis="file")
    else:
        res = import_peft(pm, basis="file")
    assert set(res.adapter.modules) == {"classifier"} and not res.ignored_keys
    fm = _frod_with(base, res)
    with torch.no_grad():
        torch.testing.assert_close(fm(input_ids=ids).logits, ref, rtol=1e-4, atol=2e-5)
    fm.save_adapter(tmp_path / "frod", "imp")
    fm2 = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=["query", "value"],
                                                         progress=False),
                         adapter_name="zero", decomposition=res.decomposition)
    fm2.load_adapter(tmp_path / "frod")
    fm2.set_adapter("imp")
    with torch.no_grad():
        torch.testing.assert_close(fm2(input_ids=ids).logits, ref, rtol=1e-4, atol=2e-5)
    # and back to PEFT: export writes the head in PEFT's form, PEFT loads it
    export_peft(fm2.adapter_file("imp"), base, tmp_path / "back", res.decomposition)
    pm2 = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(pm2(input_ids=ids).logits, ref, rtol=1e-4, atol=2e-5)


def test_floor_k_matches_peft_parameter_count(tmp_path, monkeypatch):
    """``FrodConfig(k_rounding="floor")`` gives PEFT's k (floor(in*in*rate)); frod_rt's
    default rounds (more values where the fraction is >= 0.5)."""
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _bert()
    rate = 0.0237                                   # 40*40*rate = 37.92, 72*72*rate = 122.86
    pm = get_peft_model(copy.deepcopy(base), PeftFrodConfig(
        target_modules=BERT_TARGETS, sparse_rate=rate, progressbar=False))
    n_peft = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    counts = {}
    for rounding in ("floor", "round"):
        fm = get_frod_model(copy.deepcopy(base), FrodConfig(
            BERT_TARGETS, sparse_rate=rate, k_rounding=rounding, progress=False))
        counts[rounding] = sum(p.numel() for p in fm.parameters() if p.requires_grad)
    assert counts["floor"] == n_peft
    assert counts["round"] > n_peft


def test_out_lt_in_category_exports_when_trained_on_peft_basis(ids, tmp_path, monkeypatch):
    """The documented answer for out < in categories (Llama down_proj, 32x88, two layers: the
    SVD branch, whose zero-l directions PEFT chooses differently): a native adapter is refused
    (or inexact), while an adapter trained on PEFT's basis -- start from PEFT's untrained
    adapter imported with basis="file" -- exports exactly."""
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    base = _llama()
    targets = ["down_proj"]

    def perturb(fm, name):
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for m in fm.frod_layers().values():
                if name in m.frod_dl:
                    m.frod_dl[name].normal_(0, 0.05, generator=g)
                    m.frod_s[name].normal_(0, 0.05, generator=g)

    native = get_frod_model(copy.deepcopy(base), FrodConfig(targets, sparse_rate=0.05,
                                                            k_rounding="floor", progress=False))
    perturb(native, "default")
    with pytest.raises(AdapterError):
        export_peft(native.adapter_file("default"), base, tmp_path / "native",
                    native.decomposition)
    # the answer: PEFT's basis (an untrained PEFT adapter imported with basis="file")
    pm0 = get_peft_model(copy.deepcopy(base), PeftFrodConfig(target_modules=targets,
                                                             sparse_rate=0.05, progressbar=False))
    pm0.save_pretrained(tmp_path / "peft0")
    res = import_peft(tmp_path / "peft0", base, basis="file")
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(targets, progress=False),
                        adapter_name="zero", decomposition=res.decomposition)
    fm.add_adapter_from_file(res.adapter, "task")
    perturb(fm, "task")                                  # stands in for training "task"
    fm.set_adapter("task")
    fm.eval()
    err = export_peft(fm.adapter_file("task"), base, tmp_path / "exp", res.decomposition)
    pm = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "exp").eval()
    ours, theirs = _hidden(fm, ids), _hidden(pm, ids)
    assert float((ours - _hidden(base, ids)).abs().max()) > 1e-2
    assert err < 1e-5
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=2e-5)
