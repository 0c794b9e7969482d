"""FRoD ops: the per-segment rotation custom op and the multi-adapter linear layer."""
from .linear import frod_linear
from .reference import frod_linear_reference, rotate_segments_reference
from .rotate import rotate_segments
from .segments import segments_from_ids

__all__ = [
    "frod_linear",
    "frod_linear_reference",
    "rotate_segments",
    "rotate_segments_reference",
    "segments_from_ids",
]
