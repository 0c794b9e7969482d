"""Automatic merged serving of a dominant adapter, and shared-input adapters in the engine."""
from __future__ import annotations

import copy

import pytest
import torch

from engine_helpers import hf_greedy, random_prompts
from frod_rt.engine import Engine, SamplingParams
from frod_rt.engine.auto_merge import AutoMerger, merged_weight
from frod_rt.engine.toy import load_merged, merged_weights, random_adapter, toy_llama
from frod_rt.method.adapter_io import AdapterError

LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(dt=torch.float64):
    return toy_llama(vocab_size=97, hidden=32, intermediate=40, eos_token_id=None, std=0.1,
                     dtype=dt)


def _merged_hf(model, f, tmp_path):
    m = copy.deepcopy(model)
    load_merged(m, merged_weights(m, f, cache_dir=tmp_path))
    return m


@pytest.mark.parametrize("mode", ["per_role", "shared_input"])
def test_auto_merge_one_adapter_matches_merged_hf(mode, tmp_path, gen):
    model = _model()
    f = random_adapter(model, tmp_path / "a", LLAMA_T, seed=1, cache_dir=tmp_path,
                       category_mode=mode)
    eng = Engine.load(model, adapters={"a": tmp_path / "a"}, cache_dir=tmp_path,
                      auto_merge=True, auto_merge_window=2)
    prompts = random_prompts(6, 97, gen)
    res = eng.generate(prompts, adapters=["a"] * 6, max_tokens=6, ignore_eos=True)
    ref = _merged_hf(model, f, tmp_path)
    for p, r in zip(prompts, res):
        assert r.token_ids == hf_greedy(ref, p, 6)
    am = eng.auto_merger
    assert am.merges_total >= 1
    layers = [m for m in eng.pool.layers.values() if m.slots is not None]
    assert layers and all(m.slots.merged for m in layers)
    # the merged weight equals the dense float64 merge
    want = merged_weights(model, f, cache_dir=tmp_path)
    for m in layers:
        (slot, W), = m.slots.merged.items()
        torch.testing.assert_close(W, want[m.name].to(W.dtype), rtol=1e-10, atol=1e-12)
    # it cools: base-only traffic drops the merged weights
    eng.generate(random_prompts(4, 97, gen), max_tokens=4, ignore_eos=True)
    assert am.unmerges_total >= 1 and not any(m.slots.merged for m in layers)


