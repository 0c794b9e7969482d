"""Does an adapter file fit a base model? Checked against the model's own layers, before
anything is decomposed, so an adapter of another model gets one clear error everywhere
(Python API, CLI, server), and task-model prefixes are mapped.

:func:`fit_adapter_to_model` accepts an adapter whose layer names are the model's; or, when
they differ by a leading prefix (``bert.`` of ``BertForSequenceClassification`` against a
``BertModel``, or the reverse), maps the names once the weights under the new names hash to
the adapter's recorded category fingerprints (so it is the same backbone, not a look-alike).
A mapped adapter gets the base's category keys and fingerprints, and layers that used the
default pattern of the old category carry that pattern explicitly (patterns are seeded by the
category fingerprint, which contains the names). Anything else raises
:func:`.adapter_io.other_model_error`: "adapter 'x' was trained for BertModel (bert, hidden
size 32, 2 layers), this base is LlamaForCausalLM (...): <first mismatch>".
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .adapter_io import AdapterFile, LayerDelta, other_model_error
from .categories import (decomposition_category_mode, is_supported, key_for_layer,
                         layer_out_in_category, linear_weight)
from .config import pattern_seed_string
from .fingerprint import NATIVE_BASIS, category_fingerprint, describe_model, model_fingerprint
from .patterns import sparse_pattern

__all__ = ["fit_adapter_to_model", "model_linear_weights"]


def model_linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adaptable layer of ``model`` (nn.Linear, Conv1D, or an already adapted layer) ->
    its (out, in) weight view."""
    out = {}
    for name, m in model.named_modules():
        if is_supported(m):
            out[name] = linear_weight(m)
        elif hasattr(m, "weight_oi") and hasattr(m, "base_layer_name"):
            out[name] = m.weight_oi()
    return out


def _mismatch(adapter: AdapterFile, model: nn.Module, weights: dict, rename) -> str | None:
    """The first layer of ``adapter`` (under ``rename``) that is missing from ``model``, not an
    adaptable layer, or of another shape, described; None when every layer fits."""
    modules = None
    for key, c in adapter.config.categories.items():
        for name in c["layers"]:
            w = weights.get(rename(name))
            if w is None:
                modules = modules if modules is not None else dict(model.named_modules())
                m = modules.get(rename(name))
                if m is not None:
                    return (f"layer {name!r} is a {type(m).__name__} in this base; FRoD adapts "
                            "nn.Linear and Conv1D layers only")
                return f"layer {name!r} ({c['out']}x{c['in']}) does not exist in this base"
            want = (layer_out_in_category(key, name, c["out"]), c["in"])
            if tuple(w.shape) != want:
                return (f"layer {name!r} has shape {w.shape[0]}x{w.shape[1]} in this base, the "
                        f"adapter's category {key!r} says {want[0]}x{want[1]}")
    return None


def _renames(first: str, weights: dict):
    """Candidate prefix maps (old name -> new name) that send ``first`` to a layer of the model."""
    for name in weights:
        if name.endswith("." + first):
            prefix = name[:-len(first)]
            yield f"added {prefix!r}", lambda n, p=prefix: p + n
        elif first.endswith("." + name):
            prefix = first[:-len(name)]
            yield f"removed {prefix!r}", \
                lambda n, p=prefix: n[len(p):] if n.startswith(p) else n


def _basis_of(adapter: AdapterFile, key: str, c: dict, weights: dict, rename) -> str | None:
    """The basis name under which the model's weights reproduce the adapter's fingerprint of
    category ``key`` (renamed layers, old names in the hash), or None."""
    layers = [(n, weights[rename(n)]) for n in c["layers"]]
    for basis in (NATIVE_BASIS, "peft"):
        if category_fingerprint(key, adapter.config.alpha, layers, basis) == c.get("fingerprint"):
            return basis
    return None


def _renamed(adapter: AdapterFile, weights: dict, rename, how: str) -> AdapterFile | None:
    cfg = adapter.config
    cats, layers = {}, {}
    for key, c in cfg.categories.items():
        basis = _basis_of(adapter, key, c, weights, rename)
        if basis is None:
            return None
        new_names = [rename(n) for n in c["layers"]]
        new_key = key_for_layer(key, new_names[0], c["out"], c["in"])
        new_fp = category_fingerprint(new_key, cfg.alpha,
                                      [(n, weights[n]) for n in new_names], basis)
        cats[new_key] = dict(c, layers=new_names, fingerprint=new_fp)
        default = None
        for old, new in zip(c["layers"], new_names):
            d = adapter.layers[old]
            rows, cols = d.rows, d.cols
            if rows is None:
                if default is None:
                    default = sparse_pattern(pattern_seed_string(c["fingerprint"], cfg.seed), key,
                                             c["in"], c["k"])
                rows, cols = (t.to(torch.int32).clone() for t in default)
            layers[new] = LayerDelta(d.dl, d.s, rows, cols)
    extra = dict(cfg.extra, mapped_layer_names=how)
    new_cfg = replace(cfg, decomposition_fingerprint="", categories=cats, extra=extra)
    return replace(adapter, config=new_cfg, layers=layers)     # heads (modules) kept as named


def fit_adapter_to_model(adapter: AdapterFile, model: nn.Module) -> AdapterFile:
    """``adapter`` itself when its layers are layers of ``model`` with the same shapes; a copy
    with names mapped when they differ by a task-model prefix and the weights are the same
    (see the module docstring); else AdapterError "trained for <model>, this base is <model>".
    """
    weights = model_linear_weights(model)
    detail = _mismatch(adapter, model, weights, lambda n: n)
    if detail is None:
        return adapter
    first = next(iter(adapter.config.categories.values()))["layers"][0]
    for how, rename in _renames(first, weights):
        if _mismatch(adapter, model, weights, rename) is None:
            mapped = _renamed(adapter, weights, rename, how)
            if mapped is not None:
                return mapped
    raise other_model_error(adapter, describe_model(model), model_fingerprint(model), detail)


def find_decomposition(adapter: AdapterFile, model: nn.Module, cache_dir=None
                       ) -> tuple[AdapterFile, "object"]:
    """``(adapter fitted to model, the decomposition it fits)``: the adapter after
    :func:`fit_adapter_to_model`, and the decomposition of its layers of ``model`` on the
    first basis of ``decompose.BASES`` (frod_rt's, then PEFT's) that passes ``check_against``.
    Raises the AdapterError of the frod_rt basis when none fits."""
    from .adapter_io import AdapterError, check_against
    from .decompose import BASES, decompose
    fitted = fit_adapter_to_model(adapter, model)
    names = sorted(fitted.layers)
    mode = decomposition_category_mode(fitted.config.categories)
    first = None
    for basis in BASES if mode == "per_role" else BASES[:1]:   # PEFT's basis is per role
        d = decompose(model, names, alpha=fitted.config.alpha, basis=basis, cache_dir=cache_dir,
                      progress=False, category_mode=mode)
        try:
            check_against(fitted, d)
            return fitted, d
        except AdapterError as e:
            first = first or e
    raise first
