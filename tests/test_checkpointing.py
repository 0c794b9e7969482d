"""Gradient checkpointing (Hugging Face, reentrant and not) with per-row ``adapter_names``:
the adapters' gradients equal those of the same step without checkpointing."""
from __future__ import annotations

import pytest
import torch

from frod_rt import FrodConfig, get_frod_model

from frod_models import LLAMA_TARGETS, tiny_llama


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def _grads(fm, ids, names):
    fm.zero_grad(set_to_none=True)
    out = fm(input_ids=ids, labels=ids, adapter_names=names)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("names", [["a", "b", "__base__", "a"], ["b"] * 4])
def test_checkpointing_gives_same_gradients(reentrant, names):
    cfg = lambda seed: FrodConfig(LLAMA_TARGETS, sparse_rate=0.1, init_std=0.1, seed=seed,
                                  progress=False)
    fm = get_frod_model(tiny_llama(dtype=torch.float64), cfg(0), adapter_name="a")
    fm.add_adapter("b", cfg(1))
    fm.add_adapter("c", cfg(0))             # never routed: must get no gradient either way
    fm.set_adapter("c")                     # the active adapter differs from the routed ones
    fm.train()
    ids = torch.randint(1, 60, (4, 9), generator=torch.Generator().manual_seed(0))
    ref = _grads(fm, ids, names)
    fm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert fm.model.model.layers[0].gradient_checkpointing
    got = _grads(fm, ids, names)
    assert set(got) == set(ref) and ref
    assert not any(".c" in n.rsplit("frod_", 1)[-1][2:] for n in got)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-12, msg=n)
