"""Layer suite: one adapted linear layer under many adapters, every contender vs the GEMM floor."""
from .suite import run

__all__ = ["run"]
