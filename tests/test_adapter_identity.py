"""What identifies a base and an adapter (issue 18): a base fingerprint of the weights alone,
a decomposition fingerprint (weights + targets + alpha + basis), both recorded in adapter
files (format 1 files still load), one clear "trained for <model>, this base is <model>" error
from the Python API, the engine, the CLI and the server, and task-model prefixes mapped."""
from __future__ import annotations

import copy
import json

import httpx
import pytest
import torch

from frod_rt import AdapterError, FrodConfig, get_frod_model, read_adapter
from frod_rt.engine import Engine
from frod_rt.engine.toy import (load_merged, merged_weights, random_adapter, save_toy_model,
                                toy_llama, toy_tokenizer)
from frod_rt.method.adapter_io import CONFIG_NAME
from frod_rt.method.decompose import decompose

from frod_models import tiny_bert

BERT_T = ["query", "value", "intermediate.dense"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def test_base_fingerprint_is_the_weights_alone():
    m = tiny_bert(0)
    a = decompose(m, ["query"], progress=False)
    b = decompose(m, BERT_T, progress=False)
    c = decompose(m, ["query"], alpha=1e-2, progress=False)
    p = decompose(m, ["query"], basis="peft", progress=False)
    assert a.base_fingerprint == b.base_fingerprint == c.base_fingerprint == p.base_fingerprint
    assert len(a.base_fingerprint) == 64
    fps = {a.decomposition_fingerprint, b.decomposition_fingerprint,
           c.decomposition_fingerprint, p.decomposition_fingerprint}
    assert len(fps) == 4                                  # targets, alpha, basis all count
    assert decompose(tiny_bert(1), ["query"], progress=False).base_fingerprint != a.base_fingerprint
    assert a.base_model == {"architecture": "BertModel", "model_type": "bert",
                            "hidden_size": 24, "num_layers": 2, "dtype": "float32"}


def test_adapter_files_record_both_and_format_1_still_loads(tmp_path):
    fm = get_frod_model(tiny_bert(0), FrodConfig(BERT_T, sparse_rate=0.05, init_std=0.1,
                                                 progress=False))
    fm.save_adapter(tmp_path / "a")
    raw = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert raw["decomposition_fingerprint"] == fm.decomposition.decomposition_fingerprint
    assert raw["base_fingerprint"] == fm.decomposition.base_fingerprint
    assert raw["base_model"]["architecture"] == "BertModel"
    # the same adapter as format 1 wrote it: "base_fingerprint" held the decomposition's
    v1 = {k: v for k, v in raw.items() if k not in ("decomposition_fingerprint", "base_model")}
    v1.update(format_version=1, base_fingerprint=raw["decomposition_fingerprint"])
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(v1))
    old = read_adapter(tmp_path / "a")
    assert old.config.decomposition_fingerprint == raw["decomposition_fingerprint"]
    assert old.config.base_fingerprint == "" and old.config.base_model == {}
    dst = get_frod_model(tiny_bert(0), FrodConfig(BERT_T, sparse_rate=0.05, progress=False))
    dst.load_adapter(tmp_path / "a", "old")
    ids = torch.arange(7)[None]
    with torch.no_grad(), dst.adapter_routing(["old"]):
        y = dst(ids).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(y, fm(ids).last_hidden_state, rtol=0, atol=0)


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, seed=3)
    base = save_toy_model(model, tok, root / "toybase")
    bert = tiny_bert(0)
    random_adapter(bert, root / "bert_ad", BERT_T, cache_dir=root / "cache")
    return {"root": root, "model": model, "base": base, "bert_ad": root / "bert_ad"}


WANT = r"trained for BertModel \(bert, hidden size 24, 2 layers, float32\), this base is " \
       r"LlamaForCausalLM \(llama, hidden size 32, 2 layers, float32\)"


def test_adapter_of_another_model_one_error_everywhere(llama_base, capsys):
    from frod_rt.cli import main
    from frod_rt.server import ServerThread
    fm = get_frod_model(copy.deepcopy(llama_base["model"]),
                        FrodConfig(["q_proj"], progress=False,
                                   cache_dir=llama_base["root"] / "cache"))
    with pytest.raises(AdapterError, match=WANT):                          # Python API
        fm.load_adapter(llama_base["bert_ad"])
    eng = Engine.load(llama_base["base"], cache_dir=llama_base["root"] / "cache")
    with pytest.raises(AdapterError, match=WANT):                          # engine
        eng.add_adapter("b", llama_base["bert_ad"])
    rc = main(["generate", str(llama_base["base"]), "hello", "--max-tokens", "2",     # CLI
               "--adapter", f"b={llama_base['bert_ad']}",
               "--cache-dir", str(llama_base["root"] / "cache")])
    import re
    err = capsys.readouterr().err
    assert rc == 2 and re.search(WANT, err), err
    from frod_rt.server.config import ServerConfig
    with ServerThread(eng, config=ServerConfig(allow_adapter_loading=llama_base["root"])) as srv:
        r = httpx.post(srv.url + "/v1/adapters", json={"name": "b",
                                                       "path": str(llama_base["bert_ad"])})
    assert r.status_code == 400 and re.search(WANT, r.json()["error"]["message"])
    eng.close()


