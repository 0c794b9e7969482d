"""FRoD adapter files: ``<dir>/frod_adapter.json`` + ``<dir>/frod_adapter.safetensors``.

The JSON holds the :class:`AdapterConfig` (``format`` = "frod_rt.adapter", ``format_version``,
``name``, ``decomposition_fingerprint``, ``base_fingerprint``, ``base_model``,
``target_modules``, ``sparse_rate``, ``seed``, ``alpha``,
``categories`` = key -> {"out", "in", "k", "layers", "fingerprint"}, ``extra``). Format 2
records both fingerprints (see :mod:`.fingerprint`): the *decomposition* the adapter was
trained on and the *base* weights alone, plus ``base_model`` (architecture, model type,
hidden size, layers). Format 1 files are still read: their ``base_fingerprint`` field held the
decomposition fingerprint, and they record no base fingerprint or model. The
safetensors file holds ``<layer>.dl`` (in,) and ``<layer>.s`` (k,) for every listed layer,
plus ``<layer>.rows`` / ``<layer>.cols`` (k,) int32 when that layer's pattern is not the
default ``sparse_pattern`` (imported adapters). Optional ``modules_to_save`` (JSON: module
name -> {state-dict key: shape}) lists whole trained modules (heads), stored as tensors
``modules_to_save.<module>.<key>``.

Every problem with a file raises :class:`AdapterError` naming the file and the problem;
``read_adapter`` validates everything that can be checked without the base model and
``check_against`` the rest, so callers can validate fully before changing a model.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .categories import category_accepts, category_key

FORMAT_NAME = "frod_rt.adapter"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "frod_adapter.json"
BASIS_DIR = "decomposition"     # an adapter's own basis, saved next to it (imports in a foreign basis)
WEIGHTS_NAME = "frod_adapter.safetensors"
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

__all__ = ["AdapterError", "LayerDelta", "AdapterConfig", "AdapterFile", "read_adapter",
           "write_adapter", "check_against", "other_model_error", "base_fields", "FORMAT_VERSION",
           "CONFIG_NAME", "WEIGHTS_NAME"]


class AdapterError(ValueError):
    """A FRoD adapter file is missing, corrupt, inconsistent or made for another base."""


@dataclass
class LayerDelta:
    """One layer's trainable values: ``dW = U (diag(dl) + S) V^T``."""
    dl: torch.Tensor                         # (in,)
    s: torch.Tensor                          # (k,)
    rows: torch.Tensor | None = None         # (k,) int32, only for a non-default pattern
    cols: torch.Tensor | None = None


@dataclass
class AdapterConfig:
    format_version: int
    decomposition_fingerprint: str           # the decomposition trained on (weights+targets+alpha+basis)
    target_modules: list[str]
    sparse_rate: float
    seed: int
    alpha: float
    categories: dict[str, dict]              # key -> {"out", "in", "k", "layers", "fingerprint"}
    extra: dict = field(default_factory=dict)
    base_fingerprint: str = ""               # the base model's weights alone ("" if unrecorded)
    base_model: dict = field(default_factory=dict)   # fingerprint.describe_model of the base


def base_fields(decomposition) -> dict:
    """``{"base_fingerprint", "base_model"}`` keyword arguments of :class:`AdapterConfig` for an
    adapter trained on ``decomposition`` (empty values when it records none)."""
    extra = getattr(decomposition, "extra", {}) or {}
    return {"base_fingerprint": str(extra.get("base_fingerprint", "")),
            "base_model": dict(extra.get("base_model") or {})}


@dataclass
class AdapterFile:
    name: str
    config: AdapterConfig
    layers: dict[str, LayerDelta]
    # module name -> its state dict (heads trained with the adapter, ``modules_to_save``)
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


MODULE_PREFIX = "modules_to_save."


