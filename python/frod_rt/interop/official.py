"""Import checkpoints of the official FRoD research code (github.com/Bane-Elvin/AAAI2026-FRoD,
a fork of PEFT with ``FRODConfig`` / ``FRODModel``), reproducing its **forward output**.

What that code stores:
  * ``save_pretrained`` directory: ``adapter_config.json`` (``peft_type: "FROD"``,
    ``sparse_rate``, ``target_modules``, ``model_dir``) and ``adapter_model.safetensors``
    (or ``.bin``) with ``base_model.model.<layer>.FROD_lambda_l`` (in,) and
    ``base_model.model.<layer>.FROD_lambda_S_values`` (k,). Its experiments save with
    ``save_projection=False``, so the file holds no basis and no pattern.
  * the projection cache in ``config.model_dir``: ``FROD_v.pth`` and ``FROD_s_indices.pth``
    (``torch.save`` of ``{category: BufferDict({adapter_name: tensor})}``; category =
    last two name parts, ``attention.output`` for BERT's attention output). The pattern comes
    from an *unseeded* ``torch.randperm``, so it cannot be regenerated: the cache is required.
    ``V`` is stored in float16 for float32 models (and used as the layer dtype).

What its forward computes, per layer (``FRODLayer.forward``, dropout off):

    y = base(x) + ((x V) S + (x V) * lambda) U^T          (torch.sparse.mm(S.t(), z.t()).t())
      = x (W + U (diag(lambda) + S^T) V^T)^T + b

with ``U, l0`` split off ``W`` in that ``V`` (``FROD_lambda_l`` starts at ``l0``). So the
update is added on top of an *unzeroed* base (at initialisation the layer computes ``2 W``)
and ``S`` enters *transposed*; its ``merge`` (``W += U (S + diag(lambda)) V^T``) does not
transpose S and therefore disagrees with its own forward. frod_rt reproduces the **forward**:

    dl = lambda (the full value),   pattern (rows, cols) = (cols_official, rows_official).

The basis handling (``basis="auto"|"frod_rt"|"file"``) is the same as for PEFT imports, see
:mod:`frod_rt.interop.peft`; with the float16-rounded official ``V`` the ``file`` basis is
usually the one that stays within tolerance.
"""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..method.adapter_io import AdapterError, AdapterFile
from ..method.basis import Decomposition
from ..method.categories import linear_weight
from .peft_dir import read_peft_frod_dir, split_lambda_tensors
from ._foreign import ForeignLayer, check_foreign_bases, resolve_basis, save_import

__all__ = ["OfficialImport", "import_official", "official_category", "load_projection_cache"]

_PREFIX = "base_model.model."
_L, _S = "FROD_lambda_l", "FROD_lambda_S_values"


@dataclass
class OfficialImport:
    """Result of :func:`import_official` (fields as :class:`frod_rt.interop.peft.PeftImport`)."""
    adapter: AdapterFile
    decomposition: Decomposition
    basis: str
    max_rel_error: float
    ignored_keys: list[str]

    def save(self, path) -> None:
        """Write the adapter to ``path``, with its decomposition (``path/decomposition``) when
        it is kept in a foreign basis, so ``Engine.load`` / ``frod-rt serve`` serve it."""
        save_import(self.adapter, self.decomposition, self.basis, path)


def official_category(key: str) -> str:
    """The official code's category of a module name: ``parts[-2] + "." + parts[-1]``, with
    ``attention.output`` for ``...attention.output.dense``."""
    parts = key.split(".")
    if len(parts) < 2:
        return key
    cat = parts[-2] + "." + parts[-1]
    if cat == "output.dense" and len(parts) >= 3 and parts[-3] == "attention":
        cat = "attention.output"
    return cat


def _unwrap(obj, adapter_name: str, what: str) -> dict[str, torch.Tensor]:
    """{category: tensor} from a loaded cache ({category: BufferDict | dict | tensor})."""
    if not isinstance(obj, dict):
        raise AdapterError(f"{what}: expected a dict of categories, got {type(obj).__name__}")
    out = {}
    for cat, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[cat] = v
            continue
        if isinstance(v, nn.Module):
            v = dict(v.named_buffers())
        if not isinstance(v, dict) or adapter_name not in v:
            raise AdapterError(f"{what}: category {cat!r} holds no entry for adapter "
                               f"{adapter_name!r}")
        out[cat] = v[adapter_name]
    return out


def load_projection_cache(model_dir, adapter_name: str = "default", *,
                          trust_pickle: bool = False) -> tuple[dict, dict]:
    """Read ``FROD_v.pth`` and ``FROD_s_indices.pth`` of the official code.

    These are pickles of PEFT ``BufferDict`` modules, which ``torch.load(weights_only=True)``
    refuses; pass ``trust_pickle=True`` (only for files you trust) to unpickle them.

    Returns:
        ``({category: V}, {category: indices (2, k)})``.
    """
    model_dir = Path(model_dir)
    files = [model_dir / "FROD_v.pth", model_dir / "FROD_s_indices.pth"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"official FRoD projection cache file missing: {f}")
    loaded = []
    for f in files:
        try:
            obj = torch.load(str(f), map_location="cpu", weights_only=not trust_pickle)
        except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
            if not trust_pickle:
                raise AdapterError(f"{f}: cannot be read with weights_only=True ({e}); it pickles "
                                   "PEFT BufferDict modules, pass trust_pickle=True if you trust "
                                   "the file") from e
            raise AdapterError(f"{f}: unreadable ({e})") from e
        loaded.append(_unwrap(obj, adapter_name, str(f)))
    return loaded[0], loaded[1]


