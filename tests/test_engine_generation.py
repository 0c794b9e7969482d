"""Engine generation on the base model: equivalence with HF, continuous batching, KV memory,
sampling, stop conditions, aborts and limits."""
from __future__ import annotations

import pytest
import torch

from engine_helpers import hf_greedy, random_prompts
from frod_rt.engine import (Engine, EngineOverloadedError, RequestTooLargeError,
                            SamplingParams, UnknownAdapterError)
from frod_rt.engine.toy import toy_gpt2, toy_llama, toy_tokenizer


_prompts = random_prompts
_hf_greedy = hf_greedy


def _qwen2():
    import transformers
    cfg = transformers.Qwen2Config(vocab_size=131, hidden_size=48, intermediate_size=72,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   initializer_range=0.1, eos_token_id=None)
    torch.manual_seed(3)
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_greedy_matches_hf_generate(arch, gen):
    model = {"llama": lambda: toy_llama(vocab_size=131, hidden=48, eos_token_id=None, std=0.1),
             "gpt2": lambda: toy_gpt2(vocab_size=131, hidden=48, eos_token_id=None, std=0.1),
             "qwen2": _qwen2}[arch]()
    # small blocks and a small token budget: prompts are chunked and cross block borders
    eng = Engine.load(model, block_size=4, kv_cache_tokens=1024, max_batch_tokens=24,
                      max_num_seqs=6)
    prompts = _prompts(7, 131, gen)
    res = eng.generate(prompts, max_tokens=9, ignore_eos=True)
    for p, r in zip(prompts, res):
        assert r.token_ids == _hf_greedy(model, p, 9)
        assert r.finish_reason == "length" and r.prompt_tokens == len(p)
    assert eng.stats()["kv_blocks_used"] == 0


def test_logits_match_hf_forward(gen):
    model = toy_llama(vocab_size=97, hidden=40, heads=4, kv_heads=1, eos_token_id=None)
    eng = Engine.load(model, block_size=3, max_batch_tokens=16, max_num_seqs=4,
                      record_logits=True)
    prompts = _prompts(3, 97, gen, 5, 30)
    ids = [eng.add_request(p, sampling=SamplingParams(max_tokens=6)) for p in prompts]
    seqs = [eng.get_sequence(i) for i in ids]
    while eng.has_unfinished():
        eng.step()
    for s in seqs:
        with torch.no_grad():
            ref = model(torch.tensor([s.tokens])).logits[0, s.prompt_len - 1:-1]
        got = torch.stack(s.logits)
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_continuous_batching_and_flat_memory(gen):
    model = toy_llama(vocab_size=101, hidden=32, eos_token_id=None)
    eng = Engine.load(model, block_size=4, kv_blocks=40, max_batch_tokens=32, max_num_seqs=5)
    kv_ptr, kv_numel = eng.kv.k.data_ptr(), eng.kv.k.numel()
    prompts = _prompts(40, 101, gen, 2, 12)
    lengths = torch.randint(1, 14, (40,), generator=gen).tolist()
    pending = list(zip(prompts, lengths))
    rids, results, used = {}, {}, []
    step = 0
    while pending or eng.has_unfinished():
        # new requests arrive while others are mid-generation
        for _ in range(2 if step % 3 == 0 else 0):
            if pending:
                p, n = pending.pop(0)
                rids[eng.add_request(p, sampling=SamplingParams(max_tokens=n))] = (p, n)
        for out in eng.step():
            results.setdefault(out.request_id, []).extend(out.new_token_ids)
        used.append(eng.block_manager.num_used)
        step += 1
    assert len(rids) == 40
    for rid, (p, n) in rids.items():
        assert results[rid] == _hf_greedy(model, p, n), rid
    assert max(used) <= 40 and eng.block_manager.num_used == 0
    assert eng.kv.k.data_ptr() == kv_ptr and eng.kv.k.numel() == kv_numel
    st = eng.stats()
    assert st["requests_finished_total"] == 40 and st["running"] == 0
    assert st["tokens_generated_total"] == sum(lengths)


def test_preemption_when_kv_runs_out(gen):
    model = toy_llama(vocab_size=101, hidden=32, eos_token_id=None)
    # 12 blocks of 4 tokens: 6 requests of up to 24 tokens cannot all fit at once
    eng = Engine.load(model, block_size=4, kv_blocks=12, max_batch_tokens=64, max_num_seqs=6)
    prompts = _prompts(6, 101, gen, 8, 12)
    res = eng.generate(prompts, max_tokens=12)
    assert eng.stats()["preemptions_total"] > 0
    for p, r in zip(prompts, res):
        assert r.token_ids == _hf_greedy(model, p, 12)
    assert eng.block_manager.num_free == 12


def test_sampling_seeded_and_batch_independent(gen):
    model = toy_llama(vocab_size=97, hidden=32, eos_token_id=None)
    eng = Engine.load(model)
    p = _prompts(1, 97, gen)[0]
    sp = dict(max_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=7)
    alone = eng.generate(p, **sp)[0].token_ids
    mixed = eng.generate([p] + _prompts(5, 97, gen), **sp)[0].token_ids
    assert alone == mixed
    other = eng.generate(p, **dict(sp, seed=8))[0].token_ids
    assert other != alone
    # top_k=1 is greedy
    assert eng.generate(p, max_tokens=8, temperature=1.5, top_k=1, seed=3)[0].token_ids == \
        eng.generate(p, max_tokens=8)[0].token_ids


