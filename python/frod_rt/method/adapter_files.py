"""Moving adapters between a FrodModel and :class:`AdapterFile` (the on-disk form)."""
from __future__ import annotations

from .adapter_io import (FORMAT_VERSION, AdapterConfig, AdapterError, AdapterFile, LayerDelta,
                         base_fields, check_against)
from .categories import decomposition_category_mode
from .config import FrodConfig, check_adapter_name
from .patterns import delta_pattern
from . import saved_modules as _saved


def export_adapter(fm, name: str) -> AdapterFile:
    """Adapter ``name`` of FrodModel ``fm`` as an AdapterFile (detached CPU tensors)."""
    fm._require_adapter(name)
    cfg: FrodConfig = fm.adapter_configs[name]
    cats: dict[str, dict] = {}
    layers: dict[str, LayerDelta] = {}
    for lname, m in fm.frod_layers().items():
        if name not in m.frod_dl:
            continue
        k = m.frod_s[name].shape[0]
        out_f, in_f, _, fp = fm._categories[m.category]
        c = cats.setdefault(m.category, {"out": out_f, "in": in_f, "k": k, "layers": [],
                                         "fingerprint": fp})
        if c["k"] != k:
            raise ValueError(f"adapter {name!r}: layers of category {m.category!r} have "
                             f"different pattern sizes ({c['k']} and {k}); cannot export")
        c["layers"].append(lname)
        rows = cols = None
        if m.has_own_pattern(name):
            rows, cols = (t.detach().cpu().clone() for t in m.pattern(name))
        layers[lname] = LayerDelta(m.frod_dl[name].detach().cpu().clone(),
                                   m.frod_s[name].detach().cpu().clone(), rows, cols)
    regex = isinstance(cfg.target_modules, str)
    extra = dict(cfg.extra)
    extra["target_modules_is_regex"] = regex
    config = AdapterConfig(FORMAT_VERSION, fm.fingerprint,
                           [cfg.target_modules] if regex else list(cfg.target_modules),
                           cfg.sparse_rate, cfg.seed, cfg.alpha, cats, extra,
                           **base_fields(fm.decomposition))
    modules = {m: {k: t.detach().cpu().clone() for k, t in c.state_dict().items()}
               for m, c in _saved.copies_of(fm, name).items()}
    return AdapterFile(name, config, layers, modules)


def _check_modules(fm, adapter: AdapterFile, name: str) -> None:
    """Every saved module exists in the model with the same state-dict keys and shapes."""
    for mname, sd in adapter.modules.items():
        try:
            base = fm.model.get_submodule(mname)
        except AttributeError:
            raise AdapterError(f"adapter {name!r}: modules_to_save module {mname!r} does not "
                               "exist in this model") from None
        own = base.state_dict()
        if set(own) != set(sd):
            raise AdapterError(f"adapter {name!r}: module {mname!r} has keys {sorted(own)}, the "
                               f"file has {sorted(sd)}")
        for k, t in sd.items():
            if tuple(own[k].shape) != tuple(t.shape):
                raise AdapterError(f"adapter {name!r}: {mname}.{k} has shape {tuple(t.shape)}, "
                                   f"the model's is {tuple(own[k].shape)}")


def import_adapter(fm, adapter: AdapterFile, name: str | None = None) -> None:
    """Validate ``adapter`` against ``fm`` completely, then add it under ``name`` (default
    ``adapter.name``). Raises AdapterError / ValueError with ``fm`` unchanged."""
    name = name or adapter.name
    try:
        check_adapter_name(name)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    if name in fm.adapter_configs:
        raise ValueError(f"adapter {name!r} already exists; delete_adapter() it or load under "
                         "another name")
    from .adapter_fit import fit_adapter_to_model
    adapter = fit_adapter_to_model(adapter, fm.model)     # another model: one clear error
    decomposition = fm.decomposition
    check_against(adapter, decomposition)
    _check_modules(fm, adapter, name)
    cfg = adapter.config
    layers = fm.frod_layers()
    covered = {n for c in cfg.categories.values() for n in c["layers"]}
    if covered != set(adapter.layers):
        raise AdapterError(f"adapter {name!r}: config layers and tensors disagree")
    plan = []
    for key, c in cfg.categories.items():
        for lname in c["layers"]:
            m = layers[lname]
            d = adapter.layers[lname]
            if d.dl.shape != (m.in_features,) or d.s.shape != (c["k"],):
                raise AdapterError(f"adapter {name!r}: layer {lname!r} values have shapes "
                                   f"{tuple(d.dl.shape)}, {tuple(d.s.shape)}; expected "
                                   f"({m.in_features},), ({c['k']},)")
            plan.append((m, d, delta_pattern(d, decomposition, key, cfg.seed)))
    regex = bool(cfg.extra.get("target_modules_is_regex"))
    try:
        config = FrodConfig(target_modules=cfg.target_modules[0] if regex else cfg.target_modules,
                            sparse_rate=cfg.sparse_rate, seed=cfg.seed, alpha=cfg.alpha,
                            param_dtype=next(iter(adapter.layers.values())).dl.dtype,
                            category_mode=decomposition_category_mode(cfg.categories),
                            extra={k: v for k, v in cfg.extra.items()
                                   if k != "target_modules_is_regex"},
                            modules_to_save=sorted(adapter.modules) or None)
    except (TypeError, ValueError) as e:
        raise AdapterError(f"adapter {name!r}: bad config ({e})") from None
    added = []
    try:
        for m, d, pattern in plan:
            ref = (pattern.rows, pattern.cols) if d.rows is not None else \
                ("shared", fm.state.shared_pattern(pattern))
            m.add_adapter(name, d.dl.detach().clone(), d.s.detach().clone(), ref)
            added.append(m)
        for mname, sd in adapter.modules.items():
            _saved.add_copy(fm, mname, name, sd)
    except Exception:
        for m in added:
            m.delete_adapter(name)
        _saved.remove_copies(fm, name)
        raise
    fm.adapter_configs[name] = config
