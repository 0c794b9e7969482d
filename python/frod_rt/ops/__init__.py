"""FRoD ops: the per-segment rotation custom ops and the multi-adapter linear layer.

Rotation: rotate_segments (raw (rows, cols) pattern; training, tests), rotate_slots (a
SlotPatterns table of per-slot PatternPlans; serving), register_pattern (plan a pattern once).

CUDA-only (builds with CUDA kernels, CUDA tensors): cutlass_linear, fused_frod_linear,
replace_frod_linear, grouped_gemm, check_rotate_indices_cuda.
"""
from .cuda_common import check_rotate_indices_cuda
from .cuda_grouped import grouped_gemm
from .cuda_linear import cutlass_linear, fused_frod_linear, fused_weights, replace_frod_linear
from .linear import frod_linear
from .paged_attention import paged_decode_attention, paged_decode_attention_reference
from .reference import frod_linear_reference, rotate_segments_reference, rotate_slots_reference
from .rotate import rotate_segments, rotate_slots
from .plans import (PatternPlan, PlanTable, SlotPatterns, plan_of, register_pattern,
                    table_of_plans)
from .cuda_fallback import check_cuda_errors
from .segments import segments_from_ids

__all__ = [
    "PatternPlan",
    "PlanTable",
    "SlotPatterns",
    "check_cuda_errors",
    "check_rotate_indices_cuda",
    "cutlass_linear",
    "fused_frod_linear",
    "fused_weights",
    "grouped_gemm",
    "replace_frod_linear",
    "frod_linear",
    "frod_linear_reference",
    "paged_decode_attention",
    "paged_decode_attention_reference",
    "rotate_segments",
    "plan_of",
    "register_pattern",
    "rotate_segments_reference",
    "rotate_slots",
    "rotate_slots_reference",
    "segments_from_ids",
    "table_of_plans",
]
