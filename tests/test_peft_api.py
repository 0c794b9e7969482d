"""The PEFT-style surface of FrodModel: save_pretrained / from_pretrained /
print_trainable_parameters, modules_to_save heads (trained, saved, restored, routed per row),
and HF Trainer with default TrainingArguments."""
from __future__ import annotations

import inspect
import json

import pytest
import torch

from frod_rt import AdapterError, FrodConfig, FrodModel, get_frod_model, read_adapter
from frod_rt.method.patterns import pattern_size

from frod_models import BERT_TARGETS, LLAMA_TARGETS, tiny_llama


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def tiny_bert_cls(seed=0, dtype=torch.float64):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=61, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg).to(dtype).eval()


def _cfg(**kw):
    kw.setdefault("progress", False)
    return FrodConfig(BERT_TARGETS, sparse_rate=0.1, **kw)


def _train_steps(fm, ids, labels, names=None, steps=3):
    opt = torch.optim.SGD([p for p in fm.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        fm(input_ids=ids, labels=labels, adapter_names=names).loss.backward()
        opt.step()


IDS = torch.randint(0, 60, (4, 7), generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 2, 1, 2])


def test_save_pretrained_writes_adapter_only_and_from_pretrained_restores(tmp_path):
    tmp_path = tmp_path / "saved"
    fm = get_frod_model(tiny_bert_cls(), _cfg(init_std=0.05, modules_to_save=["classifier"]))
    fm.add_adapter("other", _cfg(init_std=0.05, seed=2))
    _train_steps(fm, IDS, LABELS)
    head = fm.saved_modules["classifier"]["default"]
    assert not torch.equal(head.weight, fm.model.classifier.weight)   # the head was trained
    with torch.no_grad():
        want = fm(input_ids=IDS).logits
        want_other = fm(input_ids=IDS, adapter_names=["other"] * 4).logits
    fm.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["frod_adapter.json", "frod_adapter.safetensors", "other"]
    size = (tmp_path / "frod_adapter.safetensors").stat().st_size
    n_adapter = sum(p.numel() for p in fm.adapter_parameters("default"))
    assert size < 8 * n_adapter + 4096                     # no base weights in the file
    raw = json.loads((tmp_path / "frod_adapter.json").read_text())
    assert raw["modules_to_save"] == {"classifier": {"weight": [3, 24], "bias": [3]}}

    fm2 = FrodModel.from_pretrained(tiny_bert_cls(), tmp_path)
    assert fm2.active_adapter == "default"
    assert fm2.get_nb_trainable_parameters()[0] == 0          # PEFT: frozen unless is_trainable
    with torch.no_grad():
        torch.testing.assert_close(fm2(input_ids=IDS).logits, want, rtol=1e-12, atol=1e-12)
    fm2.load_adapter(tmp_path / "other", "other")
    with torch.no_grad():
        torch.testing.assert_close(fm2(input_ids=IDS, adapter_names=["other"] * 4).logits,
                                   want_other, rtol=1e-12, atol=1e-12)
    fm3 = FrodModel.from_pretrained(tiny_bert_cls(), tmp_path, is_trainable=True)
    assert fm3.get_nb_trainable_parameters()[0] == n_adapter
    # another base (different weights) is refused
    with pytest.raises(AdapterError, match="different base"):
        FrodModel.from_pretrained(tiny_bert_cls(seed=1), tmp_path)


def test_print_trainable_parameters(capsys):
    fm = get_frod_model(tiny_bert_cls(), _cfg(modules_to_save=["classifier"]))
    fm.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    layers = fm.frod_layers().values()
    n = sum(m.in_features + pattern_size(m.in_features, 0.1) for m in layers) + 3 * 24 + 3
    total = sum(p.numel() for p in fm.parameters())
    assert line == (f"trainable params: {n:,d} || all params: {total:,d} || "
                    f"trainable%: {100 * n / total:.4f}")


def test_modules_to_save_routes_per_row_and_trains_only_own_copy():
    fm = get_frod_model(tiny_bert_cls(), _cfg(init_std=0.05, modules_to_save=["classifier"]),
                        adapter_name="a")
    fm.add_adapter("b", _cfg(init_std=0.05, seed=1, modules_to_save=["classifier"]))
    fm.add_adapter("c", _cfg(init_std=0.05))                 # no head: uses the base head
    with torch.no_grad():
        fm.saved_modules["classifier"]["a"].weight.add_(0.5)
        fm.saved_modules["classifier"]["b"].bias.add_(1.0)
    names = ["b", "a", "__base__", "c"]
    out = fm(input_ids=IDS, adapter_names=names).logits
    for i, n in enumerate(names):
        with torch.no_grad():
            one = fm(input_ids=IDS[i:i + 1], adapter_names=[n]).logits
        torch.testing.assert_close(out[i:i + 1].detach(), one, rtol=1e-12, atol=1e-12)
    out[0].sum().backward()                                    # row 0 belongs to "b"
    heads = fm.saved_modules["classifier"]
    ga = heads["a"].weight.grad
    assert heads["b"].weight.grad.abs().sum() > 0 and (ga is None or not ga.any())
    assert fm.model.classifier.weight.grad is None and not fm.model.classifier.weight.requires_grad
    # merge_and_unload puts the adapter's head into the plain model
    fm.set_adapter("b")
    with torch.no_grad():
        want = fm(input_ids=IDS).logits
    plain = fm.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, want, rtol=1e-9, atol=1e-9)


