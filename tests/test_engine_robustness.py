"""One request must never hurt another: sampling that cannot raise, non-finite logits and
forward failures isolated per request, the offline API recovering, fair admission of a
non-resident adapter (aging), and adapter files refused consistently."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from frod_rt.engine import Engine, SamplingParams
from frod_rt.engine.toy import random_adapter, toy_llama, toy_tokenizer
from frod_rt.method.adapter_io import AdapterError, read_adapter

TARGETS = ["q_proj", "v_proj", "up_proj"]
PROMPTS = ["the quick brown fox", "once upon a time", "to be or not", "a journey of a"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=5)
    cache = root / "cache"
    ads = {}
    for i in range(4):
        random_adapter(model, root / f"a{i}", TARGETS, seed=20 + i, cache_dir=cache)
        ads[f"a{i}"] = root / f"a{i}"
    # an adapter whose values are huge but finite: the adapted rows overflow to inf / NaN
    random_adapter(model, root / "huge", TARGETS, seed=7, cache_dir=cache)
    t = load_file(root / "huge" / "frod_adapter.safetensors")
    save_file({k: torch.full_like(v, 3e38) for k, v in t.items()},
              str(root / "huge" / "frod_adapter.safetensors"))
    ads["huge"] = root / "huge"
    return {"root": root, "tok": tok, "model": model, "cache": cache, "ads": ads}


def _engine(toy, **kw):
    kw.setdefault("device_adapter_capacity", 8)
    return Engine.load(toy["model"], adapters=toy["ads"], tokenizer=toy["tok"],
                       cache_dir=toy["cache"], **kw)


def test_tiny_temperature_is_greedy_and_cannot_raise(toy):
    eng = _engine(toy)
    greedy = eng.generate(PROMPTS, adapters=["a0", None, "a1", "a2"], max_tokens=6,
                          ignore_eos=True)
    for t in (1e-40, 1e-30, 5e-6):
        res = eng.generate(PROMPTS, adapters=["a0", None, "a1", "a2"], max_tokens=6,
                           ignore_eos=True, temperature=t, seed=1)
        assert [r.token_ids for r in res] == [r.token_ids for r in greedy], t
        assert all(r.finish_reason == "length" for r in res)
    # a tiny top_p keeps the top token (and never empties the distribution)
    res = eng.generate(PROMPTS[0], adapter="a0", max_tokens=6, ignore_eos=True,
                       temperature=1.0, top_p=1e-30, seed=3)[0]
    assert res.token_ids == greedy[0].token_ids


def test_non_finite_logits_fail_only_that_request(toy):
    eng = _engine(toy)
    alone = [eng.generate(p, adapter=a, max_tokens=7, ignore_eos=True)[0]
             for p, a in zip(PROMPTS[1:], [None, "a1", "a3"])]
    for temp in (0.0, 0.8):
        res = eng.generate(PROMPTS, adapters=["huge", None, "a1", "a3"], max_tokens=7,
                           ignore_eos=True, temperature=temp, seed=11)
        bad = res[0]
        assert bad.finish_reason == "error"
        assert "non-finite logits" in bad.error
        if temp == 0.0:
            for r, ref in zip(res[1:], alone):
                assert r.finish_reason == "length" and r.token_ids == ref.token_ids
        else:
            assert all(r.finish_reason == "length" and len(r.token_ids) == 7 for r in res[1:])
    assert eng.stats()["requests_failed_total"] == 2
    assert eng.stats()["running"] == 0 and eng.stats()["kv_blocks_used"] == 0
    # the engine goes on serving
    again = eng.generate(PROMPTS[1], max_tokens=7, ignore_eos=True)[0]
    assert again.token_ids == alone[0].token_ids


def test_forward_failure_is_isolated_to_its_request(toy):
    eng = _engine(toy)
    alone = [eng.generate(p, adapter=a, max_tokens=5, ignore_eos=True)[0].token_ids
             for p, a in zip(PROMPTS, ["a0", None, "a2", "a3"])]
    real_run = eng.runner.run

    def run(batch):
        if any(s.adapter == "a2" for s in batch.seqs):
            raise RuntimeError("simulated kernel failure")
        return real_run(batch)

    eng.runner.run = run
    res = eng.generate(PROMPTS, adapters=["a0", None, "a2", "a3"], max_tokens=5,
                       ignore_eos=True)
    assert res[2].finish_reason == "error" and "simulated kernel failure" in res[2].error
    for i in (0, 1, 3):
        assert res[i].finish_reason == "length" and res[i].token_ids == alone[i]
    eng.runner.run = real_run
    assert eng.stats()["kv_blocks_used"] == 0


def test_generate_recovers_after_a_step_raises(toy):
    eng = _engine(toy)
    ref = eng.generate(PROMPTS[0], adapter="a0", max_tokens=4)[0].token_ids
    real_step = eng.step
    calls = {"n": 0}

    def step():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real_step()

    eng.step = step
    with pytest.raises(RuntimeError, match="boom"):
        eng.generate(PROMPTS, adapters=["a0", None, "a1", "a2"], max_tokens=4)
    eng.step = real_step
    assert not eng.has_unfinished()
    assert eng.stats()["kv_blocks_used"] == 0 and eng.stats()["running"] == 0
    assert eng.generate(PROMPTS[0], adapter="a0", max_tokens=4)[0].token_ids == ref


def test_seed_range_is_checked_up_front():
    with pytest.raises(ValueError, match="^seed"):
        SamplingParams.build(seed=2**64)
    assert SamplingParams.build(seed=2**64 - 1).seed == 2**64 - 1


def test_waiting_adapter_is_served_despite_pinned_slots(toy):
    """Two device slots, both pinned by a steady stream of requests for resident adapters:
    a request for a third adapter must still be admitted within a bounded number of steps."""
    eng = _engine(toy, device_adapter_capacity=2, max_num_seqs=8)
    mk = dict(max_tokens=6, ignore_eos=True)
    eng.add_request(PROMPTS[0], "a0", mk)
    eng.add_request(PROMPTS[1], "a1", mk)
    eng.step()
    starving = eng.add_request(PROMPTS[2], "a2", mk)
    done_at = None
    for step in range(200):
        # keep both resident adapters busy: a fresh request for each, every step
        eng.add_request(PROMPTS[3], "a0", mk)
        eng.add_request(PROMPTS[3], "a1", mk)
        outs = eng.step()
        if any(o.request_id == starving and o.finished for o in outs):
            done_at = step
            break
    assert done_at is not None, "the request for a non-resident adapter was never served"
    assert done_at < 64
    for rid in list(eng._seqs):
        eng.abort_request(rid)
    while eng.has_unfinished():
        eng.step()


def _edit_config(path, fn):
    cfg = json.loads((path / "frod_adapter.json").read_text())
    fn(cfg)
    (path / "frod_adapter.json").write_text(json.dumps(cfg))


def test_negative_adapter_seed_refused_by_engine_and_frod_model(toy, tmp_path):
    import shutil
    from frod_rt.method import FrodConfig, decompose, get_frod_model
    bad = tmp_path / "neg"
    shutil.copytree(toy["ads"]["a0"], bad)
    _edit_config(bad, lambda c: c.update(seed=-7))
    with pytest.raises(AdapterError, match="seed"):
        read_adapter(bad)
    eng = _engine(toy)
    with pytest.raises(AdapterError, match="seed"):
        eng.add_adapter("neg", bad)
    assert "neg" not in eng.adapters()
    m = copy.deepcopy(toy["model"])      # get_frod_model wraps the layers in place
    fm = get_frod_model(m, FrodConfig(target_modules=TARGETS),
                        decomposition=decompose(m, TARGETS, cache_dir=toy["cache"],
                                                progress=False))
    with pytest.raises(AdapterError, match="seed"):
        fm.load_adapter(bad, name="neg")


def test_non_linear_layer_in_adapter_json_is_an_adapter_error(toy, tmp_path):
    import shutil
    bad = tmp_path / "norm"
    shutil.copytree(toy["ads"]["a0"], bad)
    cfg = json.loads((bad / "frod_adapter.json").read_text())
    key = next(k for k in cfg["categories"] if "q_proj" in k)
    old = cfg["categories"][key]["layers"][0]
    new = "model.layers.0.input_layernorm"
    cfg["categories"][key]["layers"][0] = new
    (bad / "frod_adapter.json").write_text(json.dumps(cfg))
    t = load_file(bad / "frod_adapter.safetensors")
    save_file({k.replace(old, new): v for k, v in t.items()},
              str(bad / "frod_adapter.safetensors"))
    with pytest.raises(AdapterError, match="input_layernorm"):
        read_adapter(bad)
    eng = _engine(toy)
    with pytest.raises(AdapterError, match="input_layernorm"):
        eng.add_adapter("norm", bad)


def test_self_consistent_category_naming_a_norm_is_an_adapter_error(toy, tmp_path):
    """The layer and its category key agree, but the base's module is an RMSNorm."""
    import shutil
    bad = tmp_path / "norm2"
    shutil.copytree(toy["ads"]["a0"], bad)
    cfg = json.loads((bad / "frod_adapter.json").read_text())
    key = next(k for k in cfg["categories"] if "q_proj" in k)
    cat = cfg["categories"].pop(key)
    old = cat["layers"]
    new = [n.replace("self_attn.q_proj", "input_layernorm") for n in old]
    cfg["categories"][key.replace("self_attn.q_proj", "input_layernorm")] = dict(cat, layers=new)
    (bad / "frod_adapter.json").write_text(json.dumps(cfg))
    t = load_file(bad / "frod_adapter.safetensors")
    for o, n in zip(old, new):
        t = {k.replace(o + ".", n + "."): v for k, v in t.items()}
    save_file(t, str(bad / "frod_adapter.safetensors"))
    read_adapter(bad)                     # a consistent file: only the base can tell
    eng = _engine(toy)
    with pytest.raises(AdapterError, match="LlamaRMSNorm"):
        eng.add_adapter("norm2", bad)
    assert "norm2" not in eng.adapters()
    assert eng.generate(PROMPTS[0], adapter="a0", max_tokens=3)[0].finish_reason == "length"