def test_auto_merge_logits_close_to_replace_form_and_budget(tmp_path, gen):
    model = _model(torch.float32)
    random_adapter(model, tmp_path / "a", LLAMA_T, seed=2, cache_dir=tmp_path)
    random_adapter(model, tmp_path / "b", ["q_proj", "v_proj"], seed=3, cache_dir=tmp_path)
    ads = {"a": tmp_path / "a", "b": tmp_path / "b"}
    plain = Engine.load(copy.deepcopy(model), adapters=ads, cache_dir=tmp_path,
                        record_logits=True)
    auto = Engine.load(copy.deepcopy(model), adapters=ads, cache_dir=tmp_path,
                       record_logits=True, auto_merge=True, auto_merge_window=1)
    none = Engine.load(copy.deepcopy(model), adapters=ads, cache_dir=tmp_path,
                       auto_merge=True, auto_merge_budget_mb=0)
    prompts = random_prompts(5, 97, gen)
    names = ["a", "a", "a", "a", "b"]
    sp = SamplingParams(max_tokens=5, ignore_eos=True)

    def logits(eng):
        ids = [eng.add_request(p, adapter=n, sampling=sp) for p, n in zip(prompts, names)]
        seqs = [eng.get_sequence(i) for i in ids]
        while eng.has_unfinished():
            eng.step()
        return [torch.stack(s.logits) for s in seqs]
    for x, y in zip(logits(plain), logits(auto)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert auto.auto_merger.merges_total >= 1
    none.generate(prompts, adapters=names, max_tokens=3, ignore_eos=True)
    assert none.auto_merger.merges_total == 0


def test_auto_merger_rules():
    with pytest.raises(ValueError, match="window"):
        AutoMerger([], window=0)
    with pytest.raises(ValueError, match="share"):
        AutoMerger([], share=1.5)


@pytest.mark.parametrize("first", ["p", "s"])
def test_engine_serves_both_category_modes(first, tmp_path, gen):
    """A per-role adapter (e.g. a PEFT import) and shared-input adapters (frod_rt's default)
    in one engine, whichever comes first: the other mode is one more basis; one mixed batch
    equals Hugging Face generate on each merged model; a blend of two adapters of the
    engine's second mode is served in their basis."""
    model = _model()
    files = {"p": random_adapter(model, tmp_path / "p", LLAMA_T, seed=1, cache_dir=tmp_path),
             "s": random_adapter(model, tmp_path / "s", LLAMA_T, seed=2, cache_dir=tmp_path,
                                 category_mode="shared_input"),
             "s2": random_adapter(model, tmp_path / "s2", ["q_proj", "v_proj"], seed=3,
                                  cache_dir=tmp_path, category_mode="shared_input"),
             "p2": random_adapter(model, tmp_path / "p2", LLAMA_T, seed=4, cache_dir=tmp_path)}
    order = [first] + [n for n in files if n != first]
    eng = Engine.load(model, adapters={n: tmp_path / n for n in order}, cache_dir=tmp_path,
                      block_size=4, max_batch_tokens=40, max_num_seqs=8)
    q = eng.pool.layers["model.layers.0.self_attn.q_proj"]
    prompts = random_prompts(8, 97, gen)
    names = [None, "p", "s", "s2", "p2", "s", "p", None]
    res = eng.generate(prompts, adapters=names, max_tokens=5, ignore_eos=True)
    assert len(q.slots.bases) == 2        # the per-role and the shared-input basis of q
    merged = {n: _merged_hf(model, f, tmp_path) for n, f in files.items()}
    for p, n, r in zip(prompts, names, res):
        assert r.token_ids == hf_greedy(merged[n] if n else model, p, 5), (n, p)
    from frod_rt.method.blend import blend_adapters
    a, b = ("s", "s2") if first == "p" else ("p", "p2")       # the engine's second mode
    got = eng.generate(prompts[:2], adapter={a: 0.5, b: 0.5}, max_tokens=4, ignore_eos=True)
    blended = _merged_hf(model, blend_adapters([(files[a], 0.5), (files[b], 0.5)]), tmp_path)
    for p, r in zip(prompts[:2], got):
        assert r.token_ids == hf_greedy(blended, p, 4)
    eng.close()


def test_shared_input_mixed_batch_matches_merged_hf(tmp_path, gen):
    model = _model()
    targets = [LLAMA_T, ["q_proj", "v_proj"], ["gate_proj", "down_proj", "o_proj"]]
    files = {f"t{i}": random_adapter(model, tmp_path / f"t{i}", t, seed=10 + i,
                                     cache_dir=tmp_path, category_mode="shared_input")
             for i, t in enumerate(targets)}
    eng = Engine.load(model, adapters={n: tmp_path / n for n in files}, cache_dir=tmp_path,
                      block_size=4, max_batch_tokens=40, max_num_seqs=8)
    lt = eng.pool.layers
    q, k = lt["model.layers.0.self_attn.q_proj"], lt["model.layers.0.self_attn.k_proj"]
    prompts = random_prompts(8, 97, gen)
    names = [None, "t0", "t1", "t2", "t0", "t2", None, "t1"]
    res = eng.generate(prompts, adapters=names, max_tokens=6, ignore_eos=True)
    assert q.slots.V is k.slots.V                     # one basis for q, k, v
    merged = {n: _merged_hf(model, f, tmp_path) for n, f in files.items()}
    for p, n, r in zip(prompts, names, res):
        assert r.token_ids == hf_greedy(merged[n] if n else model, p, 6), (n, p)
