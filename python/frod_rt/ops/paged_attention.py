"""Decode attention straight from the engine's paged KV cache.

``paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, scale)``: one query token
per sequence. Sequence ``b`` has ``L = ctx_lens[b]`` cached positions; position ``j`` sits in
block ``block_tables[b, j // bs]`` at offset ``j % bs`` of ``k_cache``/``v_cache``
``(NB, bs, Hkv, D)``. For each query head ``h`` (kv head ``h // (Hq // Hkv)``)::

    out[b, h] = softmax_j(scale * q[b, h] . K_b[j]) @ V_b        j < L

On CPU this is the ``frod_rt::paged_decode_attention`` custom op (C++ kernel, one pass over each
sequence's own blocks: no gathered copy of the context, no padding, so a row's result depends on
its own sequence only). It has a fake implementation (``torch.compile``) and an autograd formula
(recomputed through the reference). Other devices run the reference (gather + SDPA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core import _C, view


def paged_decode_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor,
                                     block_tables: Tensor, ctx_lens: Tensor,
                                     scale: float) -> Tensor:
    """The same result in plain torch, one sequence at a time (gathers each context), in the
    inputs' dtype: the test reference (pass float64) and the fallback off CPU."""
    B, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    out = q.new_empty(B, Hq, D)
    for b in range(B):
        L = int(ctx_lens[b])
        bt = block_tables[b]
        k = k_cache[bt].reshape(-1, Hkv, D)[:L].transpose(0, 1)        # (Hkv, L, D)
        v = v_cache[bt].reshape(-1, Hkv, D)[:L].transpose(0, 1)
        out[b] = F.scaled_dot_product_attention(q[b][:, None, :], k, v, scale=scale,
                                                enable_gqa=Hq != Hkv)[:, 0, :]
    return out


def _unit_last(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("frod_rt::paged_decode_attention", mutates_args=(),
                         device_types=("cpu",))
def _paged_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
              ctx_lens: Tensor, scale: float) -> Tensor:
    # copies are bound to names so they outlive the C++ call (a view() keeps only the pointer)
    qc, kc, vc = _unit_last(q), _unit_last(k_cache), _unit_last(v_cache)
    bt, cl = block_tables.contiguous(), ctx_lens.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _C.paged_decode_attention(view(qc), view(kc), view(vc), view(bt), view(cl), view(out),
                              float(scale), max(1, torch.get_num_threads()))
    return out


@_paged_op.register_fake
def _(q, k_cache, v_cache, block_tables, ctx_lens, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _setup(ctx, inputs, output):
    q, k_cache, v_cache, block_tables, ctx_lens, scale = inputs
    ctx.save_for_backward(q, k_cache, v_cache, block_tables, ctx_lens)
    ctx.scale = scale


def _backward(ctx, grad_out):
    q, k_cache, v_cache, block_tables, ctx_lens = ctx.saved_tensors
    need = ctx.needs_input_grad[:3]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(n) for t, n in zip((q, k_cache, v_cache), need)]
        out = paged_decode_attention_reference(*leaves, block_tables, ctx_lens, ctx.scale)
        wrt = [t for t, n in zip(leaves, need) if n]
        grads = iter(torch.autograd.grad(out, wrt, grad_out, allow_unused=True))
    return tuple(next(grads) if n else None for n in need) + (None, None, None)


_paged_op.register_autograd(_backward, setup_context=_setup)


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                           ctx_lens: Tensor, scale: float) -> Tensor:
    """Decode attention from a paged KV cache (see the module docstring).

    q (B, Hq, D); k_cache, v_cache (NB, bs, Hkv, D) of q's dtype (float32, float64,
    bfloat16, float16); block_tables (B, MB) int64 (entries past a sequence's blocks are not
    read); ctx_lens (B,) int64 in [1, MB * bs]. Returns (B, Hq, D). Bad shapes, dtypes, block
    ids or lengths raise ValueError/TypeError naming the argument.
    """
    if q.device.type == "cpu":
        return torch.ops.frod_rt.paged_decode_attention(q, k_cache, v_cache, block_tables,
                                                        ctx_lens, float(scale))
    return paged_decode_attention_reference(q, k_cache, v_cache, block_tables, ctx_lens, scale)
