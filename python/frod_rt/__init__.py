"""frod_rt: train and serve many FRoD adapters on one shared base model.

Public surface:
    frod_rt.ops                   rotate_segments (torch.library custom op), frod_linear, ...
    frod_rt.decompose, FrodConfig, get_frod_model, FrodModel   the FRoD method
    frod_rt.read_adapter, write_adapter, AdapterError          adapter files
    frod_rt.Engine, SamplingParams                             multi-adapter serving
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules and not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(_os.environ)):
    # Idle OpenMP threads spin for a bounded time, then sleep. libgomp's default spin
    # (300k iterations) made serving ~70x slower on a machine whose cores are busy with other
    # work, and OMP_WAIT_POLICY=PASSIVE made it ~3x slower on an idle one (wake-ups); 20k
    # spins kept most of both (docs/architecture.md, "Threads: OpenMP waits"). Only takes
    # effect when frod_rt is imported before torch and the user chose no policy.
    _os.environ["GOMP_SPINCOUNT"] = "20000"

from . import ops
from ._core import cuda_kernels_built

__version__ = "0.1.0"

__all__ = ["ops", "cuda_kernels_built", "__version__"]

# The FRoD method (decomposition, trainable layers, adapter files).
from .method import (AdapterError, Decomposition, FrodConfig, FrodModel, decompose,  # noqa: E402
                     get_frod_model, read_adapter, write_adapter)

__all__ += ["decompose", "Decomposition", "FrodConfig", "get_frod_model", "FrodModel",
            "read_adapter", "write_adapter", "AdapterError"]

# serving engine (python/frod_rt/engine; transformers is imported lazily)
from .engine import Engine, SamplingParams  # noqa: E402

__all__ += ["Engine", "SamplingParams"]
