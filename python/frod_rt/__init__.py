"""frod_rt: train and serve many FRoD adapters on one shared base model.

Public surface (more arrives with the method, engine and server modules):
    frod_rt.ops.rotate_segments   per-segment rotation (torch.library custom op)
    frod_rt.ops.frod_linear       multi-adapter FRoD linear layer
"""
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
