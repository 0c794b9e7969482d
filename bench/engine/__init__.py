"""Engine suite: multi-adapter generation throughput and latency vs PEFT and merging."""
from .suite import run

__all__ = ["run"]
