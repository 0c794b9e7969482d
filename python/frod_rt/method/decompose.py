"""``decompose(model, target_modules)``: the FRoD base decomposition, cached on disk.

The math lives in :mod:`.joint`, the result types in :mod:`.basis` (re-exported here), the
hashing in :mod:`.fingerprint`. Categories are processed one at a time (float64 copies of a
single category at most) and each category's result is cached under
``<cache_dir>/categories/<category fingerprint>.<dtype>.safetensors``, so a second call, or a
call with more targets on the same base, only computes what is new.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .basis import Category, Decomposition, LayerBasis, layer_outs
from .categories import (category_key, find_targets, group_categories, is_shared_input_key,
                         linear_weight, with_input_siblings)
from .fingerprint import (NATIVE_BASIS, category_fingerprint, decomposition_fingerprint,
                          describe_model, model_fingerprint)
from .joint import ALGORITHM_VERSION, joint_basis, peft_joint_basis, scale_split, split_in_basis

__all__ = ["LayerBasis", "Category", "Decomposition", "decompose", "category_key",
           "linear_weight", "default_cache_dir", "decompose_category", "base_identity", "BASES"]

BASES = (NATIVE_BASIS, "peft")


def default_cache_dir() -> Path:
    """``$FROD_RT_CACHE`` or ``~/.cache/frod_rt``."""
    env = os.environ.get("FROD_RT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "frod_rt"


@contextlib.contextmanager
def _threads_for(flops: float):
    """Run small LAPACK problems on one thread: for tiny matrices the OpenMP fork/join costs
    far more than the work (and is worse still on a busy machine)."""
    prev = torch.get_num_threads()
    small = flops < 5e7 and prev > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(prev)


def decompose_category(weights: list[torch.Tensor], alpha: float, dtype: torch.dtype,
                       basis: str = NATIVE_BASIS
                       ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """V (in, in), [U_i (out_i, in)], [l_i (in,)] of one category on CPU in ``dtype``.

    ``basis="frod_rt"``: the float64 joint decomposition (:func:`.joint.joint_basis`); the
    weights may differ in ``out`` (a shared-input category stacks q, k, v).
    ``basis="peft"``: ``V`` as upstream PEFT computes it (float32, :func:`.joint.peft_joint_basis`,
    cast to the weights' dtype as PEFT does), then ``U_i, l_i`` split off ``W_i`` in that basis in
    float64 (:func:`.joint.split_in_basis`), so ``W_i = U_i diag(l_i) V^T`` to round-off and
    adapters trained on it export to PEFT exactly."""
    in_f = weights[0].shape[1]
    if basis == "peft":
        # torch's own thread count, as in PEFT: LAPACK results can depend on it, and PEFT
        # recomputes this basis when it loads an exported adapter
        V = peft_joint_basis(weights, alpha).to(weights[0].dtype)
        Us, ls = [], []
        for w in weights:
            U, lam = split_in_basis(w, V)
            Us.append(U.to(dtype))
            ls.append(lam.float().to(dtype))      # PEFT keeps l0 in float32
        return V.to(dtype), Us, ls
    if basis != NATIVE_BASIS:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    with _threads_for(sum(w.shape[0] for w in weights) * in_f * in_f):
        V, Bs = joint_basis(weights, alpha)
    Us, ls = [], []
    for B in Bs:
        U, lam = scale_split(B)
        Us.append(U.to(dtype))
        ls.append(lam.to(dtype))
    return V.to(dtype), Us, ls


def base_identity(model: nn.Module) -> dict:
    """``{"base_fingerprint": <sha256 of every weight>, "base_model": describe_model(model)}``
    (see :mod:`.fingerprint`), recorded in every decomposition and adapter file."""
    return {"base_fingerprint": model_fingerprint(model), "base_model": describe_model(model)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _cache_file(cache_dir: Path, fp: str, dtype: torch.dtype) -> Path:
    return cache_dir / "categories" / f"{fp}.{_dtype_name(dtype)}.safetensors"


def _load_cached(path: Path, names: list[str], shapes: list[tuple[int, int]]):
    """(V, Us, ls) from a cache file, or None when absent/unreadable/not matching
    (``shapes``: the (out, in) of each layer)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("layers", "[]")) != names:
                return None
            V = f.get_tensor("V")
            Us = [f.get_tensor(f"U.{i}") for i in range(len(names))]
            ls = [f.get_tensor(f"l.{i}") for i in range(len(names))]
    except Exception:
        return None
    in_f = shapes[0][1]
    if tuple(V.shape) != (in_f, in_f) or any(tuple(u.shape) != tuple(sh)
                                             for u, sh in zip(Us, shapes)) \
            or any(tuple(x.shape) != (in_f,) for x in ls):
        return None
    return V, Us, ls


