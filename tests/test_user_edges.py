"""A new user's rough edges (issue 18): stream outputs shaped as vLLM's, one argument order
for writing adapters, and the demo's docstring telling the truth."""
from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from frod_rt import read_adapter, write_adapter
from frod_rt.engine import Engine
from frod_rt.engine.toy import random_adapter, toy_llama, toy_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def test_stream_outputs_deltas_and_vllm_cumulative_text(tmp_path):
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3,
                      eos_token_id=None)
    random_adapter(model, tmp_path / "ad", ["q_proj", "v_proj"], cache_dir=tmp_path)
    eng = Engine.load(model, tokenizer=tok, adapters=[tmp_path / "ad"], cache_dir=tmp_path)
    want = eng.generate("once upon a time", adapter="ad", max_tokens=8)[0]
    deltas, ids = "", []
    outs = list(eng.stream("once upon a time", adapter="ad", max_tokens=8))
    for out in outs:
        deltas += out.new_text
        ids += out.new_token_ids
        assert len(out.outputs) == 1 and out.outputs[0].index == 0
        assert out.outputs[0].text == deltas                  # cumulative, like vLLM
        assert out.outputs[0].token_ids == ids
    last = outs[-1]
    assert last.finished and last.finish_reason == last.outputs[0].finish_reason == "length"
    assert all(not o.finished and o.outputs[0].finish_reason is None for o in outs[:-1])
    assert last.outputs[0].text == want.text and last.outputs[0].token_ids == want.token_ids
    assert want.text
    eng.close()


def test_write_adapter_takes_the_adapter_first_old_order_still_works(tmp_path):
    model = toy_llama(vocab_size=50, hidden=32, intermediate=48, seed=1)
    f = random_adapter(model, tmp_path / "a", ["q_proj"], cache_dir=tmp_path)
    write_adapter(f, tmp_path / "new")                 # the order of export_peft, torch.save
    with pytest.warns(DeprecationWarning, match=r"write_adapter\(adapter, path\)"):
        write_adapter(tmp_path / "old", f)
    for d in ("new", "old"):
        assert (tmp_path / d / "frod_adapter.safetensors").read_bytes() == \
            (tmp_path / "a" / "frod_adapter.safetensors").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_adapter(read_adapter(tmp_path / "new"), tmp_path / "again")
    with pytest.raises(TypeError, match="AdapterFile"):
        write_adapter(tmp_path / "x", tmp_path / "y")


def test_demo_docstring_describes_the_tokenizer_it_builds():
    src = (ROOT / "examples" / "demo.py").read_text()
    doc = ast.get_docstring(ast.parse(src))
    tok = toy_tokenizer()                              # what the demo calls (default kind)
    assert "toy_tokenizer()" in src
    kind = type(tok.backend_tokenizer.model).__name__
    assert kind == "WordLevel"
    assert "word-level" in doc and "BPE" not in doc
