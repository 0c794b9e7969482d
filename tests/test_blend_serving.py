"""Serving blends of adapters: ``Engine.generate(adapters=[{"a": .5, "b": .5}])`` and the
server's ``adapter_weights`` run a virtual adapter in the same mixed batch, and give exactly
what an adapter file holding the blended values gives."""
from __future__ import annotations

import httpx
import openai
import pytest
import torch

from frod_rt.engine import Engine
from frod_rt.engine.toy import random_adapter, toy_llama, toy_tokenizer
from frod_rt.method.adapter_io import read_adapter, write_adapter
from frod_rt.method.blend import BlendError, blend_adapters
from frod_rt.server import ServerThread

PROMPTS = ["the quick brown fox", "once upon a time there", "to be or not", "a journey of"]
MIX = {"a": 0.6, "b": -0.35, "c": 0.5}     # a, c share q/v; b targets the MLP only


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend_srv")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=7)
    cache = root / "cache"
    specs = {"a": (["q_proj", "v_proj"], {}), "b": (["gate_proj", "up_proj", "down_proj"], {}),
             "c": (["q_proj", "v_proj", "o_proj"], {}),
             "own": (["q_proj"], {"explicit_pattern": True})}
    for i, (name, (targets, kw)) in enumerate(specs.items()):
        random_adapter(model, root / name, targets, seed=20 + i, scale=0.5, cache_dir=cache,
                       **kw)
    parts = [(read_adapter(root / n), w) for n, w in MIX.items()]
    write_adapter(root / "mixfile", blend_adapters(parts, name="mixfile"))
    return model, tok, root


def _engine(toy, **kw):
    model, tok, root = toy
    eng = Engine(model, tokenizer=tok, base_name="toybase", cache_dir=root / "cache",
                 record_logits=True, **kw)
    for n in ("a", "b", "c", "own", "mixfile"):
        eng.add_adapter(n, root / n)
    return eng


def test_blend_equals_blended_adapter_file_in_one_mixed_batch(toy):
    eng = _engine(toy, device_adapter_capacity=6)
    half = {"a": 0.5, "c": 0.5}
    alist = [MIX, "mixfile", None, "a", dict(reversed(list(MIX.items()))), half, "c", MIX]
    plist = [PROMPTS[i % len(PROMPTS)] for i in range(len(alist))]
    plist[4] = plist[7] = plist[0]
    res = eng.generate(plist, adapters=alist, max_tokens=10, temperature=0, ignore_eos=True)
    mix_ref = eng.generate(PROMPTS[0], adapter="mixfile", max_tokens=10, temperature=0,
                           ignore_eos=True)[0]
    for i in (0, 4, 7):                                   # the blend, three times
        assert res[i].token_ids == mix_ref.token_ids
        assert res[i].adapter.startswith("blend/")
    assert res[1].token_ids == eng.generate(plist[1], adapter="mixfile", max_tokens=10,
                                            temperature=0, ignore_eos=True)[0].token_ids
    base = eng.generate(PROMPTS[0], max_tokens=10, temperature=0, ignore_eos=True)[0]
    assert mix_ref.token_ids != base.token_ids
    assert res[5].token_ids != res[0].token_ids           # another blend, another text
    assert eng.stats()["blend_builds_total"] == 2        # MIX (any key order) and half
    # logits: the blend's rows equal the file's rows of the same prompt
    blended, filed = (torch.stack(x) for x in _logits(eng, [PROMPTS[0]] * 2, [MIX, "mixfile"]))
    torch.testing.assert_close(blended, filed, atol=1e-5, rtol=1e-5)


def _logits(eng, prompts, adapters):
    ids = [eng.add_request(p, a, {"max_tokens": 4, "temperature": 0, "ignore_eos": True})
           for p, a in zip(prompts, adapters)]
    seqs = [eng.get_sequence(r) for r in ids]
    while eng.has_unfinished():
        eng.step()
    return [s.logits for s in seqs]


def test_blend_cache_bounded_and_dropped_with_components(toy):
    eng = _engine(toy, blend_cache_capacity=2)
    for w in (0.1, 0.2, 0.3, 0.4):
        eng.generate("the fox", adapter={"a": w, "c": 1 - w}, max_tokens=2, ignore_eos=True)
        assert eng.stats()["blends_cached"] <= 2
    assert eng.stats()["blend_builds_total"] == 4
    assert eng.adapters() == ["a", "b", "c", "mixfile", "own"]     # blends are not listed
    assert eng.stats()["adapters_loaded"] == 5
    eng.remove_adapter("c")
    assert eng.stats()["blends_cached"] == 0
    with pytest.raises(KeyError, match="unknown adapter 'c'"):
        eng.generate("the fox", adapter={"a": 0.5, "c": 0.5}, max_tokens=2)
    # a one-adapter blend of weight 1 is that adapter
    r1 = eng.generate("the fox", adapter={"a": 1.0}, max_tokens=4, temperature=0)[0]
    assert r1.adapter == "a"


