"""CUDA rotation support shared by the ops: the fallback when the kernels cannot run, and the
device error word.

* A build without CUDA kernels given CUDA tensors runs the float64-free pure-torch reference
  (:mod:`frod_rt.ops.reference`) instead, with one ``RuntimeWarning`` per process.
* The CUDA kernels never read index values on the host; a bad segment or slot entry is skipped
  (never used to address memory) and sets a bit in a per-device error word (bits in
  ``cuda_common.ERROR_BITS``). :func:`check_cuda_errors` raises ``ValueError`` for the bits
  set since the last check and clears them (it synchronises). With the environment variable
  ``FROD_RT_CUDA_CHECKS=1`` every CUDA rotation checks right away, like the CPU path (debug:
  one synchronisation per call).
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from .._core import cuda_kernels_built

_warned = False
_words: dict[torch.device, Tensor] = {}

#: Error bits of the CUDA rotation and grouped GEMM (cpp/include/frod/rotate_cuda.h).
ERROR_BITS = {
    1: "seg_indptr: an entry is outside [0, T], decreasing, or does not run from 0 to T",
    2: "seg_adapter / seg_slot: an id is outside [-1, A)",
    4: "slot_plan: a slot's plan is outside the table or its k exceeds s's columns",
}


def cuda_rotation_unavailable(z: Tensor) -> bool:
    """True (after one warning per process) when ``z`` is a CUDA tensor but this build has no
    CUDA kernels: the caller then runs the reference implementation."""
    global _warned
    if z.device.type != "cuda" or cuda_kernels_built():
        return False
    if not _warned:
        _warned = True
        warnings.warn("frod_rt was built without CUDA kernels: the rotation on CUDA tensors runs "
                      "the (slow) pure-torch reference path", RuntimeWarning, stacklevel=3)
    return True


def _debug_checks() -> bool:
    return os.environ.get("FROD_RT_CUDA_CHECKS", "0") not in ("", "0")


def error_word(z: Tensor) -> Tensor | None:
    """The persistent (1,) int32 error word of z's GPU (None on CPU). Zeroed first in debug mode."""
    if z.device.type != "cuda":
        return None
    dev = z.device if z.device.index is not None else torch.device("cuda", torch.cuda.current_device())
    w = _words.get(dev)
    if w is None:
        w = _words[dev] = torch.zeros(1, dtype=torch.int32, device=dev)
    if _debug_checks():
        w.zero_()
    return w


def raise_for_error_bits(bits: int, op: str) -> None:
    """ValueError listing the problems flagged by a CUDA kernel's error word."""
    if bits:
        msgs = [m for b, m in ERROR_BITS.items() if bits & b]
        raise ValueError(f"{op}: invalid indices: " + "; ".join(msgs))


def raise_if_flagged(word: Tensor | None, op: str) -> None:
    """In debug mode (FROD_RT_CUDA_CHECKS=1), reads the error word and raises for its bits."""
    if word is not None and _debug_checks():
        bits = int(word.item())
        word.zero_()
        raise_for_error_bits(bits, op)


def check_cuda_errors(device=None) -> None:
    """Raises ValueError for the error bits the CUDA rotations of ``device`` (default: the
    current one) set since the last check, and clears them. Synchronises."""
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    w = _words.get(dev)
    if w is None:
        return
    bits = int(w.item())
    w.zero_()
    raise_for_error_bits(bits, "rotate (CUDA)")
