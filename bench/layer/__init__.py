"""Layer suite: one adapted linear layer under many adapters, every contender vs the single
base GEMM and the 3-GEMM floor."""
from .suite import run

__all__ = ["run"]
