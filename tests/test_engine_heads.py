"""The engine serves adapters' trained heads (``modules_to_save``): classifier heads through
``Engine.classify`` and an LM head through generation, per row, next to base rows and
adapters without a head. References: the training-side FrodModel with the same adapter."""
from __future__ import annotations

import copy

import pytest
import torch

from frod_rt import AdapterError, FrodConfig, get_frod_model
from frod_rt.engine import Engine
from frod_rt.engine.toy import toy_llama

BERT_T = ["query", "key", "value", "attention.output.dense", "intermediate.dense",
          "output.dense"]


def _bert_cls():
    import transformers
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=3,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).eval()


def _with_head(fm, name, module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in fm.saved_modules[module][name].parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def test_classify_serves_adapter_heads(tmp_path):
    base = _bert_cls()
    cfg = lambda heads: FrodConfig(BERT_T, sparse_rate=0.05, init_std=0.05, progress=False,
                                   cache_dir=tmp_path, modules_to_save=heads)
    fm = get_frod_model(copy.deepcopy(base), cfg(["classifier"]), adapter_name="h1")
    fm.add_adapter("h2", cfg(["classifier"]))
    fm.add_adapter("plain", cfg(None))
    _with_head(fm, "h1", "classifier", 1)
    _with_head(fm, "h2", "classifier", 2)
    for n in ("h1", "h2", "plain"):
        fm.save_adapter(tmp_path / n, n)
    eng = Engine.load(copy.deepcopy(base), adapters={n: tmp_path / n for n in
                                                     ("h1", "h2", "plain")}, cache_dir=tmp_path)
    g = torch.Generator().manual_seed(3)
    texts = [torch.randint(1, 120, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 4)]
    names = ["h2", None, "h1", "plain", "h2"]
    got = eng.classify(texts, adapter=names)
    for t, n, row in zip(texts, names, got):
        with torch.no_grad():
            ref = fm(input_ids=torch.tensor([t]), adapter_names=[n or "__base__"]).logits[0]
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=1e-4)
    # the heads matter: h2's rows differ from what the base head would give
    with torch.no_grad():
        fm.saved_modules["classifier"]["h2"].load_state_dict(base.classifier.state_dict())
        no_head = fm(input_ids=torch.tensor([texts[0]]), adapter_names=["h2"]).logits[0]
    assert (got[0] - no_head).abs().max() > 0.1


def test_generate_serves_adapter_lm_head(tmp_path):
    dt = torch.float64
    base = toy_llama(vocab_size=113, hidden=40, eos_token_id=None, std=0.1, dtype=dt)
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(
        ["q_proj", "v_proj"], sparse_rate=0.05, init_std=0.05, progress=False,
        cache_dir=tmp_path, modules_to_save=["lm_head"]), adapter_name="lm")
    _with_head(fm, "lm", "lm_head", 4)
    fm.save_adapter(tmp_path / "lm", "lm")
    eng = Engine.load(copy.deepcopy(base), adapters={"lm": tmp_path / "lm"},
                      cache_dir=tmp_path, block_size=4, max_batch_tokens=40, max_num_seqs=4)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 113, (n,), generator=g).tolist() for n in (4, 7, 5)]
    names = ["lm", None, "lm"]
    res = eng.generate(prompts, adapters=names, max_tokens=5, ignore_eos=True)
    fm.eval()
    for p, n, r in zip(prompts, names, res):
        with fm.adapter_routing([n or "__base__"]):
            want = fm.model.generate(torch.tensor([p]), max_new_tokens=5, min_new_tokens=5,
                                     do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        assert r.token_ids == want, (n, p)
    plain = [base.generate(torch.tensor([p]), max_new_tokens=5, min_new_tokens=5,
                           do_sample=False, pad_token_id=0)[0, len(p):].tolist()
             for p in prompts]
    assert res[0].token_ids != plain[0] or res[2].token_ids != plain[2]


def test_engine_refuses_heads_it_cannot_serve(tmp_path):
    base = _bert_cls()
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(
        BERT_T, sparse_rate=0.05, progress=False, cache_dir=tmp_path,
        modules_to_save=["bert.pooler.dense"]), adapter_name="p")
    fm.save_adapter(tmp_path / "p", "p")
    eng = Engine.load(copy.deepcopy(base), cache_dir=tmp_path)
    with pytest.raises(AdapterError, match="serves trained heads"):
        eng.add_adapter("p", tmp_path / "p")
    assert eng.adapters() == []