def import_official(adapter_dir, base_model: nn.Module, projection_dir=None, *,
                    V: dict | None = None, indices: dict | None = None,
                    adapter_name: str = "default", trust_pickle: bool = False,
                    decomposition: Decomposition | None = None, basis: str = "auto",
                    name: str | None = None, tol: float = 1e-3, dtype=None,
                    cache_dir=None, base_tol: float | None = 5e-2) -> OfficialImport:
    """Import an official-code FRoD checkpoint so that frod_rt reproduces its forward output.

    Args:
        adapter_dir: the ``save_pretrained`` directory (adapter_config.json + weights).
        base_model: the plain base model it was trained on.
        projection_dir: directory of ``FROD_v.pth`` / ``FROD_s_indices.pth`` (default: the
            config's ``model_dir`` resolved against ``adapter_dir``); or pass ``V`` and
            ``indices`` as ``{category: tensor}`` dicts directly.
        adapter_name: key inside the cache's BufferDicts.
        trust_pickle: allow unpickling the cache (see :func:`load_projection_cache`).
        decomposition, basis, name, tol, dtype, cache_dir: as in
            :func:`frod_rt.interop.peft.import_peft`.
        base_tol: as in ``import_peft`` (looser default: the official ``V`` is float16).

    Raises:
        FileNotFoundError, AdapterError, ValueError.
    """
    if basis not in ("auto", "frod_rt", "file"):
        raise ValueError(f"basis must be 'auto', 'frod_rt' or 'file', got {basis!r}")
    path = Path(adapter_dir)
    cfg, sd = read_peft_frod_dir(path, 'official FRoD')
    if any(k.endswith(".frod_lambda_l") for k in sd):
        raise AdapterError(f"{path}: this is an upstream PEFT FRoD adapter (keys frod_lambda_*); "
                           "use frod_rt.interop.peft.import_peft")
    if V is None or indices is None:
        pdir = Path(projection_dir) if projection_dir is not None else \
            (path / cfg.get("model_dir", "."))
        V_c, idx_c = load_projection_cache(pdir, adapter_name, trust_pickle=trust_pickle)
        V = V if V is not None else V_c
        indices = indices if indices is not None else idx_c
    lam, sv, ignored = split_lambda_tensors(sd, _PREFIX, _L, _S, str(path))
    modules = dict(base_model.named_modules())
    names = [n for n, _ in base_model.named_modules() if n in lam]
    missing = sorted(set(lam) - set(names))
    if missing:
        raise AdapterError(f"{path}: layers not found in the base model: {missing[:5]}")
    layers = []
    for lname in names:
        cat = official_category(lname)
        W = linear_weight(modules[lname]).detach()
        n = W.shape[1]
        if cat not in V or cat not in indices:
            raise AdapterError(f"{path}: the projection cache has no category {cat!r} "
                               f"(layer {lname!r}); it has {sorted(V)}")
        Vc, idx = V[cat], indices[cat]
        if tuple(Vc.shape) != (n, n) or idx.dim() != 2 or idx.shape[0] != 2:
            raise AdapterError(f"layer {lname!r}: V {tuple(Vc.shape)} / indices "
                               f"{tuple(idx.shape)} do not fit in_features={n}")
        if tuple(lam[lname].shape) != (n,) or tuple(sv[lname].shape) != (idx.shape[1],):
            raise AdapterError(f"layer {lname!r}: lambda_l {tuple(lam[lname].shape)} / s "
                               f"{tuple(sv[lname].shape)} do not fit in={n}, k={idx.shape[1]}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n
                            or bool((idx[0] == idx[1]).any())):
            raise AdapterError(f"category {cat!r}: pattern indices out of range or diagonal")
        # forward: W + U (diag(lambda) + S^T) V^T  ->  dl = lambda, pattern transposed
        layers.append(ForeignLayer(lname, W, Vc.to(W.dtype), cat,
                                   lam[lname].detach().to(torch.float64),
                                   idx[1].to(torch.int64), idx[0].to(torch.int64),
                                   sv[lname].detach().to(torch.float64)))
    if ignored:
        warnings.warn(f"import_official: {len(ignored)} non-FRoD tensors are not carried over "
                      f"(e.g. {ignored[:3]})")
    alpha = float(cfg.get("regularization_alpha", 1e-3))
    rate = float(cfg.get("sparse_rate", 0.01))
    dtype = dtype or layers[0].weight.dtype
    name = name or path.name
    extra = {"imported_from": "official", "semantics": "official forward: W + U(diag(lambda)"
             " + S^T)V^T (pattern transposed, dl = full lambda)", "official_sparse_rate": rate}
    residuals = check_foreign_bases(layers, base_tol) if base_tol is not None else {}
    extra["basis_residual"] = max(residuals.values(), default=0.0)
    adapter, dec, used, worst = resolve_basis(
        layers, base_model, basis=basis, decomposition=decomposition, alpha=alpha,
        cache_dir=cache_dir, name=name, sparse_rate=rate, extra=extra, tol=tol, dtype=dtype,
        tag="official")
    return OfficialImport(adapter, dec, used, worst, ignored)