def _store_cached(path: Path, names: list[str], V, Us, ls) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"V": V.contiguous()}
        for i, (u, x) in enumerate(zip(Us, ls)):
            tensors[f"U.{i}"] = u.contiguous()
            tensors[f"l.{i}"] = x.contiguous()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata={"layers": json.dumps(names),
                                               "algorithm_version": str(ALGORITHM_VERSION)})
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"frod_rt: could not write the decomposition cache {path}: {e}")


def _category_out(key: str, shapes: list[tuple[int, int]]) -> int:
    """``out_features`` of a category: the common out of a per-role category, the summed out of
    one layer's roles (``o_q + o_k + o_v``) for a shared-input one."""
    if is_shared_input_key(key):
        return sum(layer_outs(key, 0))
    return shapes[0][0]


@torch.no_grad()
def decompose(model: nn.Module, target_modules: list[str] | str, alpha: float = 1e-3,
              cache_dir: str | os.PathLike | None = None, progress: bool = True,
              dtype: torch.dtype | None = None, use_cache: bool = True,
              category_mode: str = "per_role", basis: str = NATIVE_BASIS) -> Decomposition:
    """Decompose the targeted linear layers of ``model`` (DESIGN.md 1.1).

    Every targeted layer ``W_i`` (out, in) becomes ``U_i diag(l_i) V^T`` with ``V`` shared by
    its category (same role, same shape). Computed in float64 on CPU, one category at a time.

    Args:
        model: any module; targets are ``nn.Linear`` or transformers ``Conv1D`` layers.
        target_modules: PEFT-style list of name suffixes, or one regex (``re.fullmatch``).
        alpha: ridge term of the joint decomposition.
        cache_dir: cache root; None -> ``$FROD_RT_CACHE`` or ``~/.cache/frod_rt``.
        progress: show a tqdm bar over categories.
        dtype: dtype of the stored U, l, V; None -> each layer's weight dtype.
        use_cache: read/write the on-disk cache.
        category_mode: "per_role" (one category per role and shape, DESIGN.md 1.1; what
            PEFT and the official code use) or "shared_input" (roles reading one input share a
            category and its V, DESIGN.md 2.1; see :mod:`.categories`). A targeted role
            brings its untargeted siblings into the decomposition (the category is the
            model's, so adapters of any subset of the roles share it).
        basis: "frod_rt" (default: the float64 joint basis) or "peft" (``V`` computed as
            upstream PEFT computes it, so adapters trained on it export to PEFT exactly; see
            :func:`decompose_category`). Part of the category and decomposition fingerprints.
            "peft" needs per-role categories (PEFT has no shared-input category).

    Returns:
        A :class:`Decomposition` whose tensors sit on each layer's weight device.
    """
    alpha = float(alpha)
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if basis == "peft" and category_mode == "shared_input":
        raise ValueError('basis="peft" needs category_mode="per_role": PEFT has no shared-input '
                         'categories (decompose with category_mode="per_role")')
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    targets = find_targets(model, target_modules)
    if category_mode == "shared_input":
        targets = with_input_siblings(model, targets)
    groups = group_categories(targets, category_mode)
    categories: dict[str, Category] = {}
    layers: dict[str, LayerBasis] = {}
    cat_fps: dict[str, str] = {}
    bar = tqdm(groups.items(), total=len(groups), desc="FRoD decomposition", unit="category",
               disable=not progress)
    for key, members in bar:
        names = [n for n, _ in members]
        weights = [linear_weight(m).detach() for _, m in members]
        shapes = [tuple(int(x) for x in w.shape) for w in weights]
        in_f = shapes[0][1]
        out_f = _category_out(key, shapes)
        device = weights[0].device
        want = dtype or weights[0].dtype
        bar.set_postfix_str(f"{key} L={len(names)}")
        fp = category_fingerprint(key, alpha, list(zip(names, weights)), basis)
        cat_fps[key] = fp
        path = _cache_file(cache, fp, want)
        got = _load_cached(path, names, shapes) if use_cache else None
        if got is None:
            got = decompose_category(weights, alpha, want, basis)
            if use_cache:
                _store_cached(path, names, *got)
        V, Us, ls = got
        categories[key] = Category(key, out_f, in_f, V.to(device), names, fp)
        for name, U, lam in zip(names, Us, ls):
            layers[name] = LayerBasis(name, key, U.to(device), lam.to(device))
    tm = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    extra = {"algorithm_version": ALGORITHM_VERSION,
             "target_modules_is_regex": isinstance(target_modules, str),
             "category_mode": category_mode, "basis": basis, **base_identity(model)}
    return Decomposition(decomposition_fingerprint(alpha, cat_fps, basis), alpha, tm, categories,
                         layers, extra)
