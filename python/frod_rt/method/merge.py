"""Merging an adapter into the base weights: ``W <- W + U (diag(dl) + S) V^T``."""
from __future__ import annotations

from torch import nn

from .layers import FrodLinear


def frod_layers(model: nn.Module) -> list[tuple[str, FrodLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FrodLinear)]


def merge_adapter(frod_model, name: str) -> None:
    """Merge adapter ``name`` into every layer it adapts (old weights kept for unmerge).
    Afterwards calls routed to ``name`` (or with ``name`` active) run the plain base GEMM;
    other adapters and base rows raise until :func:`unmerge_adapter`."""
    frod_model._require_adapter(name)
    layers = [m for _, m in frod_layers(frod_model.model)]
    busy = [m.merged_adapter for m in layers if m.merged_adapter is not None]
    if busy:
        raise ValueError(f"adapter {busy[0]!r} is already merged; unmerge_adapter() first")
    done = []
    try:
        for m in layers:
            if name in m.frod_dl:
                m.merge(name)
                done.append(m)
    except Exception:
        for m in done:
            m.unmerge()
        raise
    frod_model.state.active = name


def unmerge_adapter(frod_model) -> None:
    """Restore the weights saved by :func:`merge_adapter` (no-op when nothing is merged)."""
    for _, m in frod_layers(frod_model.model):
        m.unmerge()


def merge_and_unload(frod_model, name: str | None = None) -> nn.Module:
    """Merge ``name`` (default: the active adapter; None active = no merge) for good, put the
    original nn.Linear/Conv1D modules back and return the plain base model."""
    unmerge_adapter(frod_model)
    name = frod_model.state.active if name is None else name
    if name is not None:
        frod_model._require_adapter(name)
    model = frod_model.model
    from . import saved_modules
    if name is not None:            # the adapter's trained heads replace the base's values
        for mname, copy in saved_modules.copies_of(frod_model, name).items():
            model.get_submodule(mname).load_state_dict(copy.state_dict())
    saved_modules.restore(frod_model)
    for path, m in frod_layers(model):
        if name is not None and name in m.frod_dl:
            m.merge(name, keep_copy=False)
        base = m._base_module
        base.weight = m.weight
        if m.bias is not None:
            base.bias = m.bias
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    return model
