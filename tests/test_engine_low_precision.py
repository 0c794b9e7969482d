"""The engine serving in bfloat16 / float16 on CPU (fused GEMMs, the rotation and the paged
decode kernel in the serving dtype): each decode step's logits, for the base and for adapters
of both category modes in one mixed batch, against a float64 model with the adapter merged,
run on the same tokens."""
from __future__ import annotations

import copy

import pytest
import torch

from engine_helpers import random_prompts
from frod_rt.engine import Engine, SamplingParams
from frod_rt.engine.toy import load_merged, merged_weights, random_adapter, toy_llama
from frod_rt.method.categories import decomposition_category_mode
from frod_rt.method.decompose import decompose

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# largest |logit error| / max |logit| per step, per serving dtype (float64 reference)
TOL = {torch.bfloat16: 4e-2, torch.float16: 6e-3}     # measured: <= 1.9e-2, <= 1.9e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_serving_matches_float64(dtype, tmp_path):
    base = toy_llama(vocab_size=97, hidden=48, intermediate=64, std=0.1, seed=7,
                     eos_token_id=None).to(dtype)
    files = {"p": random_adapter(base, tmp_path / "p", TARGETS, seed=1, scale=0.1,
                                 cache_dir=tmp_path),
             "s": random_adapter(base, tmp_path / "s", TARGETS, seed=2, scale=0.1,
                                 cache_dir=tmp_path, category_mode="shared_input")}
    eng = Engine.load(copy.deepcopy(base), adapters={n: tmp_path / n for n in files},
                      cache_dir=tmp_path, record_logits=True, block_size=4)
    assert eng.dtype == dtype
    prompts = random_prompts(6, 97, torch.Generator().manual_seed(3), lo=3, hi=14)
    names = [None, "p", "s", "p", None, "s"]
    sp = SamplingParams(max_tokens=5, ignore_eos=True, temperature=0.0)
    ids = [eng.add_request(p, adapter=n, sampling=sp) for p, n in zip(prompts, names)]
    seqs = [eng.get_sequence(i) for i in ids]
    while eng.has_unfinished():
        eng.step()
    refs = {None: copy.deepcopy(base).double()}
    for n, f in files.items():
        # W' from the decomposition of the base as served (its fingerprints seed the
        # patterns), computed in float64, then put into a float64 copy of the base
        d = decompose(base, sorted(f.layers), cache_dir=tmp_path, progress=False,
                      category_mode=decomposition_category_mode(f.config.categories))
        m = copy.deepcopy(base).double()
        load_merged(m, merged_weights(m, f, decomposition=d))
        refs[n] = m
    for p, n, seq in zip(prompts, names, seqs):
        toks = list(seq.tokens)                  # prompt + the 5 generated tokens
        with torch.no_grad():
            want = refs[n](torch.tensor([toks[:-1]])).logits[0, len(p) - 1:].double()
        got = torch.stack(seq.logits).double()
        assert got.shape == want.shape, (got.shape, want.shape)
        err = ((got - want).abs().amax(-1) / want.abs().amax(-1)).max().item()
        assert err < TOL[dtype], (n, err)
    eng.close()


def test_merged_weights_refuses_a_base_in_another_dtype(tmp_path):
    """toy.merged_weights on a float64 copy of a bfloat16 base would seed other patterns from
    the copy's fingerprints: refused with an AdapterError instead of wrong weights."""
    from frod_rt.method.adapter_io import AdapterError
    base = toy_llama(vocab_size=97, hidden=48, intermediate=64, std=0.1, seed=7).to(torch.bfloat16)
    f = random_adapter(base, tmp_path / "p", ["q_proj"], seed=1, cache_dir=tmp_path)
    with pytest.raises(AdapterError):
        merged_weights(copy.deepcopy(base).double(), f, cache_dir=tmp_path)
    assert merged_weights(base, f, cache_dir=tmp_path)          # the served base: fine
