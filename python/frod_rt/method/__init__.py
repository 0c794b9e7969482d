"""The FRoD method: base decomposition, sparse patterns, trainable layers, adapter files."""
from .adapter_io import (AdapterConfig, AdapterError, AdapterFile, LayerDelta, check_against,
                         read_adapter, write_adapter)
from .decompose import (Category, Decomposition, LayerBasis, category_key, decompose,
                        linear_weight)
from .patterns import pattern_size, sparse_pattern

__all__ = [
    "AdapterConfig", "AdapterError", "AdapterFile", "LayerDelta", "check_against",
    "read_adapter", "write_adapter", "Category", "Decomposition", "LayerBasis",
    "category_key", "decompose", "linear_weight", "pattern_size", "sparse_pattern",
]