def _cls_bert():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=61, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("direction", ["task_to_backbone", "backbone_to_task"])
def test_task_model_prefix_is_mapped(tmp_path, direction):
    cls = _cls_bert()
    backbone = copy.deepcopy(cls.bert)
    src, dst = (cls, backbone) if direction == "task_to_backbone" else (backbone, cls)
    f = random_adapter(src, tmp_path / "ad", BERT_T, scale=0.2, cache_dir=tmp_path / "c")
    prefix = "bert." if direction == "task_to_backbone" else ""
    assert all(n.startswith(prefix) for n in f.layers)
    ref = copy.deepcopy(src)
    load_merged(ref, merged_weights(ref, f, cache_dir=tmp_path / "c"))
    ref_bert = ref.bert if direction == "task_to_backbone" else ref
    ids = torch.tensor([[3, 7, 11, 2, 5]])
    with torch.no_grad():
        want = ref_bert(ids).last_hidden_state
    fm = get_frod_model(copy.deepcopy(dst), FrodConfig(BERT_T, progress=False,
                                                       category_mode="per_role",   # as the file
                                                       cache_dir=tmp_path / "c"))
    fm.load_adapter(tmp_path / "ad", "mapped")
    with torch.no_grad(), fm.adapter_routing(["mapped"]):
        out = fm(ids)
    got = out.last_hidden_state if direction == "task_to_backbone" else None
    if got is None:                                   # classification model: its backbone
        with torch.no_grad(), fm.adapter_routing(["mapped"]):
            got = fm.model.bert(ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert (want - (backbone(ids).last_hidden_state)).abs().max() > 1e-3
    # the engine maps it too
    eng = Engine.load(copy.deepcopy(dst), adapters={"mapped": tmp_path / "ad"},
                      cache_dir=tmp_path / "c")
    assert eng.adapters() == ["mapped"]
    eng.close()


def test_prefix_with_other_weights_is_refused(tmp_path):
    cls = _cls_bert()
    random_adapter(cls, tmp_path / "ad", BERT_T, cache_dir=tmp_path / "c")
    other = tiny_bert(5)                     # same shapes and names after the prefix
    fm = get_frod_model(other, FrodConfig(BERT_T, progress=False, cache_dir=tmp_path / "c"))
    with pytest.raises(AdapterError, match="trained for BertForSequenceClassification .*this "
                                           "base is BertModel"):
        fm.load_adapter(tmp_path / "ad")


def test_inspect_shows_both_fingerprints_and_whether_it_fits(llama_base, tmp_path, capsys):
    from frod_rt.cli import main
    from frod_rt.method.fingerprint import model_fingerprint
    cache = str(llama_base["root"] / "cache")
    own = random_adapter(llama_base["model"], tmp_path / "own", ["q_proj", "v_proj"],
                         cache_dir=cache)
    assert main(["inspect", str(tmp_path / "own"), "--base", str(llama_base["base"]),
                 "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert f"base fingerprint {own.config.base_fingerprint}" in out
    assert f"decomposition    {own.config.decomposition_fingerprint}" in out
    assert own.config.base_fingerprint == model_fingerprint(llama_base["model"])
    assert "trained for      LlamaForCausalLM (llama, hidden size 32, 2 layers, float32)" in out
    assert "fits this base   yes (frod_rt basis)" in out
    assert main(["inspect", str(llama_base["bert_ad"]), "--base", str(llama_base["base"]),
                 "--cache-dir", cache, "--json"]) == 1
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert not fit["fits"] and "trained for BertModel" in fit["reason"]
    # a classification model's adapter against its saved backbone: fits after the mapping
    cls = _cls_bert()
    random_adapter(cls, tmp_path / "cls_ad", BERT_T, cache_dir=cache)
    cls.bert.save_pretrained(tmp_path / "backbone")
    assert main(["inspect", str(tmp_path / "cls_ad"), "--base", str(tmp_path / "backbone"),
                 "--cache-dir", cache]) == 0
    assert "yes (frod_rt basis, layer names mapped (removed 'bert.'))" in capsys.readouterr().out


def test_base_fingerprint_follows_in_place_weight_changes():
    """The remembered fingerprint of a model is recomputed when a weight changes in place."""
    from frod_rt.method.fingerprint import model_fingerprint
    m = tiny_bert(0)
    a = model_fingerprint(m)
    assert model_fingerprint(m) == a == model_fingerprint(tiny_bert(0))
    with torch.no_grad():
        m.encoder.layer[1].output.dense.weight[0, 0] += 1.0
    assert model_fingerprint(m) != a
