"""frod_rt::paged_decode_attention (C++ CPU kernel) against a float64 reference, and its use by
the engine's decode steps."""
from __future__ import annotations

import pytest
import torch

from frod_rt.ops import paged_decode_attention, paged_decode_attention_reference

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _problem(B=5, Hq=6, Hkv=2, D=24, bs=4, NB=37, lens=(1, 3, 4, 17, 9), seed=0):
    """A paged cache with blocks handed out in random order; block table entries past a
    sequence's blocks hold garbage ids (never read)."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(NB, bs, Hkv, D, generator=g, dtype=torch.float64)
    vc = torch.randn(NB, bs, Hkv, D, generator=g, dtype=torch.float64)
    q = torch.randn(B, Hq, D, generator=g, dtype=torch.float64)
    MB = max(-(-L // bs) for L in lens) + 1
    perm = torch.randperm(NB, generator=g)
    bt = torch.full((B, MB), 10**9, dtype=torch.long)
    used = 0
    for b, L in enumerate(lens):
        n = -(-L // bs)
        bt[b, :n] = perm[used:used + n]
        used += n
    assert used <= NB
    return q, kc, vc, bt, torch.tensor(lens, dtype=torch.long)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [dict(Hq=6, Hkv=2, D=24), dict(Hq=3, Hkv=3, D=5),
                                   dict(Hq=8, Hkv=1, D=80, bs=16, lens=(33, 1, 64, 16, 2)),
                                   dict(Hq=12, Hkv=4, D=64, bs=16, lens=(48,) * 9, NB=40)])
def test_matches_float64_reference(dtype, shape):
    lens = shape.pop("lens", (1, 3, 4, 17, 9))
    q, kc, vc, bt, cl = _problem(B=len(lens), lens=lens, **shape)
    ref = paged_decode_attention_reference(q, kc, vc, bt.clamp(max=kc.shape[0] - 1), cl, 0.37)
    got = paged_decode_attention(q.to(dtype), kc.to(dtype), vc.to(dtype), bt, cl, 0.37)
    assert got.dtype == dtype and got.shape == q.shape
    assert (got.double() - ref).abs().max().item() < TOL[dtype]


def test_strided_and_offset_views_give_the_same_result():
    q, kc, vc, bt, cl = (t.float() if t.is_floating_point() else t for t in _problem())
    want = paged_decode_attention(q, kc, vc, bt, cl, 0.5)
    wide = torch.zeros(q.shape[0], q.shape[1], q.shape[2] * 2, dtype=q.dtype)
    wide[..., ::2] = q                                     # last dim stride 2
    kbig = torch.zeros(kc.shape[0], kc.shape[1], kc.shape[2] + 3, kc.shape[3])
    kbig[:, :, 1:1 + kc.shape[2]] = kc                     # a slice of a larger cache
    vt = vc.transpose(0, 1).contiguous().transpose(0, 1)   # permuted block/offset strides
    btt = bt.t().contiguous().t()                          # column-major block table
    got = paged_decode_attention(wide[..., ::2], kbig[:, :, 1:1 + kc.shape[2]], vt, btt,
                                 cl.expand(cl.shape[0]), 0.5)
    assert torch.equal(got, want)


def test_a_row_does_not_depend_on_its_batch():
    q, kc, vc, bt, cl = (t.float() if t.is_floating_point() else t for t in _problem())
    together = paged_decode_attention(q, kc, vc, bt, cl, 0.5)
    for b in range(q.shape[0]):
        n = -(-int(cl[b]) // kc.shape[1])                   # only its own blocks
        alone = paged_decode_attention(q[b:b + 1], kc, vc, bt[b:b + 1, :n], cl[b:b + 1], 0.5)
        assert torch.equal(alone[0], together[b])


@pytest.mark.parametrize("case,exc,word", [
    ("block id out of range", ValueError, "block_tables"),
    ("negative block id", ValueError, "block_tables"),
    ("context longer than its blocks", ValueError, "ctx_lens"),
    ("empty context", ValueError, "ctx_lens"),
    ("heads not a multiple", ValueError, "q"),
    ("cache dtype differs", TypeError, "k_cache"),
    ("int32 block table", TypeError, "block_tables"),
    ("head size differs", ValueError, "k_cache"),
])
def test_bad_arguments_name_the_argument(case, exc, word):
    q, kc, vc, bt, cl = (t.float() if t.is_floating_point() else t for t in _problem())
    if case == "block id out of range":
        bt[2, 0] = kc.shape[0]
    elif case == "negative block id":
        bt[3, 1] = -1
    elif case == "context longer than its blocks":
        cl[1] = bt.shape[1] * kc.shape[1] + 1
    elif case == "empty context":
        cl[0] = 0
    elif case == "heads not a multiple":
        q = torch.randn(q.shape[0], 5, q.shape[2])
    elif case == "cache dtype differs":
        kc = kc.double()
    elif case == "int32 block table":
        bt = bt.int()
    elif case == "head size differs":
        kc = kc[..., :-1]
    with pytest.raises(exc, match=word):
        paged_decode_attention(q, kc, vc, bt, cl, 0.5)


def test_opcheck_and_gradients():
    q, kc, vc, bt, cl = _problem(B=3, Hq=4, Hkv=2, D=6, bs=2, NB=12, lens=(1, 4, 3))
    bt = bt.clamp(max=kc.shape[0] - 1)
    torch.library.opcheck(torch.ops.frod_rt.paged_decode_attention,
                          (q.float(), kc.float(), vc.float(), bt, cl, 0.5))
    args = [t.clone().requires_grad_() for t in (q, kc, vc)]
    got = torch.autograd.grad(paged_decode_attention(*args, bt, cl, 0.5).square().sum(), args)
    want = torch.autograd.grad(
        paged_decode_attention_reference(*args, bt, cl, 0.5).square().sum(), args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("paged", [True, False])
def test_engine_decode_steps_use_the_kernel(monkeypatch, paged):
    """Decode rows of a CPU engine go through the paged kernel, and greedy text still equals
    the model's own generate; with ``PAGED_DECODE_ON_CPU = False`` the padded gather + SDPA
    path of other devices (GPUs) runs instead, with the same tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine_helpers import hf_greedy
    from frod_rt.engine import Engine, SamplingParams
    from frod_rt.engine.models import layers

    monkeypatch.setattr(layers, "PAGED_DECODE_ON_CPU", paged)
    calls = []
    real = layers.paged_decode_attention
    monkeypatch.setattr(layers, "paged_decode_attention",
                        lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    cfg = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, vocab_size=97,
                      max_position_embeddings=128, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).double().eval()
    eng = Engine.load(hf, device="cpu", max_num_seqs=4, kv_cache_tokens=512)
    prompts = [[5, 7, 9], [11, 3, 2, 8, 1, 4, 6, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20], [4]]
    outs = eng.generate(prompts, sampling=SamplingParams(max_tokens=6, temperature=0.0,
                                                         ignore_eos=True))
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(hf, p, 6)
    if paged:
        assert calls and max(calls) == len(prompts)
    else:
        assert calls == []
