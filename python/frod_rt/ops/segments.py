"""Building segments (``seg_indptr``, ``seg_adapter``) from per-row adapter ids."""
from __future__ import annotations

import torch

from .._core import _C, view


def segments_from_ids(adapter_ids: torch.Tensor, num_adapters: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of equal consecutive ids as segments.

    Args:
        adapter_ids: (T,) integer tensor, one adapter index per row, -1 for no adapter.
        num_adapters: A; ids must lie in [-1, A).

    Returns:
        (seg_indptr (G+1,) int32, seg_adapter (G,) int32) on ``adapter_ids``' device, where
        G is the number of maximal runs. Rows need not be sorted: an adapter may own several
        segments, and the kernels sum its gradients over all of them.
    """
    if not isinstance(adapter_ids, torch.Tensor) or adapter_ids.dim() != 1:
        raise ValueError("adapter_ids: expected a 1-D integer tensor (T,)")
    if adapter_ids.dtype.is_floating_point or adapter_ids.dtype == torch.bool:
        raise TypeError(f"adapter_ids: expected an integer dtype, got {adapter_ids.dtype}")
    device = adapter_ids.device
    ids = adapter_ids.to(device="cpu")
    if ids.dtype == torch.int64 and ids.numel():
        bad = ((ids < -(2 ** 31)) | (ids > 2 ** 31 - 1)).nonzero()
        if bad.numel():
            t = int(bad[0, 0])
            raise ValueError(f"adapter_ids[{t}] = {int(ids[t])} does not fit int32 (adapter ids "
                             f"must lie in [-1, {int(num_adapters)}))")
    ids = ids.to(dtype=torch.int32).contiguous()
    T = ids.shape[0]
    indptr = torch.empty(T + 1, dtype=torch.int32)
    adapter = torch.empty(T, dtype=torch.int32)
    G = _C.segments_from_ids(view(ids), int(num_adapters), view(indptr), view(adapter))
    return indptr[: G + 1].to(device), adapter[:G].to(device)