def _parse_modules(path, raw) -> dict[str, dict[str, tuple]]:
    mods = raw.get("modules_to_save", {})
    if not isinstance(mods, dict):
        _fail(path, "'modules_to_save' must be an object (module name -> {key: shape})")
    out = {}
    for mname, keys in mods.items():
        if not mname or not isinstance(keys, dict) or not keys:
            _fail(path, f"modules_to_save {mname!r}: expected a non-empty {{key: shape}} object")
        out[mname] = {}
        for key, shape in keys.items():
            if not key or not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                _fail(path, f"modules_to_save {mname!r}: key {key!r} needs a shape list of "
                            "non-negative integers")
            out[mname][key] = tuple(shape)
    return out


def _check_modules(path, spec: dict, tensors: dict) -> tuple[dict, set]:
    modules, expected = {}, set()
    for mname, keys in spec.items():
        modules[mname] = {}
        for key, shape in keys.items():
            tname = f"{MODULE_PREFIX}{mname}.{key}"
            t = tensors.get(tname)
            if t is None:
                _fail(path, f"tensor {tname!r} is missing")
            if tuple(t.shape) != shape:
                _fail(path, f"tensor {tname!r} has shape {tuple(t.shape)}, expected {shape}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                _fail(path, f"tensor {tname!r} holds NaN or inf values")
            modules[mname][key] = t
            expected.add(tname)
    return modules, expected


def _fail(path, msg: str):
    raise AdapterError(f"adapter {path}: {msg}")


def _parse_config(path: Path, raw: dict) -> tuple[str | None, AdapterConfig]:
    if not isinstance(raw, dict):
        _fail(path, "config is not a JSON object")
    if raw.get("format", FORMAT_NAME) != FORMAT_NAME:
        _fail(path, f"not a frod_rt adapter (format {raw.get('format')!r})")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        _fail(path, f"unsupported format_version {version!r} (this frod_rt reads "
                    f"{', '.join(map(str, READABLE_VERSIONS))})")
    dec_field = "base_fingerprint" if version == 1 else "decomposition_fingerprint"
    need = {dec_field: str, "target_modules": list, "sparse_rate": (int, float),
            "seed": int, "alpha": (int, float), "categories": dict}
    for key, typ in need.items():
        if key not in raw:
            _fail(path, f"config field {key!r} is missing")
        if not isinstance(raw[key], typ) or isinstance(raw[key], bool):
            _fail(path, f"config field {key!r} has the wrong type {type(raw[key]).__name__}")
    if not all(isinstance(t, str) for t in raw["target_modules"]):
        _fail(path, "target_modules must be a list of strings")
    if raw["seed"] < 0:
        _fail(path, f"config field 'seed' must be >= 0, got {raw['seed']}")
    if not (0.0 <= float(raw["sparse_rate"]) <= 1.0) or not float(raw["alpha"]) > 0:
        _fail(path, f"sparse_rate {raw['sparse_rate']!r} / alpha {raw['alpha']!r} out of range")
    cats = {}
    seen = set()
    for key, c in raw["categories"].items():
        if not isinstance(c, dict):
            _fail(path, f"category {key!r} is not an object")
        for f in ("out", "in", "k"):
            if not isinstance(c.get(f), int) or isinstance(c.get(f), bool) or c[f] < 0:
                _fail(path, f"category {key!r}: field {f!r} must be a non-negative integer")
        n = c["in"]
        if c["k"] > n * (n - 1):
            _fail(path, f"category {key!r}: k={c['k']} exceeds the {n * (n - 1)} off-diagonal "
                        f"positions of {n}x{n}")
        layers = c.get("layers")
        if not isinstance(layers, list) or not layers or \
                not all(isinstance(x, str) and x for x in layers):
            _fail(path, f"category {key!r}: 'layers' must be a non-empty list of names")
        for name in layers:
            if name in seen:
                _fail(path, f"layer {name!r} is listed twice")
            if not category_accepts(key, name, c["out"], n):
                _fail(path, f"layer {name!r} cannot belong to category {key!r} (its category "
                            f"would be {category_key(name, c['out'], n)!r})")
            seen.add(name)
        fp = c.get("fingerprint", "")
        if not isinstance(fp, str):
            _fail(path, f"category {key!r}: fingerprint must be a string")
        cats[key] = {"out": c["out"], "in": n, "k": c["k"], "layers": list(layers),
                     "fingerprint": fp}
    if not cats:
        _fail(path, "the adapter has no categories")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        _fail(path, "'extra' must be an object")
    base_fp, base_model = "", {}
    if version >= 2:
        base_fp, base_model = raw.get("base_fingerprint", ""), raw.get("base_model", {})
        if not isinstance(base_fp, str) or not isinstance(base_model, dict):
            _fail(path, "'base_fingerprint' must be a string and 'base_model' an object")
    name = raw.get("name")
    return (name if isinstance(name, str) else None), AdapterConfig(
        version, raw[dec_field], list(raw["target_modules"]), float(raw["sparse_rate"]),
        int(raw["seed"]), float(raw["alpha"]), cats, dict(extra), base_fp, dict(base_model))


def _check_tensors(path, config: AdapterConfig, tensors: dict[str, torch.Tensor],
                   modules_spec: dict | None = None
                   ) -> tuple[dict[str, LayerDelta], dict[str, dict[str, torch.Tensor]]]:
    layers: dict[str, LayerDelta] = {}
    modules, expected = _check_modules(path, modules_spec or {}, tensors)
    for key, c in config.categories.items():
        n, k = c["in"], c["k"]
        for name in c["layers"]:
            got = {}
            for part, shape in (("dl", (n,)), ("s", (k,))):
                t = tensors.get(f"{name}.{part}")
                if t is None:
                    _fail(path, f"tensor '{name}.{part}' is missing")
                if t.dtype not in _FLOATS:
                    _fail(path, f"tensor '{name}.{part}' has dtype {t.dtype}, expected a float")
                if tuple(t.shape) != shape:
                    _fail(path, f"tensor '{name}.{part}' has shape {tuple(t.shape)}, expected "
                                f"{shape} (category {key})")
                if not bool(torch.isfinite(t).all()):
                    _fail(path, f"tensor '{name}.{part}' holds NaN or inf values")
                got[part] = t
                expected.add(f"{name}.{part}")
            r, cc = tensors.get(f"{name}.rows"), tensors.get(f"{name}.cols")
            if (r is None) != (cc is None):
                _fail(path, f"layer {name!r}: 'rows' and 'cols' must both be present or absent")
            if r is not None:
                for part, t in (("rows", r), ("cols", cc)):
                    if t.dtype != torch.int32 or tuple(t.shape) != (k,):
                        _fail(path, f"tensor '{name}.{part}' must be int32 of shape ({k},), got "
                                    f"{t.dtype} {tuple(t.shape)}")
                if k and (int(r.min()) < 0 or int(cc.min()) < 0 or int(r.max()) >= n
                          or int(cc.max()) >= n):
                    _fail(path, f"layer {name!r}: pattern indices out of range [0, {n})")
                if bool((r == cc).any()):
                    _fail(path, f"layer {name!r}: pattern has a diagonal entry (S is off-diagonal)")
                expected.update({f"{name}.rows", f"{name}.cols"})
            layers[name] = LayerDelta(got["dl"], got["s"], r, cc)
    unknown = sorted(set(tensors) - expected)
    if unknown:
        _fail(path, f"tensors not described by the config: {unknown[:5]}"
                    + (" ..." if len(unknown) > 5 else ""))
    return layers, modules


def read_adapter(path, name: str | None = None) -> AdapterFile:
    """Read and validate an adapter directory (no base model needed).

    Args:
        path: directory holding frod_adapter.json and frod_adapter.safetensors.
        name: adapter name; default: the name stored in the file, else the directory name.

    Raises:
        AdapterError: missing/unreadable/truncated files, bad JSON, unknown format version,
            missing or extra tensors, wrong shapes/dtypes, non-finite values, bad patterns.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter {path}: not a directory")
    cpath, wpath = path / CONFIG_NAME, path / WEIGHTS_NAME
    for p in (cpath, wpath):
        if not p.is_file():
            _fail(path, f"file {p.name} is missing")
    try:
        raw = json.loads(cpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"{CONFIG_NAME} is not valid JSON ({e})")
    stored_name, config = _parse_config(path, raw)
    modules_spec = _parse_modules(path, raw)
    try:
        tensors = load_file(str(wpath))
    except Exception as e:  # SafetensorError, OSError, ... on truncated or corrupt files
        _fail(path, f"{WEIGHTS_NAME} is truncated or corrupt ({e})")
    layers, modules = _check_tensors(path, config, tensors, modules_spec)
    return AdapterFile(name or stored_name or path.name, config, layers, modules)


def write_adapter(adapter: AdapterFile, path) -> None:
    """Write ``adapter`` to the directory ``path`` (created if needed). Files are written to
    temporaries and renamed, so a crash never leaves a half-written adapter under the final
    names. The result is checked by the same rules as :func:`read_adapter` before writing.

    Argument order: the adapter, then where it goes (as ``export_peft``, ``torch.save``). The
    old order ``write_adapter(path, adapter)`` still works, with a DeprecationWarning."""
    if isinstance(path, AdapterFile) and not isinstance(adapter, AdapterFile):
        import warnings
        warnings.warn("write_adapter(path, adapter) is deprecated: use write_adapter(adapter, "
                      "path)", DeprecationWarning, stacklevel=2)
        adapter, path = path, adapter
    if not isinstance(adapter, AdapterFile):
        raise TypeError(f"write_adapter: expected an AdapterFile, got {type(adapter).__name__}")
    path = Path(path)
    cfg = adapter.config
    raw = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": adapter.name,
           "decomposition_fingerprint": cfg.decomposition_fingerprint,
           "base_fingerprint": cfg.base_fingerprint, "base_model": dict(cfg.base_model),
           "target_modules": list(cfg.target_modules),
           "sparse_rate": float(cfg.sparse_rate), "seed": int(cfg.seed),
           "alpha": float(cfg.alpha),
           "categories": {k: {"out": int(c["out"]), "in": int(c["in"]), "k": int(c["k"]),
                              "layers": list(c["layers"]),
                              "fingerprint": c.get("fingerprint", "")}
                          for k, c in cfg.categories.items()},
           "extra": dict(cfg.extra)}
    if adapter.modules:
        raw["modules_to_save"] = {m: {k: list(t.shape) for k, t in sd.items()}
                                  for m, sd in adapter.modules.items()}
    tensors = {f"{MODULE_PREFIX}{m}.{k}": t.detach().cpu().contiguous()
               for m, sd in adapter.modules.items() for k, t in sd.items()}
    for name, d in adapter.layers.items():
        tensors[f"{name}.dl"] = d.dl.detach().cpu().contiguous()
        tensors[f"{name}.s"] = d.s.detach().cpu().contiguous()
        if d.rows is not None or d.cols is not None:
            tensors[f"{name}.rows"] = d.rows.detach().cpu().to(torch.int32).contiguous()
            tensors[f"{name}.cols"] = d.cols.detach().cpu().to(torch.int32).contiguous()
    raw = json.loads(json.dumps(raw))
    _, parsed = _parse_config(path, raw)
    _check_tensors(path, parsed, tensors, _parse_modules(path, raw))
    path.mkdir(parents=True, exist_ok=True)
    tmp_w = path / (WEIGHTS_NAME + f".tmp{os.getpid()}")
    tmp_c = path / (CONFIG_NAME + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp_w), metadata={"format": FORMAT_NAME})
    tmp_c.write_text(json.dumps(raw, indent=1))
    os.replace(tmp_w, path / WEIGHTS_NAME)
    os.replace(tmp_c, path / CONFIG_NAME)


def _adapter_summary(adapter: AdapterFile) -> str:
    """"BertModel (bert, hidden size 32, 2 layers)", or for files that record no model, the
    shapes of its categories."""
    from .fingerprint import model_summary
    if adapter.config.base_model.get("architecture"):
        return model_summary(adapter.config.base_model)
    shapes = sorted({f"{c['out']}x{c['in']}" for c in adapter.config.categories.values()})
    first = next(iter(adapter.config.categories))
    return f"a model with layers like {first.split(':')[0]!r} (shapes {', '.join(shapes)})"


def other_model_error(adapter: AdapterFile, base_model: dict, base_fp: str, detail: str
                      ) -> AdapterError:
    """The one error for an adapter that does not fit this base model: "adapter 'x' was
    trained for <arch> (<type>, hidden size H, N layers), this base is <arch> (...)" plus the
    base fingerprints when both are known and ``detail`` (the first mismatch found)."""
    from .fingerprint import model_summary
    cfg = adapter.config
    mine, theirs = model_summary(base_model), _adapter_summary(adapter)
    if cfg.base_fingerprint and base_fp and cfg.base_fingerprint == base_fp:
        return AdapterError(
            f"adapter {adapter.name!r} records this base model (base fingerprint "
            f"{base_fp[:12]}...) but does not fit this decomposition of it (its decomposition "
            f"fingerprint {cfg.decomposition_fingerprint[:12] or 'unrecorded'}...; other targets, "
            f"alpha or basis?): {detail}")
    if theirs == mine:
        msg = (f"adapter {adapter.name!r} was trained for a different base model of the same "
               f"architecture, {mine}")
    else:
        msg = f"adapter {adapter.name!r} was trained for {theirs}, this base is {mine}"
    if cfg.base_fingerprint and base_fp:
        msg += f" (base fingerprint {cfg.base_fingerprint[:12]}..., this base {base_fp[:12]}...)"
    return AdapterError(f"{msg}: {detail}")


def check_against(adapter: AdapterFile, decomposition) -> None:
    """Check that ``adapter`` fits ``decomposition`` (a :class:`Decomposition`).

    Accepted when the decomposition fingerprints are equal, or when every category of the
    adapter exists in the decomposition with the same category fingerprint (the adapter
    targets a subset of the decomposed layers of the same base). Every layer must belong to
    the decomposition, in the same category, with matching (out, in).

    Raises:
        AdapterError naming the mismatch: "trained for <model>, this base is <model>" (another
        base model), "trained on this base model but on another decomposition" (same base
        fingerprint; other targets, alpha or basis), or the alpha / layer that differs.
    """
    cfg = adapter.config
    where = f"adapter {adapter.name!r}"
    if not math.isclose(cfg.alpha, decomposition.alpha, rel_tol=1e-12):
        raise AdapterError(f"{where}: trained with alpha={cfg.alpha}, the base was decomposed "
                           f"with alpha={decomposition.alpha}")
    extra = getattr(decomposition, "extra", {}) or {}

    def refuse(detail: str):
        raise other_model_error(adapter, extra.get("base_model") or {},
                                str(extra.get("base_fingerprint", "")), detail)

    same_dec = cfg.decomposition_fingerprint == decomposition.fingerprint
    for key, c in cfg.categories.items():
        cat = decomposition.categories.get(key)
        if cat is None:
            shape_twin = [k for k in decomposition.categories if k.split(":")[0] == key.split(":")[0]]
            refuse(f"its category {key!r} is not among this base's decomposed categories"
                   + (f" (this base has {shape_twin[0]!r})" if shape_twin else ""))
        if (c["out"], c["in"]) != (cat.out_features, cat.in_features):
            refuse(f"category {key!r} has shape {c['out']}x{c['in']}, this base "
                   f"{cat.out_features}x{cat.in_features}")
        if not same_dec and (not c.get("fingerprint") or c["fingerprint"] != cat.fingerprint):
            refuse(f"the weights of category {key!r} differ (category fingerprint "
                   f"{(c.get('fingerprint') or 'unrecorded')[:12]}..., this base "
                   f"{cat.fingerprint[:12]}...)")
        for name in c["layers"]:
            basis = decomposition.layers.get(name)
            if basis is None or basis.category != key:
                refuse(f"layer {name!r} is not a decomposed layer of category {key!r} in "
                       "this base")
    for name, d in adapter.layers.items():
        basis = decomposition.layers.get(name)
        if basis is None:
            refuse(f"layer {name!r} is not decomposed in this base")
        if d.dl.shape != basis.l.shape:
            raise AdapterError(f"{where}: layer {name!r} dl has shape {tuple(d.dl.shape)}, the "
                               f"base layer needs {tuple(basis.l.shape)}")