def test_stop_tokens_strings_and_eos():
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), eos_token_id=2)
    eng = Engine.load(model, tokenizer=tok)
    prompt = "Once upon a time"
    full = eng.generate(prompt, max_tokens=20, ignore_eos=True)[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 20
    # stop token: the first generated token id
    t0 = full.token_ids[3]
    r = eng.generate(prompt, max_tokens=20, ignore_eos=True, stop_token_ids=[t0])[0]
    assert r.finish_reason == "stop" and r.token_ids == full.token_ids[:full.token_ids.index(t0) + 1]
    # stop string taken from the middle of the full text: text is cut before it
    text = full.text.replace("\ufffd", "")
    assert len(text) > 6
    stop = text[4:6]
    r = eng.generate(prompt, max_tokens=20, ignore_eos=True, stop=[stop])[0]
    assert r.finish_reason == "stop" and stop not in r.text and full.text.startswith(r.text)
    # streaming gives the same text and never leaks the stop string
    outs = list(eng.stream(prompt, max_tokens=20, ignore_eos=True, stop=[stop]))
    assert "".join(o.new_text for o in outs) == r.text and outs[-1].finished
    assert sum(len(o.new_token_ids) for o in outs) == len(r.token_ids)
    # EOS stops unless ignore_eos
    eos_model = toy_llama(vocab_size=len(tok), eos_token_id=full.token_ids[2])
    e2 = Engine.load(eos_model, tokenizer=tok)
    r = e2.generate(prompt, max_tokens=20)[0]
    first = min(i for i, t in enumerate(full.token_ids) if t in (2, full.token_ids[2]))
    assert r.finish_reason == "stop" and r.token_ids == full.token_ids[:first + 1]
    assert e2.generate(prompt, max_tokens=20, ignore_eos=True)[0].token_ids == full.token_ids


def test_abort_and_errors(gen):
    model = toy_llama(vocab_size=97, hidden=32, eos_token_id=None)
    eng = Engine.load(model, max_waiting=3, max_model_len=64)
    with pytest.raises(UnknownAdapterError, match="nope"):
        eng.add_request([5, 6], adapter="nope")
    with pytest.raises(UnknownAdapterError):
        eng.generate(["x"], adapter="nope")
    with pytest.raises(ValueError, match="top_p"):
        eng.add_request([5, 6], sampling=SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="max_tokens"):
        eng.generate([5, 6], max_tokens=0)
    with pytest.raises(TypeError, match="bogus"):
        eng.generate([5, 6], bogus=1)
    with pytest.raises(RequestTooLargeError):
        eng.add_request([5] * 60, sampling=SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="no tokenizer"):
        eng.add_request("text prompt")
    with pytest.raises(ValueError, match="token ids"):
        eng.add_request([5, 1000])
    with pytest.raises(TypeError, match="unknown engine option"):
        Engine.load(model, max_num_seq=3)
    a = eng.add_request([5, 6, 7], sampling=SamplingParams(max_tokens=30))
    b = eng.add_request([8, 9], sampling=SamplingParams(max_tokens=5))
    c = eng.add_request([8, 9, 10], sampling=SamplingParams(max_tokens=5))
    with pytest.raises(EngineOverloadedError):
        eng.add_request([1, 2])
    eng.step()
    eng.abort_request(a)
    outs = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                outs[o.request_id] = o.finish_reason
    assert outs == {a: "abort", b: "length", c: "length"}
    assert eng.block_manager.num_used == 0
    st = eng.stats()
    assert st["requests_aborted_total"] == 1
    for key in ("requests_total", "tokens_generated_total", "queue_depth", "running",
                "adapters_loaded", "adapter_evictions_total"):
        assert key in st
    assert st["requests_total"] == 3 and st["queue_depth"] == 0 and st["running"] == 0


def test_step_api_with_producer_thread(gen):
    """add_request from another thread while one loop thread steps (the server's pattern)."""
    import threading
    import time as _time
    model = toy_llama(vocab_size=97, hidden=32, eos_token_id=None)
    eng = Engine.load(model, max_num_seqs=4, max_batch_tokens=32)
    prompts = _prompts(20, 97, gen)
    ids, errors = [], []

    def producer():
        try:
            for p in prompts:
                ids.append(eng.add_request(p, sampling=SamplingParams(max_tokens=4)))
                _time.sleep(0.002)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=producer)
    th.start()
    toks, finished = {}, set()
    while th.is_alive() or eng.has_unfinished():
        for o in eng.step():
            toks.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                finished.add(o.request_id)
        _time.sleep(0.0005)
    th.join()
    assert not errors and finished == set(ids) and len(ids) == 20
    for rid, p in zip(ids, prompts):
        assert toks[rid] == _hf_greedy(model, p, 4)
    assert not eng._seqs and eng.stats()["queue_depth"] == 0   # nothing kept after finishing


def test_load_from_directory_with_tokenizer(tmp_path):
    from frod_rt.engine.toy import save_toy_model
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), eos_token_id=None)
    save_toy_model(model, tok, tmp_path / "m")
    eng = Engine.load(tmp_path / "m")
    assert eng.base_name == "m" and eng.tokenizer is not None
    r = eng.generate("once upon a time", max_tokens=6)[0]
    ids = tok("once upon a time")["input_ids"]
    want = _hf_greedy(model, ids, 6)
    assert r.token_ids == want and r.prompt_tokens == len(ids)
    assert r.text == tok.decode(want, skip_special_tokens=True)
    with pytest.raises(FileNotFoundError):
        Engine.load(tmp_path / "missing")
