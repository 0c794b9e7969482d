"""The FRoD method: base decomposition, sparse patterns, trainable layers, adapter files."""
from .adapter_io import (AdapterConfig, AdapterError, AdapterFile, LayerDelta, check_against,
                         read_adapter, write_adapter)
from .decompose import (Category, Decomposition, LayerBasis, category_key, decompose,
                        linear_weight)
from .delta import adapted_weight, delta_weight
from .patterns import LayerPattern, delta_pattern, layer_pattern, pattern_size, sparse_pattern
from .config import FrodConfig
from .layers import FrodLinear
from .model import FrodModel, get_frod_model
from .optim import param_groups

__all__ = [
    "AdapterConfig", "AdapterError", "AdapterFile", "LayerDelta", "check_against",
    "read_adapter", "write_adapter", "Category", "Decomposition", "LayerBasis",
    "category_key", "decompose", "linear_weight", "pattern_size", "sparse_pattern",
    "LayerPattern", "layer_pattern", "delta_pattern", "delta_weight", "adapted_weight",
    "FrodConfig", "FrodLinear", "FrodModel", "get_frod_model", "param_groups",
]
