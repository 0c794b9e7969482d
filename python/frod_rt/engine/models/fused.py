"""Fused base projections: one GEMM for linear layers that read the same input (Llama q,k,v and
gate,up; BERT query,key,value), as vLLM's QKVParallelLinear / MergedColumnParallelLinear.

The fused weight is built once and each HF module's ``weight`` (and ``bias``) Parameter is
replaced by a *view* of it, so the model holds one copy of the weights, not two: the HF
module, our :class:`AdaptedLinear` (which takes its weight from the module afterwards) and the
fused GEMM all read the same memory. Values, dtypes and devices are unchanged, so base
fingerprints and HF's own forward are unaffected.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedLinear:
    """``y = x [W_1; ...; W_m]^T + [b_1; ...; b_m]`` split back into the m outputs.

    ``weight`` (sum out_i, in) and ``bias`` (sum out_i,) or None; ``splits`` the out_i.
    Built by :func:`fuse_linears`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, splits: list[int]):
        self.weight, self.bias, self.splits = weight, bias, splits

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (T, in) -> m tensors (T, out_i) (views of one (T, sum out_i) result)."""
        return F.linear(x, self.weight, self.bias).split(self.splits, dim=-1)


def fuse_linears(modules: list[nn.Linear]) -> FusedLinear:
    """Concatenate the weights of ``modules`` (``nn.Linear`` with one in_features, dtype and
    device) into one tensor and make every module's weight/bias a view of it.

    A module without a bias contributes zeros to the fused bias (the fused bias is None when
    no module has one); its own ``bias`` stays None. Raises TypeError/ValueError for modules
    that cannot be fused (not nn.Linear, different input sizes, dtypes or devices).
    """
    if not modules or not all(isinstance(m, nn.Linear) for m in modules):
        raise TypeError("fuse_linears: expected a non-empty list of nn.Linear modules")
    w0 = modules[0].weight
    if any(m.weight.shape[1] != w0.shape[1] or m.weight.dtype != w0.dtype
           or m.weight.device != w0.device for m in modules):
        raise ValueError("fuse_linears: the modules differ in input size, dtype or device: "
                         f"{[(tuple(m.weight.shape), m.weight.dtype) for m in modules]}")
    splits = [int(m.weight.shape[0]) for m in modules]
    with torch.no_grad():
        W = torch.cat([m.weight.detach() for m in modules], 0).contiguous()
        has_bias = any(m.bias is not None for m in modules)
        b = None
        if has_bias:
            b = torch.cat([m.bias.detach() if m.bias is not None
                           else W.new_zeros(o) for m, o in zip(modules, splits)]).contiguous()
    off = 0
    for m, o in zip(modules, splits):
        rg = m.weight.requires_grad
        m.weight = nn.Parameter(W[off:off + o], requires_grad=rg)
        if m.bias is not None:
            m.bias = nn.Parameter(b[off:off + o], requires_grad=m.bias.requires_grad)
        off += o
    return FusedLinear(W, b, splits)


def shares_storage(fused: FusedLinear, modules: list[nn.Linear]) -> bool:
    """True while every module's weight is still a view of ``fused.weight`` (a later
    ``model.to(...)`` or weight reassignment breaks the link; the forwards then stop fusing)."""
    base = fused.weight.untyped_storage().data_ptr()
    return all(m.weight.untyped_storage().data_ptr() == base for m in modules)
