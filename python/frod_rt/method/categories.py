"""Which layers FRoD adapts and how they are grouped into categories (DESIGN.md 1.1, 2.1).

A *category* is one module role with one weight shape across the layers of a model, e.g.
every ``model.layers.*.self_attn.q_proj`` of shape ``4096x4096``. Its key is the dotted path
with the numeric layer index replaced by ``*``, plus ``:<out>x<in>``, so two roles can never
collide (unlike keys built from the last two name parts). This is ``category_mode="per_role"``.

``category_mode="shared_input"`` (DESIGN.md 2.1) puts the roles that read the *same input*
into one category: the targeted members of one of :data:`SHARED_INPUT_ROLES` under one parent
module (Llama ``q_proj, k_proj, v_proj`` and ``gate_proj, up_proj``; BERT ``query, key,
value``). Its key is ``<parent with * for the index>.{q_proj,k_proj,v_proj}:<o_q>+<o_k>+<o_v>x<in>``
and its layers are listed in model order (layer 0's q, k, v, then layer 1's ...). Every other
targeted layer keeps its per-role category.
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

CATEGORY_MODES = ("per_role", "shared_input")

# sibling roles that read one input tensor (in this order inside a shared-input category key)
SHARED_INPUT_ROLES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"),
                      ("query", "key", "value"))

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


def check_category_mode(mode) -> str:
    if mode not in CATEGORY_MODES:
        raise ValueError(f"category_mode must be one of {CATEGORY_MODES}, got {mode!r}")
    return mode


def _shared_input_keys(layers: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """layer name -> shared-input category key, for the layers that form a group of at least
    two targeted sibling roles with one input dimension (others are absent)."""
    by_parent: dict[tuple[str, int], dict[str, tuple[str, int, int]]] = {}
    for name, module in layers:
        parent, _, role = name.rpartition(".")
        for gi, roles in enumerate(SHARED_INPUT_ROLES):
            if role in roles:
                out_f, in_f = linear_weight(module).shape
                by_parent.setdefault((parent, gi), {})[role] = (name, int(out_f), int(in_f))
    keys = {}
    for (parent, gi), members in by_parent.items():
        present = [r for r in SHARED_INPUT_ROLES[gi] if r in members]
        ins = {members[r][2] for r in present}
        if len(present) < 2 or len(ins) != 1:
            continue
        outs = "+".join(str(members[r][1]) for r in present)
        stem = _INDEX.sub("*", parent) + "." if parent else ""
        key = f"{stem}{{{','.join(present)}}}:{outs}x{ins.pop()}"
        for r in present:
            keys[members[r][0]] = key
    return keys


def with_input_siblings(model: nn.Module, layers: list[tuple[str, nn.Module]]
                        ) -> list[tuple[str, nn.Module]]:
    """``layers`` plus the untargeted sibling roles of their input groups (a target ``q_proj``
    brings its ``k_proj`` and ``v_proj``), in model order. A shared-input category is thus fixed
    by the model, not by the targets: adapters of any subset of q, k, v share its basis."""
    chosen = {n for n, _ in layers}
    want = set()
    for name, _ in layers:
        parent, _, role = name.rpartition(".")
        for roles in SHARED_INPUT_ROLES:
            if role in roles:
                want.update(f"{parent}.{r}" if parent else r for r in roles)
    want -= chosen
    if not want:
        return list(layers)
    return [(n, m) for n, m in model.named_modules()
            if n in chosen or (n in want and is_supported(m))]


def group_categories(layers: list[tuple[str, nn.Module]], mode: str = "per_role"
                     ) -> dict[str, list[tuple[str, nn.Module]]]:
    """Group (name, module) pairs into categories, keeping model order.

    ``mode="per_role"``: by :func:`category_key`. ``mode="shared_input"``: sibling roles that
    read one input (see the module docstring) share a category; other layers as per role.
    """
    check_category_mode(mode)
    shared = _shared_input_keys(layers) if mode == "shared_input" else {}
    groups: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in layers:
        key = shared.get(name)
        if key is None:
            out_f, in_f = linear_weight(module).shape
            key = category_key(name, out_f, in_f)
        groups.setdefault(key, []).append((name, module))
    return groups


def is_shared_input_key(key: str) -> bool:
    """True for a category key made by ``category_mode="shared_input"``."""
    return "{" in key.rpartition(":")[0]


def decomposition_category_mode(category_keys) -> str:
    """"shared_input" when any of ``category_keys`` (a decomposition's or an adapter file's
    categories) is a shared-input category, else "per_role"."""
    return "shared_input" if any(is_shared_input_key(k) for k in category_keys) else "per_role"


def shared_input_parts(key: str) -> tuple[str, list[str], list[int], int] | None:
    """``"m.layers.*.attn.{q_proj,k_proj}:8+4x8"`` -> ``("m.layers.*.attn.", ["q_proj", "k_proj"],
    [8, 4], 8)``; None for a per-role key or a malformed shared-input key."""
    if not is_shared_input_key(key):
        return None
    head, _, shape = key.rpartition(":")
    stem, _, roles = head.rpartition("{")
    outs, _, n = shape.rpartition("x")
    try:
        out_list, n_in = [int(o) for o in outs.split("+")], int(n)
    except ValueError:
        return None
    role_list = roles.rstrip("}").split(",")
    return (stem, role_list, out_list, n_in) if len(role_list) == len(out_list) else None


def category_accepts(key: str, layer_name: str, out_features: int, in_features: int) -> bool:
    """Whether layer ``layer_name`` can belong to category ``key`` of (out, in) ``out_features``
    x ``in_features`` (the category's fields in an adapter file): per-role keys must equal
    :func:`category_key`; a shared-input key must have the layer's parent path (index as ``*``),
    its role among the braced roles, and ``in_features`` and the summed out of its key."""
    if not is_shared_input_key(key):
        return category_key(layer_name, out_features, in_features) == key
    parts = shared_input_parts(key)
    if parts is None:
        return False
    stem, roles, outs, n = parts
    parent, _, role = layer_name.rpartition(".")
    want_stem = _INDEX.sub("*", parent) + "." if parent else ""
    return (stem == want_stem and role in roles and n == int(in_features)
            and sum(outs) == int(out_features))


def key_for_layer(key: str, layer_name: str, out_features: int, in_features: int) -> str:
    """The key category ``key`` (of (out, in) ``out_features`` x ``in_features``) gets when its
    layers are renamed so that one of them is ``layer_name``: :func:`category_key` for a
    per-role key; for a shared-input key the same roles and shapes under the layer's parent."""
    parts = shared_input_parts(key)
    if parts is None:
        return category_key(layer_name, out_features, in_features)
    _, roles, outs, n = parts
    parent = layer_name.rpartition(".")[0]
    stem = _INDEX.sub("*", parent) + "." if parent else ""
    return f"{stem}{{{','.join(roles)}}}:{'+'.join(str(o) for o in outs)}x{n}"


def layer_out_in_category(key: str, layer_name: str, out_features: int) -> int:
    """The out_features a layer of category ``key`` has: the category's own for a per-role
    key, the one of the layer's role (``o_k`` of ``{q_proj,k_proj,v_proj}:o_q+o_k+o_vxin``) for a
    shared-input key (``out_features``, the summed out, when the role is not in the key)."""
    parts = shared_input_parts(key)
    role = layer_name.rpartition(".")[2]
    if parts is None or role not in parts[1]:
        return int(out_features)
    return parts[2][parts[1].index(role)]
