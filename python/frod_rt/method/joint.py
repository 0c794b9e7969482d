"""The hierarchical joint decomposition of one category, in float64 (DESIGN.md 1.1).

Pure math on a list of ``(out, in)`` weights; no model, no I/O.
"""
from __future__ import annotations

import torch

ALGORITHM_VERSION = 1


def _spd_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive definite matrix (Cholesky, falling back to LU)."""
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:
        return torch.cholesky_inverse(chol)
    return torch.linalg.inv(m)


def joint_basis(weights: list[torch.Tensor], alpha: float = 1e-3
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Shared basis ``V`` and per-block ``B_i`` with ``W_i = B_i V^T`` (float64, CPU).

    The blocks must share the input dimension ``in``; their row counts ``out_i`` may differ
    (a shared-input category stacks e.g. q, k, v of every layer, DESIGN.md 2.1). With
    ``N = sum_i out_i``:

    Full-rank branch (``N >= in``), with ``A = [W_1; ...; W_L] = Q R`` (thin QR)::

        T = mean_i inv(Q_i^T Q_i + alpha I);  E = eigenvectors(T)
        V = R^T E;  B_i = Q_i E        (B_i V^T = Q_i E E^T R = Q_i R = W_i; inv(V) never formed)

    Rank-deficient branch (``N < in``, the stack cannot give a square ``R``): ``V`` = the
    full set of right singular vectors of ``A`` (orthogonal) and ``B_i = W_i V``; the columns
    of ``B_i`` past the numerical rank of ``A`` are set to exactly zero (``W_i`` has no
    component there), so those ``l`` are zero.

    Args:
        weights: L 2-D tensors (out_i, in) with one ``in``, any float dtype/device.
        alpha: ridge term of the T average (> 0).

    Returns:
        V (in, in) and [B_1 .. B_L] (out_i, in), all float64 on CPU.
    """
    if not weights:
        raise ValueError("joint_basis: no weights")
    in_f = weights[0].shape[-1]
    if any(w.dim() != 2 or w.shape[1] != in_f or w.shape[0] < 1 for w in weights):
        raise ValueError(f"joint_basis: all weights must be 2-D with one input dimension, got "
                         f"{[tuple(w.shape) for w in weights]}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    L = len(weights)
    outs = [int(w.shape[0]) for w in weights]
    offs = [0]
    for o in outs:
        offs.append(offs[-1] + o)
    A = torch.cat([w.detach().to(device="cpu", dtype=torch.float64) for w in weights], dim=0)
    if offs[-1] >= in_f:
        Q, R = torch.linalg.qr(A, mode="reduced")  # Q (L*out, in), R (in, in)
        del A
        eye = torch.eye(in_f, dtype=torch.float64)
        T = torch.zeros(in_f, in_f, dtype=torch.float64)
        for i in range(L):
            Qi = Q[offs[i]:offs[i + 1]]
            out_f = outs[i]
            if out_f < in_f:
                # Woodbury: inv(alpha I + Qi^T Qi) = (I - Qi^T inv(alpha I + Qi Qi^T) Qi) / alpha,
                # an out x out solve instead of an in x in inverse.
                small = Qi @ Qi.T + alpha * torch.eye(out_f, dtype=torch.float64)
                chol, info = torch.linalg.cholesky_ex(small)
                X = (torch.cholesky_solve(Qi, chol) if int(info) == 0
                     else torch.linalg.solve(small, Qi))
                T += (eye - Qi.T @ X) / alpha
            else:
                T += _spd_inverse(Qi.T @ Qi + alpha * eye)
        T /= L
        T = 0.5 * (T + T.T)
        _, E = torch.linalg.eigh(T)
        V = R.T @ E
        Bs = [Q[offs[i]:offs[i + 1]] @ E for i in range(L)]
        return V, Bs
    _, svals, Vh = torch.linalg.svd(A, full_matrices=True)
    V = Vh.T.contiguous()
    tol = (svals.max() if svals.numel() else torch.tensor(0.0)) * max(A.shape) \
        * torch.finfo(torch.float64).eps
    rank = int((svals > tol).sum())
    Bs = []
    for w in weights:
        B = w.detach().to(device="cpu", dtype=torch.float64) @ V
        B[:, rank:] = 0.0
        Bs.append(B)
    return V, Bs


def scale_split(B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``B = U diag(l)``: l = column norms of B, U = B / l with zero columns where l == 0."""
    lam = torch.linalg.vector_norm(B, dim=0)
    safe = torch.where(lam > 0, lam, torch.ones_like(lam))
    U = torch.where(lam > 0, B / safe, torch.zeros_like(B))
    return U, lam


def peft_joint_basis(weights: list[torch.Tensor], alpha: float = 1e-3) -> torch.Tensor:
    """The shared basis ``V`` (in, in) of one category computed as upstream PEFT's FRoD tuner
    computes it (``peft.tuners.frod.model._projection_from_weights``): the same algorithm as
    :func:`joint_basis` but in **float32**, with ``T = mean_i inv(Q_i^T Q_i + alpha I)`` by
    direct inverses, and the SVD branch (``L*out < in``) taking all right singular vectors.
    Returns float32 on CPU. Adapters trained on this basis export to PEFT exactly."""
    mats = [w.detach().to(device="cpu", dtype=torch.float32) for w in weights]
    stacked = torch.cat(mats, dim=0)
    if stacked.shape[0] < stacked.shape[1]:
        return torch.linalg.svd(stacked, full_matrices=True)[2].T
    q, r = torch.linalg.qr(stacked)
    dim = r.shape[1]
    t = torch.zeros((dim, dim), dtype=r.dtype)
    start = 0
    for m in mats:
        qi = q[start:start + m.shape[0]]
        start += m.shape[0]
        t += torch.linalg.inv(qi.T @ qi + alpha * torch.eye(dim, dtype=r.dtype))
    t /= len(mats)
    return r.T @ torch.linalg.eigh(t)[1]


def split_in_basis(weight: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U, l`` (float64, CPU) with ``W = U diag(l) V^T`` for a given basis ``V``:
    ``B = W V^-T`` (a solve, never ``V^-1``; a pseudo-inverse with rtol 1e-6 for a singular
    ``V``, as PEFT does), ``l`` = column norms of ``B``, ``U = B / l`` with zero columns where
    ``l <= 1e-12``."""
    w = weight.detach().to("cpu", torch.float64)
    v = V.detach().to("cpu", torch.float64)
    try:
        B = torch.linalg.solve(v, w.T).T
    except RuntimeError:
        B = w @ torch.linalg.pinv(v, rtol=1e-6).T
    l0 = torch.linalg.norm(B, dim=0)
    U = torch.zeros_like(B)
    nz = l0 > 1e-12
    U[:, nz] = B[:, nz] / l0[nz]
    return U, l0
