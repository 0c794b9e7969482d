"""Training suite: N adapters in one mixed batch (frod_rt) vs N sequential PEFT FRoD runs."""
from .suite import run

__all__ = ["run"]
