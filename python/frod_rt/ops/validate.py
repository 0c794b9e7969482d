"""Argument checks shared by the public ops.

Metadata (shapes, dtypes, devices) is checked here in Python; index *values* (pattern
entries in range and off the diagonal, monotone ``seg_indptr``, adapter ids in range) are
checked by the C++ core, which raises ``ValueError`` naming the argument as well.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def require_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def require_dtype(x: torch.Tensor, name: str, dtypes) -> None:
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {names}, got {str(x.dtype).replace('torch.', '')}")


def require_device(x: torch.Tensor, name: str, device: torch.device) -> None:
    if x.device != device:
        raise TypeError(f"{name}: expected a tensor on {device} (like z), got one on {x.device}")


def require_shape(x: torch.Tensor, name: str, shape: tuple) -> None:
    ok = x.dim() == len(shape) and all(w is None or w == d for w, d in zip(shape, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def _check_rotation_data(z, seg_indptr, seg_adapter, dl, s, index_tensors) -> tuple[int, int]:
    """Checks shared by the rotation ops: z, segments, dl, s (+ extra int32 index tensors).
    Returns (n, A)."""
    for t, name in ((z, "z"), (seg_indptr, "seg_indptr"), (seg_adapter, "seg_adapter"),
                    (dl, "dl"), (s, "s"), *index_tensors):
        require_tensor(t, name)
    if z.dim() != 2:
        raise ValueError(f"z: expected a 2-D tensor (T, n), got shape {tuple(z.shape)}")
    require_dtype(z, "z", FLOAT_DTYPES)
    n = z.shape[1]
    dev = z.device
    for t, name in ((seg_indptr, "seg_indptr"), (seg_adapter, "seg_adapter"), *index_tensors):
        require_dtype(t, name, (torch.int32,))
        require_device(t, name, dev)
    for t, name in ((dl, "dl"), (s, "s")):
        require_device(t, name, dev)
        if t.dtype != z.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match z's dtype {z.dtype}")
    if seg_adapter.dim() != 1:
        raise ValueError(f"seg_adapter: expected a 1-D tensor (G,), got shape {tuple(seg_adapter.shape)}")
    require_shape(seg_indptr, "seg_indptr", (seg_adapter.shape[0] + 1,))
    if dl.dim() != 2 or dl.shape[1] != n:
        raise ValueError(f"dl: expected shape (A, {n}) to match z's width, got {tuple(dl.shape)}")
    A = dl.shape[0]
    if s.dim() != 2 or s.shape[0] != A:
        raise ValueError(f"s: expected shape ({A}, k) to match dl's {A} adapters, got {tuple(s.shape)}")
    return n, A


def check_rotate_args(z, seg_indptr, seg_adapter, dl, s, rows, cols) -> None:
    """Validate the metadata of a rotate_segments call (see rotate_segments for shapes)."""
    _, A = _check_rotation_data(z, seg_indptr, seg_adapter, dl, s, ((rows, "rows"), (cols, "cols")))
    k = s.shape[1]
    if rows.dim() == 2:
        require_shape(rows, "rows", (A, k))
        require_shape(cols, "cols", (A, k))
    else:
        require_shape(rows, "rows", (k,))
        require_shape(cols, "cols", (k,))


def check_plan_table(z, seg_indptr, seg_adapter, dl, s, table) -> None:
    """Validate the metadata of a rotate_slots call (``table``: a PlanTable)."""
    n, A = _check_rotation_data(z, seg_indptr, seg_adapter, dl, s, ())
    if not hasattr(table, "slot_plan"):
        raise TypeError(f"table: expected a SlotPatterns or PlanTable, got {type(table).__name__}")
    if table.n != n:
        raise ValueError(f"table: built for n = {table.n}, z has n = {n}")
    if table.slot_plan.shape[0] != A:
        raise ValueError(f"table: has {table.slot_plan.shape[0]} slots, dl/s have {A}")
    if table.slot_plan.device != z.device:
        raise TypeError(f"table: lives on {table.slot_plan.device}, z on {z.device}")
    if table.max_k() > s.shape[1]:
        raise ValueError(f"s: has {s.shape[1]} columns but a slot's pattern has "
                         f"k = {table.max_k()} entries")
