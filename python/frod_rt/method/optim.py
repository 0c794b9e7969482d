"""Optimizer parameter groups for FRoD adapters (DESIGN.md 1.2).

Separate learning rates for the sparse values ``s`` and the scaling deltas ``dl`` (paper
defaults for encoders: s 5e-5, dl 5e-4; LLaMA-size: 1e-5 / 1e-4). Weight decay applies to
the deviations ``dl`` and ``s`` only: ``l`` is a frozen buffer, so decay pulls the adapted
weight towards the base, never the scales towards zero.
"""
from __future__ import annotations


def param_groups(fm, adapter_names=None, lr_s: float = 5e-5, lr_dl: float = 5e-4,
                 weight_decay: float = 0.0, other_lr: float | None = None,
                 other_weight_decay: float = 0.0) -> list[dict]:
    """Groups for ``torch.optim`` over the given adapters (default: all of them).

    Returns ``[{"params": dl..., "lr": lr_dl, "weight_decay": weight_decay, "name": "frod_dl"},
    {"params": s..., "lr": lr_s, ..., "name": "frod_s"}]`` plus, when other parameters of the
    model require grad (e.g. an unfrozen classifier head), a third group with ``other_lr``
    (default ``lr_dl``) and ``other_weight_decay``.
    """
    names = fm.adapters if adapter_names is None else list(adapter_names)
    for n in names:
        fm._require_adapter(n)
    dls, ss, ids = [], [], set()
    for m in fm.frod_layers().values():
        for n in names:
            if n in m.frod_dl:
                dls.append(m.frod_dl[n])
                ss.append(m.frod_s[n])
    ids = {id(p) for p in dls + ss}
    frod_all = {id(p) for m in fm.frod_layers().values()
                for d in (m.frod_dl, m.frod_s) for p in d.values()}
    groups = [{"params": dls, "lr": lr_dl, "weight_decay": weight_decay, "name": "frod_dl"},
              {"params": ss, "lr": lr_s, "weight_decay": weight_decay, "name": "frod_s"}]
    others = [p for p in fm.model.parameters()
              if p.requires_grad and id(p) not in ids and id(p) not in frod_all]
    if others:
        groups.append({"params": others, "lr": lr_dl if other_lr is None else other_lr,
                       "weight_decay": other_weight_decay, "name": "other"})
    return groups
