"""After the last layer's attention only the logit rows go on (one row per sequence in a
prefill): the last block's output projection and MLP run over those rows alone, and every
row's tokens still equal Hugging Face generate on its merged model (float64)."""
from __future__ import annotations

import copy

import pytest
import torch

from engine_helpers import hf_greedy
from frod_rt.engine import Engine
from frod_rt.engine.models import layers as layers_mod
from frod_rt.engine.toy import load_merged, merged_weights, random_adapter, toy_gpt2, toy_llama

CASES = {
    "llama": (lambda: toy_llama(vocab_size=47, hidden=24, intermediate=36, eos_token_id=None,
                                std=0.1, dtype=torch.float64),
              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "model.layers.1.mlp.down_proj", "model.layers.0.mlp.down_proj"),
    "gpt2": (lambda: toy_gpt2(vocab_size=47, hidden=24, eos_token_id=None, std=0.1,
                              dtype=torch.float64),
             ["c_attn", "c_proj", "c_fc"], "transformer.h.1.mlp.c_proj",
             "transformer.h.0.mlp.c_proj"),
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_last_block_runs_only_logit_rows(arch, tmp_path, monkeypatch):
    make, targets, last, first = CASES[arch]
    model = make()
    files = {f"a{i}": random_adapter(model, tmp_path / f"a{i}", targets, seed=i + 1,
                                     cache_dir=tmp_path) for i in range(2)}
    want_models = {None: model}
    for name, f in files.items():
        m = copy.deepcopy(model)
        load_merged(m, merged_weights(m, f, cache_dir=tmp_path))
        want_models[name] = m
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 47, (int(n),), generator=g).tolist() for n in (6, 3, 9, 5)]
    names = ["a0", None, "a1", "a0"]
    want = [hf_greedy(want_models[a], p, 4) for p, a in zip(prompts, names)]
    assert len({tuple(w) for w in want}) > 1

    rows: dict[str, list[int]] = {last: [], first: []}
    real_call = layers_mod.AdaptedLinear.__call__

    def spy(self, x, ab):
        if self.name in rows:
            rows[self.name].append(x.shape[0])
        return real_call(self, x, ab)
    monkeypatch.setattr(layers_mod.AdaptedLinear, "__call__", spy)
    eng = Engine.load(copy.deepcopy(model), adapters={n: tmp_path / n for n in files},
                      cache_dir=tmp_path)
    res = eng.generate(prompts, adapters=names, max_tokens=4, ignore_eos=True)
    eng.close()
    for r, w, a in zip(res, want, names):
        assert r.token_ids == w, a
    # the prefill step: the first block saw every prompt token, the last one row per prompt
    assert rows[first][0] == sum(map(len, prompts))
    assert rows[last][0] == len(prompts)
    assert rows[last][1:] == rows[first][1:]              # decode steps: one row per sequence