def test_modules_to_save_file_errors(tmp_path):
    from safetensors.torch import load_file, save_file
    fm = get_frod_model(tiny_bert_cls(), _cfg(modules_to_save=["classifier"]))
    fm.save_pretrained(tmp_path / "ok")
    assert set(read_adapter(tmp_path / "ok").modules["classifier"]) == {"weight", "bias"}
    with pytest.raises(ValueError, match="match no module"):
        fm.add_adapter("x", _cfg(modules_to_save=["no_such_head"]))
    # a head tensor with the wrong shape, a missing one, and a file for another head shape
    w = tmp_path / "ok" / "frod_adapter.safetensors"
    t = load_file(str(w))
    bad = dict(t, **{"modules_to_save.classifier.bias": torch.zeros(4, dtype=torch.float64)})
    save_file(bad, str(w))
    with pytest.raises(AdapterError, match="modules_to_save.classifier.bias"):
        read_adapter(tmp_path / "ok")
    del bad["modules_to_save.classifier.bias"]
    save_file(bad, str(w))
    with pytest.raises(AdapterError, match="missing"):
        read_adapter(tmp_path / "ok")
    save_file(t, str(w))
    other = get_frod_model(tiny_bert_cls(), _cfg(), adapter_name="z")
    with torch.no_grad():
        other.model.classifier.weight = torch.nn.Parameter(torch.zeros(5, 24, dtype=torch.float64))
    with pytest.raises(AdapterError, match="classifier.weight has shape"):
        other.load_adapter(tmp_path / "ok")
    assert other.adapters == ["z"]


def test_forward_signature_is_the_base_models():
    fm = get_frod_model(tiny_bert_cls(), _cfg())
    params = inspect.signature(fm.forward).parameters
    assert {"input_ids", "attention_mask", "labels", "adapter_names"} <= set(params)


@pytest.mark.parametrize("extra", [{}, {"bf16": True, "gradient_checkpointing": True}])
def test_hf_trainer_default_arguments(tmp_path, extra):
    from transformers import Trainer, TrainingArguments
    fm = get_frod_model(tiny_llama(), FrodConfig(LLAMA_TARGETS, sparse_rate=0.1,
                                                 progress=False))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (8, 10), generator=g)
    # a plain torch dataset of dicts: Trainer drops the columns the forward does not name
    ds = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]
    before = {n: p.detach().clone() for n, p in fm.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2,
                             per_device_train_batch_size=4, report_to=[], use_cpu=True, **extra)
    Trainer(model=fm, args=args, train_dataset=ds).train()
    changed = [n for n, p in fm.named_parameters() if p.requires_grad
               and not torch.equal(p.detach(), before[n])]
    assert changed and len(changed) == len(before)
