"""Blending adapters: one adapter whose values are a weighted sum of others' values.

Adapters of one base that share a layer's sparse pattern differ only in their values, and the
update ``dW = U (diag(dl) + S) V^T`` is linear in ``(dl, s)``. So for weights ``w_a``

    dl = sum_a w_a dl_a,    s = sum_a w_a s_a        (per layer, on the shared pattern)

is again an adapter, exactly: its update is ``sum_a w_a dW_a``. A layer that an adapter does
not target contributes zeros for it. The sums are taken in float64 and stored in the
components' dtype (their promotion when they differ).

Refused with :class:`BlendError` (naming the adapters, layer or category):
* components for different bases / decomposition settings (alpha, base fingerprint of a
  shared category);
* a layer whose components use different patterns: an adapter with its own (imported)
  pattern blends only with adapters holding the same pattern on that layer; default-pattern
  adapters blend only when they share the pattern seed and, per category, the pattern size;
* components carrying trained heads (``modules_to_save``): a head is a full copy of a module,
  not an update on a shared basis, so there is no exact blend of it.
"""
from __future__ import annotations

import math

import torch

from .adapter_io import AdapterConfig, AdapterError, AdapterFile, LayerDelta

__all__ = ["BlendError", "blend_adapters", "normalize_weights"]


class BlendError(AdapterError):
    """The adapters cannot be blended (different patterns or bases)."""


