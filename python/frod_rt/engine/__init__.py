"""The multi-tenant serving engine (see docs/engine.md)."""
from .engine import Engine
from .errors import EngineOverloadedError, RequestTooLargeError, UnknownAdapterError
from .outputs import CompletionOutput, GenerationResult, RequestOutput
from .sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "RequestOutput", "CompletionOutput", "GenerationResult",
           "UnknownAdapterError", "EngineOverloadedError", "RequestTooLargeError"]
