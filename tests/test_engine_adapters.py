"""Engine with FRoD adapters: equivalence with merged weights, batch invariance, the adapter
pools (eviction, background re-reads) and bad adapters."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from engine_helpers import hf_greedy, random_prompts
from frod_rt.engine import Engine, SamplingParams, UnknownAdapterError
from frod_rt.engine.toy import load_merged, merged_weights, random_adapter, toy_gpt2, toy_llama
from frod_rt.method import AdapterError

LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_T = ["c_attn", "c_proj", "c_fc"]


def _prompts(n, vocab, gen, lo=2, hi=16):
    return random_prompts(n, vocab, gen, lo, hi)


_hf_greedy = hf_greedy


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_each_adapter_matches_merged_hf(arch, tmp_path, gen):
    dt = torch.float64                       # exact enough that greedy tokens never tie-flip
    if arch == "qwen2":                      # biased q/k/v projections
        import transformers
        cfg = transformers.Qwen2Config(vocab_size=113, hidden_size=40, intermediate_size=56,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, initializer_range=0.1,
                                       eos_token_id=None)
        torch.manual_seed(4)
        model = transformers.Qwen2ForCausalLM(cfg).to(dt).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0, 0.1)
        targets = [LLAMA_T, ["q_proj", "k_proj"], ["v_proj", "up_proj"]]
    elif arch == "llama":
        model = toy_llama(vocab_size=113, hidden=40, eos_token_id=None, std=0.1, dtype=dt)
        targets = [LLAMA_T, ["q_proj", "v_proj"], ["gate_proj", "down_proj", "o_proj"]]
    else:
        model = toy_gpt2(vocab_size=113, hidden=40, eos_token_id=None, std=0.1, dtype=dt)
        targets = [GPT2_T, ["c_attn"], ["c_fc", "mlp.c_proj"]]
    files = {f"t{i}": random_adapter(model, tmp_path / f"t{i}", t, seed=i, cache_dir=tmp_path)
             for i, t in enumerate(targets)}
    eng = Engine.load(model, adapters={n: tmp_path / n for n in files}, cache_dir=tmp_path,
                      block_size=4, max_batch_tokens=40, max_num_seqs=8)
    assert eng.adapters() == sorted(files)
    prompts = _prompts(8, 113, gen)
    names = [None, "t0", "t1", "t2", "t0", "t2", None, "t1"]
    res = eng.generate(prompts, adapters=names, max_tokens=7, ignore_eos=True)
    merged = {}
    for n, f in files.items():
        m = copy.deepcopy(model)
        load_merged(m, merged_weights(m, f, cache_dir=tmp_path))
        merged[n] = m
    for p, n, r in zip(prompts, names, res):
        assert r.adapter == n
        assert r.token_ids == _hf_greedy(merged[n] if n else model, p, 7), (n, p)
    # the adapters really change the output
    assert any(r.token_ids != _hf_greedy(model, p, 7) for p, n, r in zip(prompts, names, res) if n)


def test_batch_invariance_16_adapters(tmp_path, gen):
    model = toy_llama(vocab_size=101, hidden=32, intermediate=48, eos_token_id=None, std=0.1)
    for i in range(16):
        random_adapter(model, tmp_path / f"a{i:02d}", LLAMA_T if i % 3 else ["q_proj", "v_proj"],
                       seed=100 + i, cache_dir=tmp_path)
    eng = Engine.load(model, adapters=[tmp_path / f"a{i:02d}" for i in range(16)],
                      cache_dir=tmp_path, device_adapter_capacity=16, record_logits=True)
    prompts = _prompts(24, 101, gen)
    names = [f"a{i % 16:02d}" if i % 3 else None for i in range(24)]
    sp = SamplingParams(max_tokens=6, ignore_eos=True)

    def run(pairs, stagger=False):
        seqs = []
        for j, (p, a) in enumerate(pairs):
            seqs.append(eng.get_sequence(eng.add_request(p, a, sp)))
            if stagger and j % 5 == 4:
                eng.step()          # later requests prefill while earlier ones decode
        while eng.has_unfinished():
            eng.step()
        return [(s.output_ids, torch.stack(s.logits)) for s in seqs]

    mixed = run(list(zip(prompts, names)), stagger=True)
    for j in (0, 1, 2, 5, 7, 11, 23):
        alone = run([(prompts[j], names[j])])[0]
        assert alone[0] == mixed[j][0]
        torch.testing.assert_close(alone[1], mixed[j][1], atol=1e-4, rtol=1e-4)


def test_pool_capacity_4_with_32_adapters(tmp_path, gen):
    model = toy_llama(vocab_size=97, hidden=32, intermediate=48, eos_token_id=None, std=0.1)
    names = [f"x{i:02d}" for i in range(32)]
    for i, n in enumerate(names):
        random_adapter(model, tmp_path / n, ["q_proj", "v_proj", "down_proj"], seed=i,
                       cache_dir=tmp_path)
    # the reference: every adapter resident
    ref = Engine.load(model, adapters=[tmp_path / n for n in names], cache_dir=tmp_path,
                      device_adapter_capacity=32)
    prompts = _prompts(48, 97, gen)
    req_names = [names[i % 32] for i in range(48)]
    want = [r.token_ids for r in ref.generate(prompts, adapters=req_names, max_tokens=5)]
    # 4 device slots, 8 host entries: adapters are evicted and re-read from disk
    eng = Engine.load(model, adapters=[tmp_path / n for n in names], cache_dir=tmp_path,
                      device_adapter_capacity=4, host_adapter_capacity=8)
    slots_ptr = None
    got = eng.generate(prompts, adapters=req_names, max_tokens=5)
    assert [r.token_ids for r in got] == want
    assert all(r.finish_reason == "length" for r in got)
    st = eng.stats()
    assert st["adapter_evictions_total"] > 0 and st["adapter_disk_reads_total"] > 0
    assert st["adapters_on_device"] <= 4 and st["adapters_pinned"] == 0
    assert st["adapters_loaded"] == 32
    tables = eng.pool.layers["model.layers.0.self_attn.q_proj"].slots
    assert tables.ldl.shape[0] == 4 and tables.s.shape[0] == 4
    slots_ptr = tables.ldl.data_ptr()
    # again: same results, the slot tables are reused (no growth)
    assert [r.token_ids for r in eng.generate(prompts[:8], adapters=req_names[:8],
                                              max_tokens=5)] == want[:8]
    assert eng.pool.layers["model.layers.0.self_attn.q_proj"].slots.ldl.data_ptr() == slots_ptr


def test_unknown_and_removed_adapters(tmp_path):
    model = toy_llama(vocab_size=97, hidden=32, eos_token_id=None)
    random_adapter(model, tmp_path / "keep", ["q_proj"], cache_dir=tmp_path)
    random_adapter(model, tmp_path / "gone", ["q_proj"], seed=1, cache_dir=tmp_path)
    eng = Engine.load(model, adapters=[tmp_path / "keep", tmp_path / "gone"], cache_dir=tmp_path)
    with pytest.raises(UnknownAdapterError, match="'missing'.*keep"):
        eng.generate([4, 5, 6], adapter="missing")
    with pytest.raises(KeyError):
        eng.remove_adapter("missing")
    # queued request of an adapter removed before it runs: aborted, others unaffected
    a = eng.add_request([4, 5, 6], adapter="gone")
    b = eng.add_request([4, 5, 6], adapter="keep")
    eng.remove_adapter("gone")
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o.finish_reason
    assert done == {a: "abort", b: "length"}
    assert eng.adapters() == ["keep"]
    with pytest.raises(UnknownAdapterError):
        eng.add_request([1, 2], adapter="gone")
    with pytest.raises(ValueError, match="already loaded"):
        eng.add_adapter("keep", tmp_path / "keep")
    eng.add_adapter("gone", tmp_path / "gone")          # can come back
    assert eng.generate([4, 5, 6], adapter="gone")[0].finish_reason == "length"


def test_bad_adapters_refused_engine_keeps_serving(tmp_path, gen):
    model = toy_llama(vocab_size=97, hidden=32, eos_token_id=None)
    other = toy_llama(vocab_size=97, hidden=32, eos_token_id=None, seed=5)
    random_adapter(model, tmp_path / "good", LLAMA_T, cache_dir=tmp_path)
    random_adapter(other, tmp_path / "foreign", LLAMA_T, cache_dir=tmp_path)
    random_adapter(model, tmp_path / "trunc", LLAMA_T, cache_dir=tmp_path)
    w = tmp_path / "trunc" / "frod_adapter.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    random_adapter(model, tmp_path / "badjson", LLAMA_T, cache_dir=tmp_path)
    (tmp_path / "badjson" / "frod_adapter.json").write_text("{not json")
    eng = Engine.load(model, adapters=[tmp_path / "good"], cache_dir=tmp_path)
    p = _prompts(3, 97, gen)
    before = [r.token_ids for r in eng.generate(p, adapter="good", max_tokens=6)]
    with pytest.raises(AdapterError, match="foreign.*different base"):
        eng.add_adapter("foreign", tmp_path / "foreign")
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        eng.add_adapter("trunc", tmp_path / "trunc")
    with pytest.raises(AdapterError, match="not valid JSON"):
        eng.add_adapter("badjson", tmp_path / "badjson")
    with pytest.raises(FileNotFoundError):
        eng.add_adapter("nodir", tmp_path / "does-not-exist")
    with pytest.raises(AdapterError):
        Engine.load(model, adapters=[tmp_path / "good", tmp_path / "trunc"], cache_dir=tmp_path)
    assert eng.adapters() == ["good"]
    assert [r.token_ids for r in eng.generate(p, adapter="good", max_tokens=6)] == before


def test_adapter_file_broken_after_registration(tmp_path, gen):
    """The host pool dropped the adapter and its file went bad: requests for it abort with a
    reason, the other adapters keep serving."""
    model = toy_llama(vocab_size=97, hidden=32, eos_token_id=None)
    for n in ("a", "b", "c"):
        random_adapter(model, tmp_path / n, ["q_proj"], seed=ord(n), cache_dir=tmp_path)
    eng = Engine.load(model, adapters=[tmp_path / n for n in "abc"], cache_dir=tmp_path,
                      device_adapter_capacity=1, host_adapter_capacity=1)
    assert eng.stats()["adapters_on_host"] == 1            # only "c" is still parsed
    cfg = json.loads((tmp_path / "a" / "frod_adapter.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "a" / "frod_adapter.json").write_text(json.dumps(cfg))
    ra = eng.add_request([5, 6, 7], adapter="a")
    rb = eng.add_request([5, 6, 7], adapter="b")
    done, seqs = {}, {ra: eng.get_sequence(ra)}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o.finish_reason
    assert done == {ra: "abort", rb: "length"}
    assert "format_version" in seqs[ra].error
    assert eng.generate([1, 2, 3], adapter="c", max_tokens=3)[0].finish_reason == "length"


def test_merge_hot_opt_in_matches_replace_form(tmp_path, gen):
    model = toy_llama(vocab_size=97, hidden=32, intermediate=48, eos_token_id=None, std=0.1)
    for i in range(3):
        random_adapter(model, tmp_path / f"h{i}", LLAMA_T if i else ["q_proj", "v_proj"],
                       seed=i, cache_dir=tmp_path)
    dirs = [tmp_path / f"h{i}" for i in range(3)]
    plain = Engine.load(model, adapters=dirs, cache_dir=tmp_path, record_logits=True)
    hot = Engine.load(model, adapters=dirs, cache_dir=tmp_path, record_logits=True,
                      merge_hot=["h0", "h2"], device_adapter_capacity=2)
    prompts = _prompts(9, 97, gen)
    names = ["h0", None, "h1", "h2", "h0", "h1", None, "h2", "h0"]
    sp = SamplingParams(max_tokens=6, ignore_eos=True)

    def run(eng):
        ids = [eng.add_request(p, a, sp) for p, a in zip(prompts, names)]
        seqs = [eng.get_sequence(i) for i in ids]
        while eng.has_unfinished():
            eng.step()
        return seqs

    for a, b in zip(run(plain), run(hot)):
        assert a.output_ids == b.output_ids
        torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=2e-4,
                                   rtol=1e-3)
    # merged weights exist only for hot adapters on the device, and go with eviction
    merged = [m.slots.merged for m in hot.pool.layers.values() if m.slots is not None]
    assert any(merged) and all(len(m) <= 2 for m in merged)
    hot_slots = {e.slot for e in hot.pool.entries.values() if e.name in ("h0", "h2")
                 and e.slot >= 0}
    assert all(set(m) <= hot_slots for m in merged)


def test_mixed_patterns_in_one_batch(tmp_path, gen):
    """Default patterns, a non-zero pattern seed, another sparse rate (longer k) and imported
    rows/cols all served in one batch (per-adapter index tables), each equal to its merge."""
    dt = torch.float64
    model = toy_llama(vocab_size=89, hidden=32, intermediate=40, eos_token_id=None, std=0.1,
                      dtype=dt)
    kinds = {"std": {}, "seeded": {"pattern_seed": 7}, "dense": {"sparse_rate": 0.2},
             "imported": {"explicit_pattern": True}}
    files = {n: random_adapter(model, tmp_path / n, ["q_proj", "v_proj", "down_proj"], seed=i,
                               cache_dir=tmp_path, **kw)
             for i, (n, kw) in enumerate(kinds.items())}
    eng = Engine.load(model, adapters={n: tmp_path / n for n in kinds}, cache_dir=tmp_path)
    prompts = _prompts(8, 89, gen)
    names = list(kinds) * 2
    res = eng.generate(prompts, adapters=names, max_tokens=6, ignore_eos=True)
    for p, n, r in zip(prompts, names, res):
        m = copy.deepcopy(model)
        load_merged(m, merged_weights(m, files[n], cache_dir=tmp_path))
        assert r.token_ids == _hf_greedy(m, p, 6), n
    lt = eng.pool.layers["model.layers.0.self_attn.q_proj"].slots
    assert len({id(lt.patterns.plan(a)) for a in range(lt.A) if lt.patterns.plan(a)}) == 4
