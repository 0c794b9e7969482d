"""``FrodModel`` / ``get_frod_model``: a base model whose target layers carry FRoD adapters.

Several adapters live on one model; ``U``, ``l``, ``V`` and the shared patterns are stored
once. A forward call runs the active adapter on every row, or, with
``adapter_names=[...]`` (one name per batch row, "__base__" for none), a different adapter
per row; each adapter then receives only its own gradients.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch
from torch import nn

from .adapter_io import AdapterFile, read_adapter, write_adapter
from .basis import Category, Decomposition, LayerBasis
from .categories import decomposition_category_mode, is_supported, name_matches
from .checkpointing import wrap_checkpoint_functions
from .config import BASE, DEFAULT_CATEGORY_MODE, FrodConfig, check_adapter_name
from .decompose import decompose
from .layers import FrodLinear
from .patterns import layer_pattern, pattern_size
from .state import FrodState, Routing
from . import adapter_files, merge as _merge, optim as _optim, saved_modules as _saved


class _ForwardCall:
    """``fm.forward``: calls ``FrodModel._forward`` and reports the wrapped model's signature
    plus ``adapter_names`` (so HF ``Trainer`` keeps the batch columns the base expects)."""

    def __init__(self, fm):
        self._fm = fm

    def __call__(self, *args, **kwargs):
        return self._fm._forward(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        base = inspect.signature(self._fm.model.forward)
        params = list(base.parameters.values())
        if "adapter_names" not in base.parameters:
            extra = inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY,
                                      default=None)
            at = next((i for i, p in enumerate(params) if p.kind == p.VAR_KEYWORD), len(params))
            params.insert(at, extra)
        return base.replace(parameters=params)

    @property
    def __doc__(self):
        return FrodModel._forward.__doc__


class _BaseSignatureForward:
    def __get__(self, obj, objtype=None):
        return FrodModel._forward if obj is None else _ForwardCall(obj)


class FrodModel(nn.Module):
    """Wraps ``model`` (changed in place: target layers become :class:`FrodLinear`)."""

    def __init__(self, model: nn.Module, config: FrodConfig, adapter_name: str | None = "default",
                 decomposition: Decomposition | None = None):
        """``adapter_name=None`` builds the layers for ``config``'s targets and adds no
        adapter (``from_pretrained`` then loads one)."""
        super().__init__()
        if not isinstance(config, FrodConfig):
            raise TypeError(f"config: expected a FrodConfig, got {type(config).__name__}")
        if adapter_name is not None:
            check_adapter_name(adapter_name)
        if any(isinstance(m, FrodLinear) for m in model.modules()):
            raise ValueError("model already has FRoD layers")
        if decomposition is None:
            decomposition = decompose(model, config.target_modules, config.alpha,
                                      cache_dir=config.cache_dir, progress=config.progress,
                                      category_mode=config.category_mode or DEFAULT_CATEGORY_MODE)
        self.model = model
        self.state = FrodState()
        self.saved_modules = nn.ModuleDict()     # modules_to_save copies, see saved_modules.py
        self.adapter_configs: dict[str, FrodConfig] = {}
        self._fingerprint = decomposition.fingerprint
        self._alpha = decomposition.alpha
        self._target_modules = list(decomposition.target_modules)
        self._decomp_extra = dict(decomposition.extra)
        self._categories = {k: (c.out_features, c.in_features, list(c.layers), c.fingerprint)
                            for k, c in decomposition.categories.items()}
        for key, c in decomposition.categories.items():
            self.state.add_category(key, c.V)
        mods = dict(model.named_modules())
        for name, basis in decomposition.layers.items():
            base = mods.get(name)
            if base is None or not is_supported(base):
                raise ValueError(f"decomposition layer {name!r} is not an nn.Linear/Conv1D of "
                                 "this model")
            layer = FrodLinear(base, name, basis.category, basis.U.to(base.weight.device),
                               basis.l.to(base.weight.device), self.state, config.compute_path)
            parent_name, _, child = name.rpartition(".")
            setattr(mods[parent_name] if parent_name else model, child, layer)
        if adapter_name is not None:
            self.add_adapter(adapter_name, config)
            self.set_adapter(adapter_name)

    # ---- introspection --------------------------------------------------------------------
    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)

    def frod_layers(self) -> dict[str, FrodLinear]:
        """Base layer name -> FrodLinear."""
        return {m.base_layer_name: m for m in self.model.modules() if isinstance(m, FrodLinear)}

    @property
    def adapters(self) -> list[str]:
        return list(self.adapter_configs)

    @property
    def active_adapter(self) -> str | None:
        return self.state.active

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def category_mode(self) -> str:
        """"per_role" or "shared_input": how the decomposition grouped the layers."""
        return self._decomp_extra.get("category_mode") or \
            decomposition_category_mode(self._categories)

    @property
    def decomposition(self) -> Decomposition:
        """The decomposition, built over the live buffers (no copies)."""
        layers = self.frod_layers()
        cats = {k: Category(k, o, i, self.state.V(k), list(ls), fp)
                for k, (o, i, ls, fp) in self._categories.items()}
        bases = {n: LayerBasis(n, m.category, m.frod_U, m.frod_l) for n, m in layers.items()}
        return Decomposition(self._fingerprint, self._alpha, list(self._target_modules), cats,
                             bases, dict(self._decomp_extra))

    def _require_adapter(self, name: str) -> None:
        if name not in self.adapter_configs:
            raise KeyError(f"no adapter named {name!r} (adapters: {self.adapters})")

    # ---- adapters -------------------------------------------------------------------------
    def _target_layers(self, targets) -> list[str]:
        layers = self.frod_layers()
        chosen = [n for n in layers if name_matches(n, targets)]
        missing = [n for n, m in self.model.named_modules()
                   if is_supported(m) and name_matches(n, targets)]
        if missing:
            raise ValueError(f"target_modules {targets!r} match {missing[:3]}, which were not "
                             "decomposed: build the FrodModel with targets covering every adapter")
        if not chosen:
            raise ValueError(f"target_modules {targets!r} match none of the decomposed layers")
        return chosen

    def add_adapter(self, name: str, config: FrodConfig) -> None:
        """Add a fresh adapter (dl = s = 0 unless ``config.init_std > 0``)."""
        check_adapter_name(name)
        if name in self.adapter_configs:
            raise ValueError(f"adapter {name!r} already exists")
        if not isinstance(config, FrodConfig):
            raise TypeError(f"config: expected a FrodConfig, got {type(config).__name__}")
        if abs(config.alpha - self._alpha) > 1e-12 * self._alpha:
            raise ValueError(f"config.alpha={config.alpha} differs from the model's "
                             f"decomposition alpha={self._alpha}")
        if config.category_mode is not None and config.category_mode != self.category_mode:
            raise ValueError(f"config.category_mode={config.category_mode!r} differs from the "
                             f"model's decomposition ({self.category_mode!r})")
        layers = self.frod_layers()
        decomposition = self.decomposition
        chosen = self._target_layers(config.target_modules)
        saved = self._modules_to_save(config.modules_to_save)
        for lname in chosen:
            m = layers[lname]
            n = m.in_features
            k = pattern_size(n, config.sparse_rate, config.k_rounding)
            pname = self.state.shared_pattern(layer_pattern(decomposition, m.category,
                                                            config.seed, k))
            dtype = config.param_dtype or m.frod_U.dtype
            dl = torch.zeros(n, dtype=dtype)
            s = torch.zeros(k, dtype=dtype)
            if config.init_std > 0:
                dl.normal_(0.0, config.init_std)
                s.normal_(0.0, config.init_std)
            m.add_adapter(name, dl, s, ("shared", pname))
        for mname in saved:
            _saved.add_copy(self, mname, name)
        self.adapter_configs[name] = config

    def _modules_to_save(self, names) -> list[str]:
        """Module names matched by ``modules_to_save`` (ValueError for none / FRoD layers)."""
        if not names:
            return []
        found = [n for n, m in self.model.named_modules()
                 if n and name_matches(n, names) and not isinstance(m, FrodLinear)]
        found = [n for n in found if not any(n.startswith(o + ".") for o in found)]
        if not found:
            raise ValueError(f"modules_to_save {names!r} match no module of the model")
        for n in found:
            if any(isinstance(m, FrodLinear) for m in self.model.get_submodule(n).modules()):
                raise ValueError(f"modules_to_save: {n!r} contains FRoD-adapted layers; list "
                                 "modules outside target_modules (heads)")
        return found
    def set_adapter(self, name: str | None) -> None:
        """Adapter used for calls without ``adapter_names`` (None or "__base__": the base)."""
        if name is not None and name != BASE:
            self._require_adapter(name)
        self.state.active = None if name == BASE else name

    def delete_adapter(self, name: str) -> None:
        self._require_adapter(name)
        layers = self.frod_layers().values()
        if any(m.merged_adapter == name for m in layers):
            raise ValueError(f"adapter {name!r} is merged; unmerge_adapter() first")
        for m in layers:
            if name in m.frod_dl:
                m.delete_adapter(name)
        _saved.remove_copies(self, name)
        del self.adapter_configs[name]
        if self.state.active == name:
            self.state.active = None

    # ---- forward --------------------------------------------------------------------------
    def _routing(self, names) -> Routing:
        if isinstance(names, str) or not hasattr(names, "__iter__"):
            raise TypeError("adapter_names: expected a list with one adapter name per batch row")
        names = list(names)
        for n in names:
            if n is not None and n != BASE and n not in self.adapter_configs:
                raise KeyError(f"adapter_names: unknown adapter {n!r} (adapters: {self.adapters})")
        return Routing(names)

    @contextlib.contextmanager
    def adapter_routing(self, adapter_names):
        """Route batch row i to ``adapter_names[i]`` for calls inside the block (e.g.
        ``generate``)."""
        prev = self.state.routing
        self.state.routing = self._routing(adapter_names)
        wrap_checkpoint_functions(self.model, self.state)
        try:
            yield self
        finally:
            self.state.routing = prev

    @contextlib.contextmanager
    def disable_adapters(self):
        """Run the plain base model inside the block."""
        prev = self.state.disabled
        self.state.disabled = True
        try:
            yield self
        finally:
            self.state.disabled = prev

    forward = _BaseSignatureForward()

    def _forward(self, *args, adapter_names=None, **kwargs):
        """``self.model(*args, **kwargs)``; ``adapter_names`` routes batch rows to adapters."""
        wrap_checkpoint_functions(self.model, self.state)
        st = self.state
        prev, st.share_xv = st.share_xv, True     # q, k, v share one X V within this call
        try:
            if adapter_names is None:
                return self.model(*args, **kwargs)
            with self.adapter_routing(adapter_names):
                return self.model(*args, **kwargs)
        finally:
            st.share_xv = prev
            st.clear_xv()

    # ---- merge ----------------------------------------------------------------------------
    def merge_adapter(self, name: str) -> None:
        _merge.merge_adapter(self, name)

    def unmerge_adapter(self) -> None:
        _merge.unmerge_adapter(self)

    def merge_and_unload(self, name: str | None = None) -> nn.Module:
        return _merge.merge_and_unload(self, name)

    # ---- files ----------------------------------------------------------------------------
    def adapter_file(self, name: str) -> AdapterFile:
        """Adapter ``name`` as an :class:`AdapterFile` (tensors detached, on CPU)."""
        return adapter_files.export_adapter(self, name)

    def add_adapter_from_file(self, adapter: AdapterFile, name: str | None = None) -> None:
        """Validate ``adapter`` fully against this model, then add it (nothing changes on error)."""
        adapter_files.import_adapter(self, adapter, name)

    def save_adapter(self, directory, name: str | None = None) -> None:
        """Write adapter ``name`` (default: the active one) to ``directory``."""
        name = name or self.state.active
        if name is None:
            raise ValueError("save_adapter: no adapter name given and none active")
        write_adapter(self.adapter_file(name), directory)

    def load_adapter(self, directory, name: str | None = None) -> str:
        """Read, validate and add the adapter in ``directory``; returns its name. Raises
        AdapterError (bad file / other base) or ValueError (name taken), model unchanged."""
        adapter = read_adapter(directory, name)
        self.add_adapter_from_file(adapter)
        return adapter.name

    def save_pretrained(self, save_directory, selected_adapters: list[str] | None = None,
                        **_ignored) -> None:
        """PEFT-style: write the adapters only (never the base weights). The adapter named
        "default" (or the only / first selected one when there is no "default") goes to
        ``save_directory``, every other one to ``save_directory/<name>``. Extra keyword
        arguments of ``PreTrainedModel.save_pretrained`` (e.g. from ``Trainer``) are ignored."""
        names = self.adapters if selected_adapters is None else list(selected_adapters)
        for n in names:
            self._require_adapter(n)
        if not names:
            raise ValueError("save_pretrained: the model has no adapters")
        root = "default" if "default" in names else names[0]
        for n in names:
            self.save_adapter(Path(save_directory) if n == root else Path(save_directory) / n, n)

    @classmethod
    def from_pretrained(cls, model: nn.Module, adapter_dir, adapter_name: str | None = None,
                        is_trainable: bool = False, decomposition: Decomposition | None = None,
                        cache_dir=None, progress: bool = False) -> "FrodModel":
        """PEFT-style: freeze ``model``, decompose the adapter's targets (cached) and load the
        adapter in ``adapter_dir`` (validated: AdapterError on a bad file or another base) as
        the active adapter. ``is_trainable=False`` (PEFT's default) loads it frozen."""
        adapter = read_adapter(adapter_dir, adapter_name)
        cfg = adapter.config
        regex = bool(cfg.extra.get("target_modules_is_regex"))
        config = FrodConfig(cfg.target_modules[0] if regex else list(cfg.target_modules),
                            sparse_rate=cfg.sparse_rate, seed=cfg.seed, alpha=cfg.alpha,
                            cache_dir=cache_dir, progress=progress)
        for p in model.parameters():
            p.requires_grad_(False)
        fm = cls(model, config, None, decomposition)
        fm.add_adapter_from_file(adapter)
        fm.set_adapter(adapter.name)
        if not is_trainable:
            for p in fm.adapter_parameters(adapter.name):
                p.requires_grad_(False)
        return fm

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """dl, s of every layer and the modules_to_save copies of adapter ``name``."""
        self._require_adapter(name)
        out = [d[name] for m in self.frod_layers().values() for d in (m.frod_dl, m.frod_s)
               if name in d]
        for c in _saved.copies_of(self, name).values():
            out.extend(c.parameters())
        return out

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters: base + every adapter)."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line: ``trainable params: N || all params: M || trainable%: P``."""
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")

    # ---- data parallel ----------------------------------------------------------------------
    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by ``DistributedDataParallel``: the FRoD buffers (U, l per layer, V and the
        patterns) derive from the frozen base and never change, so DDP must not broadcast them
        (U is the size of W) on every forward."""
        own = [n for n, _ in self.named_buffers()
               if n.startswith("state.") or n.rsplit(".", 1)[-1].startswith("frod_")]
        return own + list(self.__dict__.get("_ddp_ignore_extra", []))

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names) -> None:
        self.__dict__["_ddp_ignore_extra"] = list(names)

    # ---- optimisation ---------------------------------------------------------------------
    def optimizer_param_groups(self, adapter_names=None, **kw) -> list[dict]:
        """See :func:`frod_rt.method.optim.param_groups`."""
        return _optim.param_groups(self, adapter_names, **kw)


def get_frod_model(model: nn.Module, config: FrodConfig, adapter_name: str = "default",
                   decomposition: Decomposition | None = None) -> FrodModel:
    """Freeze ``model``'s parameters, decompose its targets (cached) and add adapter
    ``adapter_name`` (dl = s = 0: outputs unchanged). Unfreeze heads yourself if needed."""
    for p in model.parameters():
        p.requires_grad_(False)
    return FrodModel(model, config, adapter_name, decomposition)
