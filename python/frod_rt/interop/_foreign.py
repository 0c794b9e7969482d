"""Adapters expressed in a *foreign* basis, and how they become frod_rt adapters.

Both upstream PEFT and the official research code store, per adapted layer, a basis ``V_f``
(shared by a category), the base weight's split in that basis (``U_f``, ``l0_f``) and
trainable values: a diagonal deviation ``dl_f`` and sparse values ``s_f`` on a pattern
``(rows_f, cols_f)``. In our orientation every such adapter means

    dW = U_f (diag(dl_f) + S_f) V_f^T,   S_f[rows_f[j], cols_f[j]] = s_f[j]

(the readers in :mod:`.peft` / :mod:`.official` bring their files to this form).
Two ways to turn that into a frod_rt :class:`AdapterFile`:

* ``to_our_basis``: map onto an existing frod_rt :class:`Decomposition` of the same base.
  When ``V_f = V Pi`` for a signed permutation ``Pi`` (``Pi[pi(j), j] = sign_j``), then
  ``U_f = U Pi`` and ``l0_f = l[pi]`` and the adapter maps *exactly*:
  ``dl[pi(j)] = dl_f[j]`` and ``S[pi(r), pi(c)] = sign_r sign_c s_f`` (the pattern becomes a
  per-adapter pattern). ``Pi`` is read off ``M = V^-1 V_f`` and the mapping error is
  *measured* on random probes (``||(dW - dW_f) P|| / ||dW_f P||``), never assumed.
* ``file_basis``: keep the foreign basis. Builds a :class:`Decomposition` whose ``V`` are the
  foreign ``V_f`` and whose ``U, l`` are recomputed from the base weights in float64, so
  ``W = U diag(l) V_f^T`` to round-off and the adapter is carried over exactly. Its
  fingerprint differs from frod_rt's own decomposition of the base (it is another basis).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..method.adapter_io import (AdapterConfig, AdapterError, AdapterFile, FORMAT_VERSION,
                                 LayerDelta, base_fields)
from ..method.basis import Category, Decomposition, LayerBasis
from ..method.decompose import category_key
from ..method.fingerprint import _tensor_bytes, decomposition_fingerprint
from ..method.joint import split_in_basis
from ..method.patterns import layer_pattern

class BasisMismatch(AdapterError):
    """A foreign basis is not a signed permutation of frod_rt's: most likely another base."""


__all__ = ["BasisMismatch", "ForeignLayer", "check_foreign_bases", "foreign_split", "signed_permutation", "to_our_basis",
           "file_basis", "delta_probe_error"]


@dataclass
class ForeignLayer:
    """One adapted layer of a foreign adapter, in the foreign basis (see module docstring).

    weight: (out, in) base weight (any float dtype; the model's own orientation removed).
    V: (in, in) foreign basis. group: name of the foreign category (layers sharing ``V``).
    dl: (in,) deviation from the foreign ``l0``. rows, cols: (k,) int64. s: (k,).
    """
    name: str
    weight: torch.Tensor
    V: torch.Tensor
    group: str
    dl: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    s: torch.Tensor


