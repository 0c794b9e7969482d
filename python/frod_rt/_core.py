"""Loading of the compiled core ``frod_rt._C`` and the tensor -> view conversion.

The C++ core is torch-free: every tensor crosses the boundary as a plain tuple
``(data_ptr, dtype_code, device_type, device_index, shape, strides)`` (see
``cpp/bindings/tensor_arg.h``).
"""
from __future__ import annotations

import torch

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "frod_rt's compiled core (frod_rt._C) is missing: install the package with "
        "`pip install .` (or `make dev`) so the C++ extension gets built"
    ) from exc

DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int32: 4,
    torch.int64: 5,
}
_DEVICE_CODES = {"cpu": 1, "cuda": 2}


def view(t: torch.Tensor) -> tuple:
    """Describe ``t`` for the C++ core: (ptr, dtype, device type, device index, shape, strides)."""
    code = DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"frod_rt kernels do not support dtype {t.dtype}")
    dev = _DEVICE_CODES.get(t.device.type)
    if dev is None:
        raise TypeError(f"frod_rt kernels do not support device {t.device}")
    return (t.data_ptr(), code, dev, t.device.index or 0, tuple(t.shape), t.stride())


def contiguous(*tensors: torch.Tensor | None) -> tuple:
    """Contiguous versions of the tensors (None stays None).

    Callers must bind the results to names that live until the C++ call returns: ``view()``
    of a temporary keeps only its data pointer, and the copy would be freed (and its memory
    reused) before the kernel reads it.
    """
    return tuple(None if t is None else t.contiguous() for t in tensors)


def stream_of(t: torch.Tensor) -> int:
    """The current CUDA stream handle for ``t``'s device (0 on CPU)."""
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def cuda_kernels_built() -> bool:
    """True when this build of frod_rt contains the CUDA kernels."""
    return bool(getattr(_C, "with_cuda", False))
