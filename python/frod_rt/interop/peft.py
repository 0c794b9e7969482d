"""Interop with upstream PEFT's FRoD tuner (``peft.FrodConfig``, peft >= 0.21).

PEFT keeps, per adapted layer, ``frod_lambda_l`` (the *full* scaling ``l0 + dl``, trained)
and ``frod_lambda_s_values`` (values of S on the category pattern), and per PEFT category
(``_category_from_key``: last two name parts, e.g. ``self_query``) the buffers ``frod_V``
(basis, computed by PEFT in float32 then cast to the base dtype) and ``frod_s_indices``
((2, k) int64, rows then cols). PEFT's adapted weight is ``U (diag(lambda) + S) V^T`` with
``U, l0`` split off ``W`` in its own basis — the same orientation as frod_rt, so

    dl = lambda_l - l0_peft,   s = frod_lambda_s_values,   pattern = frod_s_indices.

``import_peft`` reads a directory written by PEFT's ``save_pretrained`` (or a live
``PeftModel``) and returns a frod_rt adapter plus the decomposition it belongs to:

* ``basis="frod_rt"``: mapped onto frod_rt's own decomposition of the base (so it is served
  in one batch with natively trained adapters). Exact when PEFT's ``V`` equals ours up to a
  signed permutation of columns; the error is measured and must stay under ``tol``.
* ``basis="file"``: imported in PEFT's own basis (the file's ``V``; when the file was saved
  with ``save_projection=False``, the ``V`` and pattern PEFT regenerates from the base and
  ``projection_prng_key``). Exact; the decomposition returned is a separate basis.
* ``basis="auto"`` (default): ``frod_rt`` when it is within ``tol``, else ``file``.

``export_peft`` writes a PEFT adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` loads. PEFT always
recomputes ``V`` and ``U`` from the base when it loads an adapter, so the export is expressed
in *that* basis (computed here by PEFT's own algorithm): exact for adapters imported with
``basis="file"``, a signed-permutation mapping with a measured error otherwise.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..method.adapter_io import AdapterError, AdapterFile, check_against
from ..method.basis import Decomposition
from ..method.categories import decomposition_category_mode, is_conv1d, linear_weight
from ..method.decompose import decompose
from ..method.joint import peft_joint_basis
from ..method.patterns import delta_pattern
from .peft_dir import read_peft_frod_dir, split_lambda_tensors
from ._foreign import (ForeignLayer, check_foreign_bases, foreign_split, resolve_basis,
                       save_import, signed_permutation)

__all__ = ["PeftImport", "import_peft", "export_peft", "peft_category", "peft_projections"]

_PREFIX = "base_model.model."
_L, _S = "frod_lambda_l", "frod_lambda_s_values"
_PROJ = ("base_model.frod_V.", "base_model.frod_s_indices.", "base_model.frod_s_size.")


@dataclass
class PeftImport:
    """Result of :func:`import_peft`: the adapter, the decomposition it is expressed in
    (frod_rt's own, or the PEFT-basis one), which basis was used, the largest measured
    relative error of any layer's update, and state-dict keys that are neither FRoD values
    nor ``modules_to_save`` heads (those go to ``adapter.modules``), which frod_rt does not
    carry."""
    adapter: AdapterFile
    decomposition: Decomposition
    basis: str
    max_rel_error: float
    ignored_keys: list[str]

    def save(self, path) -> None:
        """Write the adapter to ``path``, with its decomposition (``path/decomposition``) when
        it is kept in a foreign basis, so ``Engine.load`` / ``frod-rt serve`` serve it."""
        save_import(self.adapter, self.decomposition, self.basis, path)


# ----------------------------------------------------------------- PEFT's own conventions
def peft_category(key: str) -> str:
    """PEFT's category of a module name (``peft.tuners.frod.model._category_from_key``):
    the last two parts joined by ``_`` (``attention.self.query`` -> ``self_query``), the last
    part after a numeric index, and ``attention_output`` for BERT's ``attention.output.dense``."""
    parts = key.split(".")
    if len(parts) == 1:
        return parts[0]
    if parts[-2].isdigit():
        return parts[-1]
    cat = f"{parts[-2]}_{parts[-1]}"
    if cat == "output_dense" and len(parts) >= 3 and parts[-3] == "attention":
        return "attention_output"
    return cat


def _peft_layer_index(key: str, fallback: int) -> int:
    parts = key.split(".")
    if "layers" in parts:
        try:
            return int(parts[parts.index("layers") + 1])
        except (ValueError, IndexError):
            pass
    for p in parts:
        if p.isdigit():
            return int(p)
    return fallback


def _peft_basis(mats: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """PEFT's shared basis of one category, computed as PEFT computes it (float32)."""
    return peft_joint_basis(mats, alpha)


def peft_projections(base_model: nn.Module, layer_names: list[str], *, alpha: float = 1e-3,
                     sparse_rate: float | None = None, seed: int = 0
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """``{peft category: (V, indices)}`` exactly as PEFT's ``FrodModel`` builds them for the
    layers ``layer_names`` of ``base_model``: V in float32 (then the base dtype), indices
    (2, k) int64 drawn from ``torch.Generator().manual_seed(seed)`` over the sorted categories
    (None when ``sparse_rate`` is None). Uses an n x n index grid per category, like PEFT."""
    wanted = set(layer_names)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    fallback = 0
    for key, module in base_model.named_modules():
        if key not in wanted:
            continue
        w = linear_weight(module)
        idx = _peft_layer_index(key, fallback)
        fallback += 1
        weights.setdefault(idx, {})[peft_category(key)] = w
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = {}
    for cat in sorted({c for d in weights.values() for c in d}):
        mats = [d[cat].detach().to(torch.float32).cpu() for _, d in sorted(weights.items())
                if cat in d]
        example = next(d[cat] for d in weights.values() if cat in d)
        V = _peft_basis(mats, alpha).to(dtype=example.dtype, device="cpu")
        indices = None
        if sparse_rate is not None:
            n = V.shape[0]
            r, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            allidx = torch.stack([r.flatten(), c.flatten()], dim=1)
            off = allidx[allidx[:, 0] != allidx[:, 1]]
            nnz = min(int(n * n * sparse_rate), off.shape[0])
            if sparse_rate > 0 and off.shape[0] > 0:
                nnz = max(1, nnz)
            if nnz:
                perm = torch.randperm(off.shape[0], generator=gen)[:nnz]
                indices = off[perm].t().contiguous()
            else:
                indices = torch.empty(2, 0, dtype=torch.long)
        out[cat] = (V, indices)
    return out


def _peft_l0(weight: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """PEFT's initial ``lambda_l`` for a layer: float64 split, stored as float32 then cast to
    the base dtype (so an untrained PEFT adapter imports with ``dl == 0`` exactly)."""
    _, l0 = foreign_split(weight, V.to(weight.dtype))
    return l0.float().to(weight.dtype)


# ----------------------------------------------------------------- reading PEFT adapters
def _from_state_dict(cfg: dict, sd: dict, base_model: nn.Module, where: str
                     ) -> tuple[list[ForeignLayer], list[str], bool]:
    if any(k.endswith(".FROD_lambda_l") for k in sd):
        raise AdapterError(f"{where}: this is a checkpoint of the official FRoD research code "
                           "(keys FROD_lambda_*); use frod_rt.interop.official.import_official")
    lam, sv, rest = split_lambda_tensors(sd, _PREFIX, _L, _S, where)
    V_file, idx_file, ignored = {}, {}, []
    for k in rest:
        if k.startswith(_PROJ[0]):
            V_file[k[len(_PROJ[0]):]] = sd[k]
        elif k.startswith(_PROJ[1]):
            idx_file[k[len(_PROJ[1]):]] = sd[k]
        elif not k.startswith(_PROJ[2]):
            ignored.append(k)
    modules = dict(base_model.named_modules())
    names = [n for n, _ in base_model.named_modules() if n in lam]   # model order
    missing = sorted(set(lam) - set(names))
    if missing:
        raise AdapterError(f"{where}: layers not found in the base model: {missing[:5]}")
    from_file = bool(V_file)
    alpha = float(cfg.get("regularization_alpha", 1e-3))
    if not from_file or not idx_file:
        regen = peft_projections(base_model, names, alpha=alpha,
                                 sparse_rate=float(cfg.get("sparse_rate", 0.01)),
                                 seed=int(cfg.get("projection_prng_key", 0)))
    layers = []
    for name in names:
        cat = peft_category(name)
        W = linear_weight(modules[name]).detach()
        V = V_file.get(cat) if from_file else regen[cat][0]
        idx = idx_file.get(cat) if idx_file else regen[cat][1]
        if V is None or idx is None:
            raise AdapterError(f"{where}: frod_V / frod_s_indices of category {cat!r} "
                               f"(layer {name!r}) missing from the file")
        n = W.shape[1]
        if tuple(V.shape) != (n, n) or idx.dim() != 2 or idx.shape[0] != 2:
            raise AdapterError(f"{where}: layer {name!r}: V {tuple(V.shape)} / indices "
                               f"{tuple(idx.shape)} do not fit in_features={n}")
        lam_t, s_t = lam[name], sv[name]
        if tuple(lam_t.shape) != (n,) or tuple(s_t.shape) != (idx.shape[1],):
            raise AdapterError(f"{where}: layer {name!r}: lambda_l {tuple(lam_t.shape)} / "
                               f"s {tuple(s_t.shape)} do not fit in={n}, k={idx.shape[1]}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n or bool((idx[0] == idx[1]).any())):
            raise AdapterError(f"{where}: category {cat!r}: pattern indices out of range or "
                               "on the diagonal")
        V = V.to(W.dtype)
        dl = lam_t.to(torch.float64) - _peft_l0(W, V).to(torch.float64)
        layers.append(ForeignLayer(name, W, V, cat, dl, idx[0].to(torch.int64),
                                   idx[1].to(torch.int64), s_t.detach().to(torch.float64)))
    return layers, ignored, from_file


def _from_peft_model(model, adapter_name: str) -> tuple[dict, list[ForeignLayer], nn.Module]:
    try:
        cfg = model.peft_config[adapter_name]
    except (AttributeError, KeyError) as e:
        raise KeyError(f"PeftModel has no adapter {adapter_name!r}") from e
    if str(getattr(cfg, "peft_type", "")).upper().split(".")[-1] != "FROD":
        raise AdapterError(f"adapter {adapter_name!r} is {cfg.peft_type}, not FROD")
    layers = []
    for full, mod in model.named_modules():
        if not hasattr(mod, _L) or adapter_name not in getattr(mod, _L, {}):
            continue
        if getattr(mod, "merged", False):
            raise AdapterError(f"{full}: the adapter is merged into the base weight; unmerge "
                               "before importing")
        name = full[len(_PREFIX):] if full.startswith(_PREFIX) else full
        base = mod.get_base_layer()
        W = linear_weight(base).detach()
        V = mod.frod_V[adapter_name].to(W.dtype)
        idx = mod.frod_s_indices[adapter_name]
        dl = mod.frod_lambda_l[adapter_name].detach().to(torch.float64) - \
            _peft_l0(W, V).to(torch.float64)
        layers.append(ForeignLayer(name, W, V, peft_category(name), dl,
                                   idx[0].to(torch.int64), idx[1].to(torch.int64),
                                   mod.frod_lambda_s_values[adapter_name].detach().to(torch.float64)))
    if not layers:
        raise AdapterError(f"PeftModel holds no FRoD layers for adapter {adapter_name!r}")
    return {"sparse_rate": cfg.sparse_rate, "regularization_alpha": cfg.regularization_alpha,
            "projection_prng_key": cfg.projection_prng_key}, layers, model.get_base_model()


def import_peft(source, base_model: nn.Module | None = None,
                decomposition: Decomposition | None = None, *, basis: str = "auto",
                name: str | None = None, adapter_name: str = "default", tol: float = 1e-3,
                dtype: torch.dtype | None = None, cache_dir=None,
                base_tol: float | None = 1e-2) -> PeftImport:
    """Import an upstream PEFT FRoD adapter.

    Args:
        source: a directory written by ``PeftModel.save_pretrained`` (adapter_config.json with
            ``peft_type: FROD`` + adapter_model.safetensors/.bin), or a live ``PeftModel``.
        base_model: the plain base model the adapter was trained on (required for a
            directory; for a ``PeftModel`` its own, unmerged, base is used).
        decomposition: frod_rt's decomposition of the base, used for ``basis="frod_rt"`` and
            ``"auto"``; None -> ``decompose(base_model, <adapted layer names>)``.
        basis: "auto" | "frod_rt" | "file" (see the module docstring).
        name: name of the frod_rt adapter (default: directory name, or ``adapter_name``).
        adapter_name: which adapter of a ``PeftModel``.
        tol: largest accepted relative error of a layer's update for ``basis="frod_rt"``.
        dtype: dtype of the adapter values (default: the base weights' dtype).
        base_tol: largest accepted residual of the check that the adapter's basis belongs to
            ``base_model`` (``check_foreign_bases``); None skips the check.

    Returns:
        :class:`PeftImport`.

    Raises:
        FileNotFoundError, AdapterError (wrong type, missing tensors, shapes, basis mismatch
        beyond ``tol`` for ``basis="frod_rt"``), KeyError (unknown adapter_name), ValueError.
    """
    if basis not in ("auto", "frod_rt", "file"):
        raise ValueError(f"basis must be 'auto', 'frod_rt' or 'file', got {basis!r}")
    if isinstance(source, (str, Path)):
        if base_model is None:
            raise ValueError("import_peft: base_model is required to import from a directory")
        path = Path(source)
        cfg, sd = read_peft_frod_dir(path, 'PEFT')
        layers, ignored, from_file = _from_state_dict(cfg, sd, base_model, str(path))
        heads, ignored = _saved_heads(ignored, sd, base_model, str(path))
        name = name or path.name
    elif hasattr(source, "peft_config"):
        heads = _live_heads(source, adapter_name)
        cfg, layers, base_model = _from_peft_model(source, adapter_name)
        ignored, from_file, name = [], True, name or adapter_name
    else:
        raise TypeError(f"import_peft: source must be a directory or a PeftModel, got "
                        f"{type(source).__name__}")
    if ignored:
        warnings.warn(f"import_peft: {len(ignored)} non-FRoD tensors are not carried over by "
                      f"frod_rt (e.g. {ignored[:3]})")
    alpha = float(cfg.get("regularization_alpha", 1e-3))
    dtype = dtype or layers[0].weight.dtype
    extra = {"imported_from": "peft", "peft_sparse_rate": float(cfg.get("sparse_rate", 0.01)),
             "peft_projection_prng_key": int(cfg.get("projection_prng_key", 0)),
             "peft_basis_from": "file" if from_file else "regenerated"}
    rate = float(cfg.get("sparse_rate", 0.01))
    residuals = check_foreign_bases(layers, base_tol) if base_tol is not None else {}
    extra["basis_residual"] = max(residuals.values(), default=0.0)
    adapter, dec, used, worst = resolve_basis(
        layers, base_model, basis=basis, decomposition=decomposition, alpha=alpha,
        cache_dir=cache_dir, name=name, sparse_rate=rate, extra=extra, tol=tol, dtype=dtype,
        tag="peft")
    adapter.modules = heads
    return PeftImport(adapter, dec, used, worst, ignored)


def _saved_heads(keys: list[str], sd: dict, base_model: nn.Module, where: str
                 ) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """PEFT stores a ``modules_to_save`` module as ``base_model.model.<module>.<key>`` (the
    wrapper's ``modules_to_save.<adapter>.`` dropped). Group such keys by the base module
    they belong to; a module whose state-dict keys and shapes the file reproduces exactly
    becomes an adapter head. Returns (heads, keys left over)."""
    modules = dict(base_model.named_modules())
    groups: dict[str, dict[str, torch.Tensor]] = {}
    left = []
    for k in keys:
        rel = k[len(_PREFIX):] if k.startswith(_PREFIX) else None
        owner = None
        if rel is not None:
            parts = rel.split(".")
            for i in range(len(parts) - 1, 0, -1):      # the deepest module owning the key
                cand = ".".join(parts[:i])
                if cand in modules and ".".join(parts[i:]) in modules[cand].state_dict():
                    owner = cand
                    break
        if owner is None:
            left.append(k)
        else:
            groups.setdefault(owner, {})[rel[len(owner) + 1:]] = sd[k]
    heads = {}
    for mname, got in groups.items():     # a module's tensors count as a head only when whole
        own = modules[mname].state_dict()
        top = [o for o in groups if mname.startswith(o + ".")]
        if top:
            continue
        if set(got) == set(own) and all(tuple(got[k].shape) == tuple(own[k].shape)
                                        for k in own):
            heads[mname] = {k: t.detach().to(own[k].dtype).clone() for k, t in got.items()}
        else:
            left.extend(f"{_PREFIX}{mname}.{k}" for k in got)
    return heads, left


def _live_heads(model, adapter_name: str) -> dict[str, dict[str, torch.Tensor]]:
    """``modules_to_save`` copies of a live PeftModel (ModulesToSaveWrapper)."""
    heads = {}
    for full, mod in model.named_modules():
        copies = getattr(mod, "modules_to_save", None)
        if isinstance(copies, nn.ModuleDict) and adapter_name in copies \
                and hasattr(mod, "original_module"):
            name = full[len(_PREFIX):] if full.startswith(_PREFIX) else full
            heads[name] = {k: t.detach().clone()
                           for k, t in copies[adapter_name].state_dict().items()}
    return heads


# ----------------------------------------------------------------- writing PEFT adapters
def _peft_k(n: int, rate: float) -> int:
    """PEFT's pattern size for an n x n S at ``sparse_rate`` (FrodModel._init_frod_projections)."""
    nnz = min(int(n * n * rate), n * (n - 1))
    if rate > 0 and n * (n - 1) > 0:
        nnz = max(1, nnz)
    return nnz


def _common_rate(ks: dict[int, int]) -> float:
    """A sparse_rate r with ``_peft_k(n, r) == k`` for every (n, k): PEFT floors n*n*rate, while
    frod_rt rounds, so the rate written to adapter_config.json is adjusted to reproduce k."""
    lo = max(k / (n * n) for n, k in ks.items())
    hi = min((k + 1) / (n * n) for n, k in ks.items())
    for r in (lo, (lo + hi) / 2, lo * (1 + 1e-12), lo * (1 + 1e-9)):
        if 0 <= r <= 1 and all(_peft_k(n, r) == k for n, k in ks.items()):
            return r
    raise AdapterError(f"no single PEFT sparse_rate reproduces the pattern sizes {ks} "
                       "(PEFT derives k = floor(n*n*sparse_rate) for every category)")


def _decomposition_of(adapter: AdapterFile, base_model: nn.Module, cache_dir):
    """(adapter fitted to ``base_model``, the decomposition it was trained on): frod_rt's basis
    or PEFT's, whichever its category fingerprints match (``adapter_fit.find_decomposition``)."""
    from ..method.adapter_fit import find_decomposition
    return find_decomposition(adapter, base_model, cache_dir)


def export_peft(adapter: AdapterFile, base_model: nn.Module, path,
                decomposition: Decomposition | None = None, *, tol: float = 1e-3,
                cache_dir=None) -> float:
    """Write ``adapter`` as a PEFT FRoD adapter directory that ``PeftModel.from_pretrained``
    loads onto ``base_model``.

    The values are expressed in the basis PEFT will compute for ``base_model`` (float32, its
    own algorithm): ``lambda_l = l0_peft + dl``, ``S`` and its pattern permuted/sign-flipped
    to PEFT's columns. ``decomposition`` is the one the adapter belongs to (default: the
    decomposition of the adapter's layers on frod_rt's basis or PEFT's, whichever it was
    trained on); ``check_against`` is applied. Adapters trained on
    ``decompose(..., basis="peft")`` export exactly (error 0).

    Returns:
        the largest measured relative error of a layer's update (0 when the bases agree).

    Raises:
        AdapterError: adapter/decomposition mismatch, PEFT's basis not a signed permutation
            of the adapter's, error above ``tol``, per-layer patterns PEFT cannot share, or
            pattern sizes no single PEFT ``sparse_rate`` reproduces.
    """
    from safetensors.torch import save_file

    if decomposition_category_mode(adapter.config.categories) != "per_role":
        raise AdapterError(f"adapter {adapter.name!r} uses shared-input categories (q,k,v "
                           "share one basis); PEFT FRoD has one category per role: train it "
                           "with FrodConfig(category_mode='per_role') to export it")
    if decomposition is None:   # the basis it fits: frod_rt's, or PEFT's (exact export)
        adapter, decomposition = _decomposition_of(adapter, base_model, cache_dir)
    check_against(adapter, decomposition)
    modules = dict(base_model.named_modules())
    names = [n for n, _ in base_model.named_modules() if n in adapter.layers]
    conv = {is_conv1d(modules[n]) for n in names}
    if len(conv) > 1:
        raise AdapterError("PEFT's fan_in_fan_out is one flag per adapter: cannot export a mix "
                           "of nn.Linear and Conv1D layers")
    proj = peft_projections(base_model, names, alpha=decomposition.alpha)
    tensors, cat_pattern, ks, worst = {}, {}, {}, 0.0
    perms = {}
    for name in names:
        d = adapter.layers[name]
        b = decomposition.layers[name]
        cat = decomposition.categories[b.category]
        pcat = peft_category(name)
        V_p = proj[pcat][0]
        W = linear_weight(modules[name]).detach()
        if pcat not in perms:
            sp = signed_permutation(V_p, cat.V)   # cat.V ~= V_p Pi: our column pi(j) <- PEFT's
            if sp is None:
                raise AdapterError(f"PEFT's basis of {pcat!r} is not a signed permutation of "
                                   f"the adapter's basis of {cat.key!r}: cannot export exactly")
            perms[pcat] = sp
        pi, sign, _ = perms[pcat]
        # ours column j == sign_j * PEFT column pi(j): move values to PEFT's columns
        dl_p = torch.zeros(cat.in_features, dtype=torch.float64)
        dl_p[pi] = d.dl.to(torch.float64)
        pattern = delta_pattern(d, decomposition, cat.key, adapter.config.seed)
        rows, cols = pattern.rows.to(torch.int64), pattern.cols.to(torch.int64)
        s_p = d.s.to(torch.float64) * sign[rows] * sign[cols]
        r_p, c_p = pi[rows], pi[cols]
        order = torch.argsort(r_p * cat.in_features + c_p)
        r_p, c_p, s_p = r_p[order], c_p[order], s_p[order]
        idx = torch.stack([r_p, c_p])
        if pcat in cat_pattern:
            if not torch.equal(cat_pattern[pcat], idx):
                raise AdapterError(f"layers of PEFT category {pcat!r} use different sparse "
                                   "patterns; PEFT shares one pattern per category")
        else:
            cat_pattern[pcat] = idx
            if ks.get(cat.in_features, idx.shape[1]) != idx.shape[1]:
                raise AdapterError(f"categories with in_features={cat.in_features} carry "
                                   "different k; PEFT derives one k per width")
            ks[cat.in_features] = idx.shape[1]
        lam = _peft_l0(W, V_p).to(torch.float64) + dl_p
        tensors[f"{_PREFIX}{name}.{_L}"] = lam.to(W.dtype).contiguous()
        tensors[f"{_PREFIX}{name}.{_S}"] = s_p.to(W.dtype).contiguous()
        from ._foreign import delta_probe_error
        U_p, _ = foreign_split(W, V_p)
        err = delta_probe_error(
            (U_p, V_p, (lam.to(W.dtype).to(torch.float64) - _peft_l0(W, V_p).to(torch.float64)),
             r_p, c_p, s_p.to(W.dtype).to(torch.float64)),
            (b.U, cat.V, d.dl, rows, cols, d.s), cat.in_features)
        worst = max(worst, err)
        if not err <= tol:
            raise AdapterError(f"layer {name!r}: in PEFT's basis the update differs by "
                               f"{err:.2e} (relative, tolerance {tol:.1e}); PEFT's float32 basis "
                               "of this category deviates from the adapter's")
    for pcat, idx in cat_pattern.items():
        V_p = proj[pcat][0]
        n = V_p.shape[0]
        tensors[f"{_PROJ[0]}{pcat}"] = V_p.contiguous()
        tensors[f"{_PROJ[1]}{pcat}"] = idx.contiguous()
        tensors[f"{_PROJ[2]}{pcat}"] = torch.tensor([n, n], dtype=torch.long)
    for mname, sd in adapter.modules.items():       # modules_to_save heads, PEFT's key form
        for k, t in sd.items():
            tensors[f"{_PREFIX}{mname}.{k}"] = t.detach().contiguous()
    rate = _common_rate(ks)
    from peft import FrodConfig  # export targets PEFT, so PEFT writes its own config
    pcfg = FrodConfig(target_modules=names, sparse_rate=rate,
                      regularization_alpha=decomposition.alpha, projection_prng_key=0,
                      save_projection=True, fan_in_fan_out=conv.pop(), progressbar=False,
                      modules_to_save=sorted(adapter.modules) or None)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pcfg.save_pretrained(str(path))
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    return worst
