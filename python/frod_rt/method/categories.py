"""Which layers FRoD adapts and how they are grouped into categories (DESIGN.md 1.1).

A *category* is one module role with one weight shape across the layers of a model, e.g.
every ``model.layers.*.self_attn.q_proj`` of shape ``4096x4096``. Its key is the dotted path
with the numeric layer index replaced by ``*``, plus ``:<out>x<in>``, so two roles can never
collide (unlike keys built from the last two name parts).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

try:  # GPT-2 style layers store the weight as (in, out)
    from transformers.pytorch_utils import Conv1D as _Conv1D
except Exception:  # pragma: no cover - transformers is optional for the core
    _Conv1D = None

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def is_conv1d(module: nn.Module) -> bool:
    """True for a transformers ``Conv1D`` (weight stored as (in, out))."""
    return _Conv1D is not None and isinstance(module, _Conv1D)


def is_supported(module: nn.Module) -> bool:
    """FRoD adapts ``nn.Linear`` and transformers ``Conv1D`` layers."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a supported layer as an (out_features, in_features) view.

    ``nn.Linear`` stores (out, in) already; a GPT-2 ``Conv1D`` stores (in, out) and is
    transposed (a view, no copy). Raises TypeError for any other module.
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"FRoD supports nn.Linear and transformers Conv1D layers, got "
                    f"{type(module).__name__}")


def category_key(layer_name: str, out_features: int, in_features: int) -> str:
    """``"encoder.layer.3.attention.self.query", 384, 384 -> "encoder.layer.*.attention.self.query:384x384"``.

    Every purely numeric path component (the layer index of a ModuleList) becomes ``*``.
    """
    if not layer_name:
        raise ValueError("category_key: empty layer name")
    return f"{_INDEX.sub('*', layer_name)}:{int(out_features)}x{int(in_features)}"


def name_matches(name: str, targets: str | Iterable[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, target_modules: str | Iterable[str]
                 ) -> list[tuple[str, nn.Module]]:
    """The supported layers of ``model`` selected by ``target_modules``, in model order.

    ``target_modules`` follows PEFT: a list of name suffixes matched on whole dotted
    components (``"q_proj"``, ``"attention.self.query"``), or one regex string matched with
    ``re.fullmatch`` against the full module name.

    Raises:
        TypeError: target_modules of a wrong type, or a matched module FRoD cannot adapt.
        ValueError: nothing matched.
    """
    if isinstance(target_modules, str):
        targets: str | list[str] = target_modules
    elif isinstance(target_modules, Iterable):
        targets = list(target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise TypeError("target_modules: expected a non-empty list of non-empty strings "
                            "or one regex string")
    else:
        raise TypeError(f"target_modules: expected a list of names or a regex string, got "
                        f"{type(target_modules).__name__}")
    found = []
    for name, module in model.named_modules():
        if not name or not name_matches(name, targets):
            continue
        if not is_supported(module):
            if isinstance(targets, list) and any(name == t or name.endswith("." + t)
                                                 for t in targets):
                # A suffix list also matches containers (e.g. "attention"): skip those quietly
                # unless they are leaves FRoD would be expected to handle.
                if len(list(module.children())) == 0 and hasattr(module, "weight"):
                    raise TypeError(f"target {name!r} is a {type(module).__name__}; FRoD adapts "
                                    "nn.Linear and transformers Conv1D layers only")
            continue
        found.append((name, module))
    if not found:
        raise ValueError(f"target_modules {target_modules!r} matched no nn.Linear/Conv1D layer "
                         "of the model")
    return found


def group_categories(layers: list[tuple[str, nn.Module]]) -> dict[str, list[tuple[str, nn.Module]]]:
    """Group (name, module) pairs by :func:`category_key`, keeping model order."""
    groups: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in layers:
        out_f, in_f = linear_weight(module).shape
        groups.setdefault(category_key(name, out_f, in_f), []).append((name, module))
    return groups
