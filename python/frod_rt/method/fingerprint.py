"""Fingerprints: what identifies a base model, a decomposition of it, and one category.

Three names, three identities:

* **base fingerprint** (:func:`model_fingerprint`): the base model's weights alone — sha256
  over the name, shape, dtype and raw bytes of every tensor of its ``state_dict``, in order.
  Independent of the target list, alpha and basis: the same for every decomposition of the
  model. Adapter files record it so ``frod-rt inspect`` and refusal messages can say "another
  base model" and mean it.
* **decomposition fingerprint** (:func:`decomposition_fingerprint`): the weights that were
  decomposed (through their category fingerprints, so it depends on the targets), alpha, the
  algorithm version and the basis (frod_rt's own float64 basis, PEFT's, a file's). Adapters
  trained on one decomposition fit another only category by category.
* **category fingerprint** (:func:`category_fingerprint`): one category's key, alpha, version
  and per layer the name, shape, dtype and bytes of its (out, in) weight. It also seeds the
  category's default sparse pattern, so it never changes for an existing category.

:func:`describe_model` gives the human-readable identity (architecture, model type, hidden
size, layers) quoted by "trained for another model" errors.
"""
from __future__ import annotations

import hashlib
import weakref

import torch

from .joint import ALGORITHM_VERSION

NATIVE_BASIS = "frod_rt"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


def category_fingerprint(key: str, alpha: float, layers: list[tuple[str, torch.Tensor]],
                         basis: str = NATIVE_BASIS) -> str:
    """sha256 hex of a category: key, alpha, algorithm version, the basis name (only when not
    frod_rt's own), then (name, shape, dtype, bytes) of each (out, in) weight in order."""
    h = hashlib.sha256()
    h.update(f"frod_rt.category v{ALGORITHM_VERSION} alpha={float(alpha)!r} key={key}\n".encode())
    if basis != NATIVE_BASIS:
        h.update(f"basis={basis}\n".encode())
    for name, w in layers:
        h.update(f"{name} {tuple(w.shape)} {w.dtype}\n".encode())
        h.update(_tensor_bytes(w))
    return h.hexdigest()


def decomposition_fingerprint(alpha: float, category_fps: dict[str, str],
                              basis: str = NATIVE_BASIS) -> str:
    """sha256 hex of a decomposition: the sorted (category key, category fingerprint) pairs,
    alpha, the algorithm version and the basis name (omitted for frod_rt's own basis, so
    fingerprints of native decompositions are those earlier versions wrote)."""
    h = hashlib.sha256()
    h.update(f"frod_rt.base v{ALGORITHM_VERSION} alpha={float(alpha)!r}\n".encode())
    if basis != NATIVE_BASIS:
        h.update(f"basis={basis}\n".encode())
    for key in sorted(category_fps):
        h.update(f"{key}={category_fps[key]}\n".encode())
    return h.hexdigest()


_MODEL_FPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _hashed_tensors(model: torch.nn.Module):
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor) and not any(p.startswith("frod_") for p in name.split(".")):
            yield name, t


def model_fingerprint(model: torch.nn.Module) -> str:
    """The **base fingerprint**: sha256 hex over (name, shape, dtype, raw bytes) of every tensor
    of ``model.state_dict()``, in order, leaving out FRoD adapter values (``frod_*`` entries of
    a model already wrapped by :class:`FrodModel`). Hashes every weight once (~1 GB/s); the
    result is remembered per model until a tensor is replaced or changed in place (its data
    pointer or version counter moves), so repeated decompositions of one base hash it once."""
    tensors = list(_hashed_tensors(model))
    sig = tuple((n, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for n, t in tensors)
    hit = _MODEL_FPS.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    h = hashlib.sha256(b"frod_rt.base-weights v1\n")
    for name, t in tensors:
        h.update(f"{name} {tuple(t.shape)} {t.dtype}\n".encode())
        h.update(_tensor_bytes(t))
    fp = h.hexdigest()
    _MODEL_FPS[model] = (sig, fp)
    return fp


def describe_model(model: torch.nn.Module) -> dict:
    """``{"architecture", "model_type", "hidden_size", "num_layers", "dtype"}`` of a
    (transformers) model: its class name, the dtype of its first floating-point parameter and,
    where its config has them, the rest (None otherwise)."""
    cfg = getattr(model, "config", None)

    def get(*names):
        for n in names:
            v = getattr(cfg, n, None)
            if isinstance(v, (int, str)) and not isinstance(v, bool):
                return v
        return None
    dtype = next((str(p.dtype).replace("torch.", "") for p in model.parameters()
                  if p.is_floating_point()), None)
    return {"architecture": type(model).__name__, "model_type": get("model_type"),
            "hidden_size": get("hidden_size", "n_embd", "d_model"),
            "num_layers": get("num_hidden_layers", "n_layer", "num_layers"), "dtype": dtype}


def model_summary(info: dict | None) -> str:
    """``"BertModel (bert, hidden size 384, 6 layers, float32)"`` from :func:`describe_model`'s
    dict."""
    if not info or not info.get("architecture"):
        return "an unrecorded model"
    parts = [p for p in (info.get("model_type"),
                         f"hidden size {info['hidden_size']}" if info.get("hidden_size") else None,
                         f"{info['num_layers']} layers" if info.get("num_layers") else None,
                         info.get("dtype")) if p]
    return info["architecture"] + (f" ({', '.join(parts)})" if parts else "")


# Earlier name of decomposition_fingerprint (it never identified the base alone).
base_fingerprint = decomposition_fingerprint
