"""``FrodConfig``: the settings of one FRoD adapter."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

COMPUTE_PATHS = ("auto", "factored", "dense", "replace")
# category mode of a model built by get_frod_model when its FrodConfig gives none (docs/method.md
# "Shared-input categories" has the measurement this choice rests on)
DEFAULT_CATEGORY_MODE = "shared_input"
BASE = "__base__"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_adapter_name(name) -> str:
    """Adapter names are non-empty [A-Za-z0-9_-] strings other than "__base__" (they become
    ParameterDict keys and file names)."""
    if not isinstance(name, str) or not _NAME.match(name) or name == BASE:
        raise ValueError(f"adapter name {name!r}: use letters, digits, '_' or '-' "
                         f"(and not {BASE!r})")
    return name


@dataclass
class FrodConfig:
    """One FRoD adapter.

    Attributes:
        target_modules: PEFT-style list of module-name suffixes, or one regex string.
        sparse_rate: S has ``k = round(in*in*sparse_rate)`` off-diagonal entries per layer
            (paper: 0.01 vision, 0.02 NLU).
        seed: 0 = the base's default patterns (shared by all adapters on this base); any other
            value is mixed into the pattern seed, giving this adapter its own patterns.
        alpha: ridge term of the base decomposition (all adapters of a model share one).
        compute_path: "auto" (cost rule, see docs/method.md), "factored", "dense" or
            "replace".
        param_dtype: dtype of dl and s; None = the base layer's dtype.
        init_std: 0 initialises dl and s to zero (model unchanged); > 0 draws them from
            N(0, init_std^2) (useful for tests).
        cache_dir, progress: passed to ``decompose``.
        category_mode: "per_role" or "shared_input" (roles reading one input share a basis V,
            DESIGN.md 2.1) for the decomposition ``get_frod_model`` builds; None = the
            model's mode when adding to a model, :data:`DEFAULT_CATEGORY_MODE` when building one.
        modules_to_save: names (PEFT-style suffixes) of whole modules, e.g. a classifier
            head, that this adapter trains as its own copy; saved in the adapter file.
        k_rounding: "round" (frod_rt: ``k = round(in*in*rate)``) or "floor" (PEFT and the
            official code: ``floor(in*in*rate)``, for adapters that must match PEFT's size).
    """
    target_modules: list[str] | str
    sparse_rate: float = 0.01
    seed: int = 0
    alpha: float = 1e-3
    compute_path: str = "auto"
    param_dtype: torch.dtype | None = None
    init_std: float = 0.0
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)
    category_mode: str | None = None
    modules_to_save: list[str] | None = None
    k_rounding: str = "round"

    def __post_init__(self):
        tm = self.target_modules
        if isinstance(tm, str):
            if not tm:
                raise ValueError("target_modules: empty regex")
        elif isinstance(tm, (list, tuple)) and tm and all(isinstance(t, str) and t for t in tm):
            self.target_modules = list(tm)
        else:
            raise TypeError("target_modules: expected a non-empty list of module-name suffixes "
                            "or one regex string")
        if not (0.0 <= float(self.sparse_rate) <= 1.0):
            raise ValueError(f"sparse_rate must be in [0, 1], got {self.sparse_rate!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not float(self.alpha) > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if self.compute_path not in COMPUTE_PATHS:
            raise ValueError(f"compute_path must be one of {COMPUTE_PATHS}, got "
                             f"{self.compute_path!r}")
        if self.param_dtype is not None and not (isinstance(self.param_dtype, torch.dtype)
                                                 and self.param_dtype.is_floating_point):
            raise TypeError(f"param_dtype must be a floating torch.dtype, got {self.param_dtype!r}")
        if not float(self.init_std) >= 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std!r}")
        if self.category_mode is not None:
            from .categories import check_category_mode
            check_category_mode(self.category_mode)
        mts = self.modules_to_save
        if mts is not None:
            if isinstance(mts, str) or not isinstance(mts, (list, tuple)) or not all(
                    isinstance(m, str) and m for m in mts):
                raise TypeError("modules_to_save: expected a list of module names")
            self.modules_to_save = list(mts)
        if self.k_rounding not in ("round", "floor"):
            raise ValueError(f"k_rounding must be 'round' or 'floor', got {self.k_rounding!r}")
        self.sparse_rate = float(self.sparse_rate)
        self.alpha = float(self.alpha)


def pattern_seed_string(category_fingerprint: str, seed: int) -> str:
    """The fingerprint string given to ``sparse_pattern``: the category fingerprint, with
    ``#seed=<seed>`` appended only when seed != 0."""
    return category_fingerprint if seed == 0 else f"{category_fingerprint}#seed={seed}"