def normalize_weights(weights) -> tuple[tuple[str, float], ...]:
    """``{name: weight}`` -> a canonical, hashable ``((name, weight), ...)`` sorted by name.

    Raises ValueError for an empty mapping, a non-string name, or a weight that is not a
    finite real number (bools are refused too)."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError("adapter_weights: expected a non-empty mapping {adapter name: weight}")
    out = []
    for name, w in weights.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter_weights: adapter names must be non-empty strings, "
                             f"got {name!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"adapter_weights[{name!r}]: expected a finite number, got {w!r}")
        out.append((name, float(w)))
    return tuple(sorted(out))


def _pattern_of(f: AdapterFile, layer: str):
    """('own', rows, cols) or ('std', seed, k) for one layer of ``f``."""
    d = f.layers[layer]
    if d.rows is not None:
        return ("own", d.rows.to(torch.int32), d.cols.to(torch.int32))
    return ("std", f.config.seed, int(d.s.shape[0]))


def _same(p, q) -> bool:
    if p[0] != q[0]:
        return False
    if p[0] == "std":
        return p[1:] == q[1:]
    return torch.equal(p[1], q[1]) and torch.equal(p[2], q[2])


def _describe(p) -> str:
    return "its own (imported) pattern" if p[0] == "own" else \
        f"the default pattern (seed {p[1]}, k={p[2]})"


def blend_adapters(parts, name: str = "blend") -> AdapterFile:
    """The adapter ``sum_a w_a * a`` of ``parts`` = [(AdapterFile, weight), ...].

    Returns an :class:`AdapterFile` named ``name`` targeting the union of the components'
    layers (``write_adapter`` writes it like any adapter). Raises :class:`BlendError` as the
    module docstring says, ValueError for no components or a non-finite weight.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("blend: no adapters given")
    for f, w in parts:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"blend: weight of {f.name!r} must be a finite number, got {w!r}")
    with_heads = [f.name for f, _ in parts if f.modules]
    if with_heads:
        raise BlendError(f"cannot blend {', '.join(map(repr, with_heads))}: they carry trained "
                         "heads (modules_to_save), which are full module copies, not updates "
                         "that blend")
    first = parts[0][0].config
    for f, _ in parts[1:]:
        if not math.isclose(f.config.alpha, first.alpha, rel_tol=1e-12):
            raise BlendError(f"cannot blend {parts[0][0].name!r} and {f.name!r}: decomposed "
                             f"with alpha {first.alpha} and {f.config.alpha}")
    # categories: union of layers, one k and one fingerprint per category
    cats: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for f, _ in parts:
        for key, c in f.config.categories.items():
            have = cats.get(key)
            if have is None:
                cats[key] = {"out": c["out"], "in": c["in"], "k": c["k"],
                             "layers": list(c["layers"]), "fingerprint": c.get("fingerprint", "")}
                owner[key] = f.name
                continue
            if (have["out"], have["in"]) != (c["out"], c["in"]) or \
                    (have["fingerprint"] and c.get("fingerprint")
                     and have["fingerprint"] != c["fingerprint"]):
                other = next(g for g, _ in parts if g.name == owner[key]).config
                same_base = (other.base_fingerprint and f.config.base_fingerprint
                             and other.base_fingerprint == f.config.base_fingerprint)
                if same_base:
                    raise BlendError(
                        f"cannot blend {owner[key]!r} and {f.name!r}: category {key!r} is "
                        "expressed in two different bases of the same base model (e.g. "
                        "frod_rt's and PEFT's decomposition); a blend adds dl and s values, "
                        "which needs one basis: blend adapters of one basis")
                raise BlendError(f"cannot blend {owner[key]!r} and {f.name!r}: category {key!r} "
                                 "comes from different base models")
            if have["k"] != c["k"]:
                raise BlendError(f"cannot blend {owner[key]!r} and {f.name!r}: category {key!r} "
                                 f"has patterns of {have['k']} and {c['k']} entries (different "
                                 "sparse rates); blending needs one shared pattern")
            have["layers"] += [x for x in c["layers"] if x not in have["layers"]]
            have["fingerprint"] = have["fingerprint"] or c.get("fingerprint", "")
    # the default-pattern seed: one for all components that use default patterns
    std_seeds = {f.config.seed for f, _ in parts
                 if any(d.rows is None for d in f.layers.values())}
    if len(std_seeds) > 1:
        users = [f.name for f, _ in parts if any(d.rows is None for d in f.layers.values())]
        raise BlendError(f"cannot blend {', '.join(map(repr, users))}: their default patterns "
                         f"use different seeds {sorted(std_seeds)}; blending needs one shared "
                         "pattern per layer")
    seed = next(iter(std_seeds)) if std_seeds else first.seed
    dtype = parts[0][0].layers[next(iter(parts[0][0].layers))].dl.dtype
    for f, _ in parts:
        for d in f.layers.values():
            dtype = torch.promote_types(dtype, d.dl.dtype)
    layers: dict[str, LayerDelta] = {}
    names = sorted({x for f, _ in parts for x in f.layers})
    for layer in names:
        holders = [(f, w) for f, w in parts if layer in f.layers]
        p0 = _pattern_of(holders[0][0], layer)
        for f, _ in holders[1:]:
            p = _pattern_of(f, layer)
            if not _same(p0, p):
                raise BlendError(f"cannot blend {holders[0][0].name!r} and {f.name!r} on layer "
                                 f"{layer!r}: one uses {_describe(p0)}, the other "
                                 f"{_describe(p)}; adapters with their own pattern blend only "
                                 "with adapters sharing it")
        dl = sum(w * f.layers[layer].dl.double() for f, w in holders)
        s = sum(w * f.layers[layer].s.double() for f, w in holders)
        rows, cols = (p0[1], p0[2]) if p0[0] == "own" else (None, None)
        layers[layer] = LayerDelta(dl.to(dtype), s.to(dtype), rows, cols)
    targets = []
    for f, _ in parts:
        targets += [t for t in f.config.target_modules if t not in targets]
    cfg = AdapterConfig(first.format_version, first.decomposition_fingerprint, targets,
                        first.sparse_rate, int(seed), first.alpha, cats,
                        {"blend": {f.name: float(w) for f, w in parts}},
                        base_fingerprint=first.base_fingerprint, base_model=dict(first.base_model))
    return AdapterFile(name, cfg, layers)
