"""Base fingerprints: hashes of the weights a decomposition was computed from.

``category_fingerprint`` hashes one category (its key, alpha, the algorithm version and, per
layer in model order, the name, shape, dtype and raw bytes of the (out, in) weight).
``base_fingerprint`` hashes the sorted (key, category fingerprint) pairs. Adapters record
both, so an adapter trained on some categories of a base still loads onto a decomposition
of the same base with more targets (see adapter_io.check_against).
"""
from __future__ import annotations

import hashlib

import torch

from .joint import ALGORITHM_VERSION


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


def category_fingerprint(key: str, alpha: float, layers: list[tuple[str, torch.Tensor]]) -> str:
    """sha256 hex of a category: key, alpha, algorithm version, then (name, shape, dtype, bytes)
    of each (out, in) weight in order."""
    h = hashlib.sha256()
    h.update(f"frod_rt.category v{ALGORITHM_VERSION} alpha={float(alpha)!r} key={key}\n".encode())
    for name, w in layers:
        h.update(f"{name} {tuple(w.shape)} {w.dtype}\n".encode())
        h.update(_tensor_bytes(w))
    return h.hexdigest()


def base_fingerprint(alpha: float, category_fps: dict[str, str]) -> str:
    """sha256 hex over the sorted (category key, category fingerprint) pairs, alpha and version."""
    h = hashlib.sha256()
    h.update(f"frod_rt.base v{ALGORITHM_VERSION} alpha={float(alpha)!r}\n".encode())
    for key in sorted(category_fps):
        h.update(f"{key}={category_fps[key]}\n".encode())
    return h.hexdigest()