def foreign_split(weight: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U, l0`` (float64) with ``W = U diag(l0) V^T`` (:func:`frod_rt.method.joint.split_in_basis`:
    a solve, a pseudo-inverse for a singular ``V`` like PEFT, zero columns where ``l0 <= 1e-12``)."""
    return split_in_basis(weight, V)


def signed_permutation(V_ours: torch.Tensor, V_f: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(pi, sign, deviation)`` with ``V_f ~= V_ours Pi``, or None when the best match of the
    columns is not a permutation. ``deviation = max |V_ours^-1 V_f - Pi|``."""
    vo = V_ours.detach().to("cpu", torch.float64)
    vf = V_f.detach().to("cpu", torch.float64)
    if vo.shape != vf.shape:
        return None
    M = torch.linalg.solve(vo, vf)
    n = M.shape[0]
    pi = M.abs().argmax(dim=0)
    if torch.unique(pi).numel() != n:
        return None
    cols = torch.arange(n)
    sign = torch.sign(M[pi, cols])
    sign[sign == 0] = 1.0
    P = torch.zeros_like(M)
    P[pi, cols] = sign
    return pi, sign, float((M - P).abs().max()) if n else 0.0


def check_foreign_bases(layers: list[ForeignLayer], tol: float = 1e-2) -> dict[str, float]:
    """Check that every foreign basis belongs to these base weights; returns the residual per
    group and raises :class:`BasisMismatch` above ``tol``.

    The joint basis satisfies a basis-independent identity with the stacked weights
    ``A = [W_1; ...; W_L]`` of its group: ``V V^T = R^T E E^T R = A^T A`` (QR branch, rows >=
    cols), while the SVD branch has orthogonal ``V`` with ``(A V)^T (A V)`` diagonal. The
    residual is ``||V V^T - A^T A||_F / ||A^T A||_F``, resp. the relative off-diagonal mass
    plus ``||V^T V - I||_F / sqrt(n)``. Float32/float16 bases leave ~1e-6/1e-3; another base
    leaves O(1).
    """
    groups: dict[str, list[ForeignLayer]] = {}
    for fl in layers:
        groups.setdefault(fl.group, []).append(fl)
    out = {}
    for g, members in groups.items():
        A = torch.cat([fl.weight.detach().to("cpu", torch.float64) for fl in members])
        V = members[0].V.detach().to("cpu", torch.float64)
        n = V.shape[0]
        if A.shape[0] >= A.shape[1]:
            G = A.T @ A
            res = float(torch.linalg.norm(V @ V.T - G) / torch.linalg.norm(G).clamp_min(1e-300))
        else:
            AV = A @ V
            G = AV.T @ AV
            off = G - torch.diag(torch.diagonal(G))
            res = float(torch.linalg.norm(off) / torch.linalg.norm(G).clamp_min(1e-300)) + \
                float(torch.linalg.norm(V.T @ V - torch.eye(n, dtype=V.dtype))) / n ** 0.5
        out[g] = res
        if not res <= tol:
            raise BasisMismatch(
                f"the foreign basis of category {g!r} does not belong to this base model "
                f"(basis residual {res:.2e} > {tol:.1e}): the adapter was trained on another "
                "base, or its layers are incomplete")
    return out


def _apply_delta(U, V, dl, rows, cols, s, probes):
    """``U (diag(dl) + S) V^T P`` in float64, S given as COO (rows, cols, s)."""
    Z = V.T @ probes                           # (in, p)
    H = dl[:, None] * Z
    if rows.numel():
        H = H.index_add(0, rows, s[:, None] * Z[cols])
    return U @ H


def delta_probe_error(ours: tuple, foreign: tuple, n: int, probes: int = 8, seed: int = 0
                      ) -> float:
    """Relative error ``||(dW_ours - dW_f) P||_F / ||dW_f P||_F`` on ``probes`` random Gaussian
    columns ``P`` (n, probes). Each of ``ours`` / ``foreign`` is (U, V, dl, rows, cols, s).
    Returns 0 when both updates vanish, inf when only the foreign one does."""
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(n, probes, generator=g, dtype=torch.float64)
    a = _apply_delta(*[t.to(torch.float64) if t.is_floating_point() else t for t in ours], P)
    b = _apply_delta(*[t.to(torch.float64) if t.is_floating_point() else t for t in foreign], P)
    num, den = float(torch.linalg.norm(a - b)), float(torch.linalg.norm(b))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _sorted_pattern(rows, cols, s):
    order = torch.argsort(rows.to(torch.int64) * (int(cols.max()) + 1 if cols.numel() else 1)
                          + cols.to(torch.int64))
    return rows[order], cols[order], s[order]


def _category_table(layers: list[ForeignLayer], keys: dict[str, str], k_of: dict[str, int],
                    fps: dict[str, str]) -> dict[str, dict]:
    cats: dict[str, dict] = {}
    for fl in layers:
        key = keys[fl.name]
        out_f, in_f = fl.weight.shape
        c = cats.setdefault(key, {"out": int(out_f), "in": int(in_f), "k": k_of[fl.name],
                                  "layers": [], "fingerprint": fps.get(key, "")})
        if c["k"] != k_of[fl.name]:
            raise AdapterError(f"layers of category {key!r} carry different numbers of sparse "
                               f"values ({c['k']} and {k_of[fl.name]}); frod_rt needs one k per "
                               "category")
        c["layers"].append(fl.name)
    return cats


def _deltas(layers, keys, decomposition, mapped, dtype):
    """LayerDelta per layer; rows/cols only when the pattern is not the category default."""
    out = {}
    for fl in layers:
        dl, rows, cols, s = mapped[fl.name]
        key, k = keys[fl.name], int(s.numel())
        default = layer_pattern(decomposition, key, 0, k)     # imported adapters use seed 0
        dr, dc = default.rows, default.cols
        same = torch.equal(dr.to(torch.int64), rows) and torch.equal(dc.to(torch.int64), cols)
        out[fl.name] = LayerDelta(dl.to(dtype), s.to(dtype),
                                  None if same else rows.to(torch.int32),
                                  None if same else cols.to(torch.int32))
    return out


def _make_adapter(name, decomposition, layers, keys, mapped, sparse_rate, extra, dtype):
    k_of = {fl.name: int(mapped[fl.name][3].numel()) for fl in layers}
    fps = {key: decomposition.categories[key].fingerprint for key in set(keys.values())}
    cfg = AdapterConfig(FORMAT_VERSION, decomposition.fingerprint,
                        list(decomposition.target_modules), float(sparse_rate), 0,
                        float(decomposition.alpha), _category_table(layers, keys, k_of, fps),
                        dict(extra), **base_fields(decomposition))
    return AdapterFile(name, cfg, _deltas(layers, keys, decomposition, mapped, dtype))


def to_our_basis(layers: list[ForeignLayer], decomposition: Decomposition, *, name: str,
                 sparse_rate: float, extra: dict, tol: float, dtype=torch.float32,
                 probes: int = 8) -> tuple[AdapterFile, float]:
    """Map a foreign adapter onto ``decomposition`` (frod_rt's basis of the same base).

    Returns ``(adapter, max_rel_error)``. Raises :class:`AdapterError` when a layer is not in
    the decomposition, when a foreign basis is not a signed permutation of ours, or when the
    measured relative error of some layer's ``dW`` exceeds ``tol``.
    """
    mapped, keys, worst, devs = {}, {}, 0.0, {}
    perms: dict[tuple[str, str], tuple] = {}
    for fl in layers:
        basis = decomposition.layers.get(fl.name)
        if basis is None:
            raise AdapterError(f"layer {fl.name!r} is not part of the frod_rt decomposition "
                               f"(targets {decomposition.target_modules})")
        cat = decomposition.categories[basis.category]
        if tuple(fl.weight.shape) != (cat.out_features, cat.in_features):
            raise AdapterError(f"layer {fl.name!r}: shape {tuple(fl.weight.shape)} differs from "
                               f"category {cat.key!r}")
        keys[fl.name] = cat.key
        pk = (cat.key, fl.group)
        if pk not in perms:
            sp = signed_permutation(cat.V, fl.V)
            if sp is None:
                raise AdapterError(
                    f"the foreign basis of {fl.group!r} is not a signed permutation of frod_rt's "
                    f"basis of {cat.key!r} (degenerate eigenvalues make both arbitrary): the "
                    "adapter cannot be mapped onto this decomposition; use basis='file'")
            perms[pk] = sp
            devs[cat.key] = sp[2]
        pi, sign, _ = perms[pk]
        U_f, _ = foreign_split(fl.weight, fl.V)
        dl_f = fl.dl.to(torch.float64)
        s_f = fl.s.to(torch.float64)
        dl = torch.zeros_like(dl_f)
        dl[pi] = dl_f
        rows, cols = pi[fl.rows], pi[fl.cols]
        s = s_f * sign[fl.rows] * sign[fl.cols]
        if rows.numel():
            rows, cols, s = _sorted_pattern(rows, cols, s)
        mapped[fl.name] = (dl, rows, cols, s)
        err = delta_probe_error(
            (basis.U.cpu(), cat.V.cpu(), dl.to(dtype), rows, cols, s.to(dtype)),
            (U_f, fl.V.cpu(), dl_f, fl.rows, fl.cols, s_f), fl.weight.shape[1], probes)
        worst = max(worst, err)
        if not err <= tol:
            raise AdapterError(
                f"layer {fl.name!r}: mapped onto frod_rt's basis the update differs from the "
                f"foreign one by {err:.2e} (relative, tolerance {tol:.1e}); the foreign basis "
                f"deviates from ours by {perms[pk][2]:.1e} (near-degenerate eigenvectors). "
                "Use basis='file' to import it exactly in its own basis")
    extra = dict(extra, basis="frod_rt", max_rel_error=worst,
                 basis_deviation={k: float(v) for k, v in devs.items()})
    return _make_adapter(name, decomposition, layers, keys, mapped, sparse_rate, extra,
                         dtype), worst


def file_basis(layers: list[ForeignLayer], *, alpha: float, target_modules: list[str],
               name: str, sparse_rate: float, extra: dict, dtype=torch.float32,
               tag: str = "foreign", identity: dict | None = None
               ) -> tuple[AdapterFile, Decomposition]:
    """Keep the foreign basis: a :class:`Decomposition` with the foreign ``V`` (and ``U, l``
    recomputed from the base weights in float64) plus the adapter on it, carried over exactly.

    Categories use frod_rt keys (:func:`category_key`); all layers of one key must share one
    foreign ``V``. The category fingerprint hashes the weights *and* the foreign ``V``, so
    the result can never be confused with frod_rt's own decomposition of the base.
    """
    by_key: dict[str, list[ForeignLayer]] = {}
    keys = {}
    for fl in layers:
        out_f, in_f = fl.weight.shape
        key = category_key(fl.name, out_f, in_f)
        keys[fl.name] = key
        by_key.setdefault(key, []).append(fl)
    cats, bases, cat_fps, mapped = {}, {}, {}, {}
    for key, members in by_key.items():
        V = members[0].V
        for fl in members[1:]:
            if fl.V.shape != V.shape or not torch.equal(fl.V, V):
                raise AdapterError(f"layers {members[0].name!r} and {fl.name!r} share category "
                                   f"{key!r} but carry different foreign bases")
        h = hashlib.sha256(f"frod_rt.{tag}-basis v1 alpha={float(alpha)!r} key={key}\n".encode())
        h.update(_tensor_bytes(V.to(torch.float64)))
        for fl in members:
            h.update(f"{fl.name} {tuple(fl.weight.shape)} {fl.weight.dtype}\n".encode())
            h.update(_tensor_bytes(fl.weight))
        cat_fps[key] = h.hexdigest()
        out_f, in_f = members[0].weight.shape
        cats[key] = Category(key, int(out_f), int(in_f), V.detach().cpu().to(dtype),
                             [fl.name for fl in members], cat_fps[key])
        for fl in members:
            U, l0 = foreign_split(fl.weight, V)
            bases[fl.name] = LayerBasis(fl.name, key, U.to(dtype), l0.to(dtype))
            rows, cols, s = fl.rows.to(torch.int64), fl.cols.to(torch.int64), fl.s.to(torch.float64)
            if rows.numel():
                rows, cols, s = _sorted_pattern(rows, cols, s)
            mapped[fl.name] = (fl.dl.to(torch.float64), rows, cols, s)
    dec = Decomposition(decomposition_fingerprint(alpha, cat_fps, tag), float(alpha),
                        list(target_modules), cats, bases, {"basis": tag, **(identity or {})})
    adapter = _make_adapter(name, dec, layers, keys, mapped, sparse_rate,
                            dict(extra, basis=tag, max_rel_error=0.0), dtype)
    return adapter, dec


def resolve_basis(layers: list[ForeignLayer], base_model, *, basis: str,
                  decomposition: Decomposition | None, alpha: float, cache_dir, name: str,
                  sparse_rate: float, extra: dict, tol: float, dtype, tag: str
                  ) -> tuple[AdapterFile, Decomposition, str, float]:
    """Express a foreign adapter in frod_rt's basis or keep the file's (see module docstring).

    ``basis``: "frod_rt" (map onto our decomposition, AdapterError above ``tol``), "file"
    (exact: a decomposition built from the file's V) or "auto" (frod_rt when within ``tol``,
    else file). Returns (adapter, its decomposition, the basis used, worst measured error).
    """
    from ..method.adapter_io import check_against
    from ..method.decompose import base_identity, decompose

    err = None
    if basis in ("auto", "frod_rt"):
        if decomposition is None:
            decomposition = decompose(base_model, [fl.name for fl in layers], alpha=alpha,
                                      progress=False, cache_dir=cache_dir)
        try:
            adapter, worst = to_our_basis(layers, decomposition, name=name,
                                          sparse_rate=sparse_rate, extra=extra, tol=tol,
                                          dtype=dtype)
            check_against(adapter, decomposition)
            return adapter, decomposition, "frod_rt", worst
        except BasisMismatch:
            raise
        except AdapterError as e:
            if basis == "frod_rt":
                raise
            err = str(e)
    adapter, dec = file_basis(layers, alpha=alpha, target_modules=[fl.name for fl in layers],
                              name=name, sparse_rate=sparse_rate,
                              extra=dict(extra, frod_rt_basis_rejected=err), dtype=dtype, tag=tag,
                              identity=base_identity(base_model))
    return adapter, dec, "file", 0.0


def save_import(adapter: AdapterFile, decomposition: Decomposition, basis: str, path) -> None:
    """Write an imported adapter to the directory ``path`` so that the engine serves it: the
    adapter files and, when it was kept in a foreign basis (``basis != "frod_rt"``), its
    decomposition in ``path/decomposition`` (``Decomposition.save``), which the engine loads
    as a basis of its own."""
    from pathlib import Path

    from ..method.adapter_io import BASIS_DIR, write_adapter
    write_adapter(adapter, path)
    if basis != "frod_rt":
        decomposition.save(Path(path) / BASIS_DIR)
