"""The result of a decomposition: per-category bases and per-layer factors, with file I/O.

On disk (``Decomposition.save(dir)``): ``dir/decomposition.json`` (fingerprints, alpha,
targets, categories and their layers) and ``dir/decomposition.safetensors`` with keys
``V::<category>``, ``U::<layer>``, ``l::<layer>``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DECOMPOSITION_FORMAT = 1


def layer_outs(key: str, out_features: int) -> list[int]:
    """Row counts of a category's layers, cycling in layer order: ``[out]`` for a per-role
    category, ``[o_q, o_k, o_v]`` for a shared-input one (its key ends ``:o_q+o_k+o_vxin``)."""
    from .categories import shared_input_parts
    parts = shared_input_parts(key)
    return parts[2] if parts is not None else [int(out_features)]


@dataclass
class LayerBasis:
    """Per adapted base layer: ``W = U diag(l) V^T`` with V from its category."""
    name: str                # e.g. "model.layers.3.self_attn.q_proj"
    category: str            # e.g. "model.layers.*.self_attn.q_proj:4096x4096"
    U: torch.Tensor          # (out, in), model dtype (NOT orthogonal)
    l: torch.Tensor          # (in,) column norms of B_i


@dataclass
class Category:
    """One module role with one shape (or, shared-input mode, the roles reading one input):
    the basis V shared by its layers and all adapters. ``out_features`` of a shared-input
    category is the summed out of one layer's roles (see :func:`layer_outs`)."""
    key: str
    out_features: int
    in_features: int
    V: torch.Tensor          # (in, in)
    layers: list[str]        # layer names, model order
    fingerprint: str = ""    # category fingerprint (fingerprint.category_fingerprint)


@dataclass
class Decomposition:
    """The decomposition of the targeted layers of one base model.

    ``fingerprint`` is the **decomposition fingerprint** (weights decomposed, targets, alpha,
    basis; also :attr:`decomposition_fingerprint`); the **base fingerprint** of the weights
    alone, the model's description and the basis name live in ``extra`` (``base_fingerprint``,
    ``base_model``, ``basis``; see :mod:`.fingerprint`) and are read through the properties."""
    fingerprint: str
    alpha: float
    target_modules: list[str]
    categories: dict[str, Category]
    layers: dict[str, LayerBasis]
    extra: dict = field(default_factory=dict)

    @property
    def decomposition_fingerprint(self) -> str:
        return self.fingerprint

    @property
    def base_fingerprint(self) -> str:
        """sha256 of the base model's weights alone ("" when not recorded)."""
        return str(self.extra.get("base_fingerprint", ""))

    @property
    def base_model(self) -> dict:
        """``fingerprint.describe_model`` of the base ({} when not recorded)."""
        return dict(self.extra.get("base_model") or {})

    @property
    def basis(self) -> str:
        """"frod_rt" (float64 joint basis), "peft" (PEFT's float32 basis) or a foreign
        file's basis tag."""
        return str(self.extra.get("basis", "frod_rt"))

    def to(self, device=None, dtype=None) -> "Decomposition":
        """A copy with every U, l, V moved/cast (fingerprints unchanged)."""
        def mv(t):
            return t.to(device=device, dtype=dtype) if (device or dtype) else t
        cats = {k: Category(c.key, c.out_features, c.in_features, mv(c.V), list(c.layers),
                            c.fingerprint) for k, c in self.categories.items()}
        layers = {n: LayerBasis(b.name, b.category, mv(b.U), mv(b.l))
                  for n, b in self.layers.items()}
        return Decomposition(self.fingerprint, self.alpha, list(self.target_modules), cats,
                             layers, dict(self.extra))

    def reconstruction_errors(self, model) -> dict[str, float]:
        """Per category, the worst ``|U_i diag(l_i) V^T - W_i| / |W_i|`` (Frobenius, float64)
        over its layers, against the current weights of ``model``."""
        from .categories import linear_weight

        mods = dict(model.named_modules())
        out = {}
        for key, cat in self.categories.items():
            V = cat.V.double()
            worst = 0.0
            for name in cat.layers:
                b = self.layers[name]
                W = linear_weight(mods[name]).detach().double()
                R = (b.U.double() * b.l.double()) @ V.T
                worst = max(worst, float(torch.linalg.norm(R - W)
                                         / torch.linalg.norm(W).clamp_min(1e-300)))
            out[key] = worst
        return out

    def save(self, path) -> None:
        """Write ``path/decomposition.{json,safetensors}`` (directory created if needed)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for key, c in self.categories.items():
            tensors[f"V::{key}"] = c.V.detach().cpu().contiguous()
        for name, b in self.layers.items():
            tensors[f"U::{name}"] = b.U.detach().cpu().contiguous()
            tensors[f"l::{name}"] = b.l.detach().cpu().contiguous()
        meta = {
            "format": "frod_rt.decomposition", "format_version": DECOMPOSITION_FORMAT,
            "fingerprint": self.fingerprint, "alpha": self.alpha,
            "target_modules": list(self.target_modules), "extra": self.extra,
            "categories": {k: {"out": c.out_features, "in": c.in_features,
                               "layers": list(c.layers), "fingerprint": c.fingerprint}
                           for k, c in self.categories.items()},
        }
        tmp = path / "decomposition.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, path / "decomposition.safetensors")
        (path / "decomposition.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(path / "decomposition.json.tmp", path / "decomposition.json")

    @classmethod
    def load(cls, path) -> "Decomposition":
        """Read a directory written by :meth:`save`. Raises FileNotFoundError / ValueError."""
        path = Path(path)
        jpath, tpath = path / "decomposition.json", path / "decomposition.safetensors"
        for p in (jpath, tpath):
            if not p.is_file():
                raise FileNotFoundError(f"decomposition file missing: {p}")
        try:
            meta = json.loads(jpath.read_text())
            tensors = load_file(str(tpath))
        except Exception as e:
            raise ValueError(f"cannot read decomposition at {path}: {e}") from e
        if meta.get("format_version") != DECOMPOSITION_FORMAT:
            raise ValueError(f"{jpath}: unsupported decomposition format_version "
                             f"{meta.get('format_version')!r}")
        cats, layers = {}, {}
        try:
            for key, c in meta["categories"].items():
                V = tensors[f"V::{key}"]
                if tuple(V.shape) != (c["in"], c["in"]):
                    raise ValueError(f"V of {key}: shape {tuple(V.shape)}")
                cats[key] = Category(key, c["out"], c["in"], V, list(c["layers"]),
                                     c.get("fingerprint", ""))
                outs = layer_outs(key, c["out"])
                for j, name in enumerate(c["layers"]):
                    U, lam = tensors[f"U::{name}"], tensors[f"l::{name}"]
                    if tuple(U.shape) != (outs[j % len(outs)], c["in"]) \
                            or tuple(lam.shape) != (c["in"],):
                        raise ValueError(f"U/l of {name}: shapes {tuple(U.shape)}, {tuple(lam.shape)}")
                    layers[name] = LayerBasis(name, key, U, lam)
        except KeyError as e:
            raise ValueError(f"{path}: decomposition is missing {e}") from e
        return cls(meta["fingerprint"], float(meta["alpha"]), list(meta["target_modules"]),
                   cats, layers, dict(meta.get("extra", {})))

    def pattern_seed_key(self, category: str) -> str:
        """The fingerprint string that seeds the sparse pattern of ``category``: the category
        fingerprint (so patterns do not change when other categories are added to the targets)."""
        return self.categories[category].fingerprint or self.fingerprint