def test_blend_refusals(toy):
    eng = _engine(toy)
    with pytest.raises(BlendError, match="own .*pattern"):
        eng.generate("the fox", adapter={"own": 0.5, "a": 0.5}, max_tokens=2)
    with pytest.raises(ValueError, match="adapter_weights"):
        eng.generate("the fox", adapter={"a": float("inf")}, max_tokens=2)
    with pytest.raises(KeyError, match="unknown adapter"):
        eng.add_request("the fox", "blend/a=1.0")
    assert not eng.has_unfinished()
    eng.generate("the fox", adapter={"own": 0.5}, max_tokens=2)     # alone: fine


def test_server_adapter_weights(toy):
    eng = _engine(toy)
    ref = _engine(toy)
    want = ref.generate(PROMPTS, adapter="mixfile", max_tokens=8, temperature=0,
                        ignore_eos=True)
    with ServerThread(eng) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        r = client.completions.create(model="toybase", prompt=PROMPTS, max_tokens=8,
                                      temperature=0,
                                      extra_body={"adapter_weights": MIX, "ignore_eos": True})
        assert [c.text for c in r.choices] == [w.text for w in want]
        chat = client.chat.completions.create(
            model="toybase", messages=[{"role": "user", "content": "the fox"}], max_tokens=4,
            temperature=0, extra_body={"adapter_weights": MIX})
        assert chat.choices[0].message.content is not None

        def post(**body):
            return httpx.post(srv.url + "/v1/completions", timeout=60,
                              json={"prompt": "the fox", "max_tokens": 2, **body})
        for body, status in (({"model": "a", "adapter_weights": MIX}, 400),
                             ({"model": "toybase", "adapter_weights": {"zz": 1.0}}, 404),
                             ({"model": "toybase", "adapter_weights": {}}, 400),
                             ({"model": "toybase", "adapter_weights": {"own": .5, "a": .5}},
                              400)):
            r = post(**body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["param"] == "adapter_weights", r.text
        text = httpx.get(srv.url + "/metrics").text
        assert 'frod_rt_adapter_requests_total{adapter="(blend)"} 5.0' in text
    eng.close()
    ref.close()


def test_embed_with_a_blend(tmp_path):
    import transformers
    cfg = transformers.BertConfig(vocab_size=90, hidden_size=40, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=56,
                                  max_position_embeddings=64)
    torch.manual_seed(3)
    model = transformers.BertModel(cfg).eval()
    random_adapter(model, tmp_path / "p", ["attention.self.query"], seed=1, cache_dir=tmp_path)
    random_adapter(model, tmp_path / "q", ["attention.self.query", "intermediate.dense"],
                   seed=2, cache_dir=tmp_path)
    w = {"p": 0.3, "q": 0.9}
    write_adapter(tmp_path / "pq", blend_adapters([(read_adapter(tmp_path / n), x)
                                                   for n, x in w.items()], name="pq"))
    eng = Engine(model, base_name="bert", cache_dir=tmp_path)
    for n in ("p", "q", "pq"):
        eng.add_adapter(n, tmp_path / n)
    texts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    got = eng.embed(texts, adapter=[w, "pq", w])
    want = eng.embed(texts, adapter="pq")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (got - eng.embed(texts)).abs().max() > 1e-3


def test_removing_a_component_ends_queued_blend_requests(toy):
    """A blend is an adapter instance: removing a component retires it; a running request
    finishes with it, a queued one ends as for a removed adapter, a new one is refused."""
    eng = _engine(toy, max_num_seqs=1)
    sp = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    running = eng.add_request(PROMPTS[0], MIX, sp)
    eng.step()                                          # admitted and prefilled
    queued = eng.add_request(PROMPTS[1], MIX, sp)       # waits: max_num_seqs=1
    eng.remove_adapter("b")
    outs = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                outs[o.request_id] = o
    assert outs[running].finish_reason == "length"
    assert outs[queued].finish_reason == "abort" and "was removed" in outs[queued].error
    assert eng.stats()["blends_cached"] == 0
    assert not [e for e in eng.pool.slot_entry if e is not None and e.path is None]  # slot freed
    with pytest.raises(KeyError, match="unknown adapter 'b'"):
        eng.add_request(PROMPTS[0], MIX, sp)
