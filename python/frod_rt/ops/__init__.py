"""FRoD ops: the per-segment rotation custom op and the multi-adapter linear layer.

CUDA-only (builds with CUDA kernels, CUDA tensors): cutlass_linear, fused_frod_linear,
replace_frod_linear, grouped_gemm, check_rotate_indices_cuda.
"""
from .cuda_common import check_rotate_indices_cuda
from .cuda_grouped import grouped_gemm
from .cuda_linear import cutlass_linear, fused_frod_linear, fused_weights, replace_frod_linear
from .linear import frod_linear
from .reference import frod_linear_reference, rotate_segments_reference
from .rotate import rotate_segments
from .segments import segments_from_ids

__all__ = [
    "check_rotate_indices_cuda",
    "cutlass_linear",
    "fused_frod_linear",
    "fused_weights",
    "grouped_gemm",
    "replace_frod_linear",
    "frod_linear",
    "frod_linear_reference",
    "rotate_segments",
    "rotate_segments_reference",
    "segments_from_ids",
]
