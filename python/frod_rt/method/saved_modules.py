"""``modules_to_save``: whole modules (classification heads, an LM head) trained per adapter.

As in PEFT, each adapter whose config lists a module gets its own trainable copy of it; the
base module stays frozen and in place (its state-dict keys do not change). The copies live in
``FrodModel.saved_modules[<escaped module name>][<adapter>]``. The base module's ``forward``
is replaced, on that instance only, by :class:`RoutedModule`, which runs:

* the base module when adapters are disabled or the row's adapter has no copy;
* ``copies[a]`` for the active adapter ``a`` (calls without per-row routing);
* with per-row ``adapter_names``, each group of batch rows (dim 0 of the first argument)
  through its adapter's copy, the outputs written back in row order.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def escape(name: str) -> str:
    """ModuleDict key for a dotted module name."""
    return name.replace(".", "__")


class RoutedModule:
    """Replacement ``forward`` of a module listed in some adapter's ``modules_to_save``."""

    def __init__(self, original_forward, copies: nn.ModuleDict, state):
        self.original_forward = original_forward
        self.copies = copies
        self.state = state

    def _module_for(self, adapter):
        return self.copies[adapter] if adapter is not None and adapter in self.copies else None

    def __call__(self, *args, **kwargs):
        from .layers import tie_idle
        y, used = self._call(*args, **kwargs)
        if not isinstance(y, torch.Tensor):
            return y
        return tie_idle(y, lambda: [p for a, c in self.copies.items() if a not in used
                                    for p in c.parameters()], self.state)

    def _call(self, *args, **kwargs):
        """(output, adapters whose copies ran)."""
        st = self.state
        if st.disabled:
            return self.original_forward(*args, **kwargs), []
        if st.routing is None:
            m = self._module_for(st.active)
            if m is None:
                return self.original_forward(*args, **kwargs), []
            return m(*args, **kwargs), [st.active]
        names = st.routing.names
        groups: dict = {}
        for i, n in enumerate(names):
            groups.setdefault(n if n in self.copies else None, []).append(i)
        if len(groups) == 1:
            a = next(iter(groups))
            m = self._module_for(a)
            if m is None:
                return self.original_forward(*args, **kwargs), []
            return m(*args, **kwargs), [a]
        x, rest = args[0], args[1:]
        if not isinstance(x, torch.Tensor) or x.shape[0] != len(names):
            raise ValueError(f"modules_to_save: got {len(names)} adapter names for an input of "
                             f"shape {tuple(getattr(x, 'shape', ()))}; the routed module needs "
                             "one row per name in dim 0 of its first argument")
        out = None
        for adapter, rows in groups.items():
            idx = torch.tensor(rows, dtype=torch.long, device=x.device)
            m = self._module_for(adapter)
            y = (m or self.original_forward)(x.index_select(0, idx), *rest, **kwargs)
            if not isinstance(y, torch.Tensor):
                raise TypeError("modules_to_save: per-row routing needs a module that returns "
                                "one tensor")
            if out is None:
                out = y.new_empty((len(names),) + tuple(y.shape[1:]))
            out.index_copy_(0, idx, y)
        return out, [a for a in groups if a is not None]


def install(fm, module_name: str) -> nn.ModuleDict:
    """The ModuleDict of copies for ``module_name`` (created, with the routed forward, on
    first use)."""
    key = escape(module_name)
    if key in fm.saved_modules:
        return fm.saved_modules[key]
    base = fm.model.get_submodule(module_name)
    copies = nn.ModuleDict()
    fm.saved_modules[key] = copies
    base.forward = RoutedModule(base.forward, copies, fm.state)
    return copies


def add_copy(fm, module_name: str, adapter: str,
             state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Give ``adapter`` its own trainable copy of ``module_name`` (from ``state_dict`` when
    given, else the base module's current values)."""
    base = fm.model.get_submodule(module_name)
    copies = install(fm, module_name)
    m = copy.deepcopy(base)
    m.__dict__.pop("forward", None)          # the copy runs its class's forward
    if state_dict is not None:
        m.load_state_dict(state_dict, strict=True)
    for p in m.parameters():
        p.requires_grad_(True)
    copies[adapter] = m
    return m


def remove_copies(fm, adapter: str) -> None:
    for copies in fm.saved_modules.values():
        if adapter in copies:
            del copies[adapter]


def copies_of(fm, adapter: str) -> dict[str, nn.Module]:
    """module name -> adapter's copy."""
    return {key.replace("__", "."): c[adapter] for key, c in fm.saved_modules.items()
            if adapter in c}


def restore(fm) -> None:
    """Put the base modules' own forward back (merge_and_unload)."""
    for key in list(fm.saved_modules.keys()):
        base = fm.model.get_submodule(key.replace("__", "."))
        base.__dict__.pop("forward", None)
