"""Helpers shared by the ``frod-rt`` commands: bad-input errors, model loading, options."""
from __future__ import annotations

import argparse
from pathlib import Path


class CLIError(Exception):
    """Bad input: ``main`` prints ``frod-rt <command>: error: <message>`` and exits with 2."""


# exceptions that mean "the user gave bad input" (printed as one line, exit code 2)
BAD_INPUT = (CLIError, ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError,
             IsADirectoryError, PermissionError)


def existing_dir(value: str, what: str) -> Path:
    p = Path(value).expanduser()
    if not p.exists():
        raise CLIError(f"{what} not found: {p}")
    if not p.is_dir():
        raise CLIError(f"{what} is not a directory: {p}")
    return p


def adapter_spec(value: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named by the directory's basename) -> (name, path)."""
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name, value
    if not name or not path:
        raise CLIError(f"--adapter {value!r}: expected NAME=DIR or DIR")
    return name, existing_dir(path, f"adapter {name!r} directory")


def adapter_specs(values) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values or []:
        name, path = adapter_spec(v)
        if name in out:
            raise CLIError(f"--adapter: the name {name!r} is given twice")
        out[name] = path
    return out


def torch_dtype(name: str | None):
    """'float32' / 'bf16' / ... -> torch dtype (None stays None = the model's own)."""
    if name is None:
        return None
    import torch
    alias = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
             "fp64": "float64", "double": "float64"}
    dt = getattr(torch, alias.get(name, name), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise CLIError(f"--dtype {name!r}: expected float32, float16, bfloat16 or float64")
    return dt


def load_hf_model(path: Path, dtype=None):
    """A Hugging Face model directory with the class named in its config's
    ``architectures`` (falls back to AutoModelForCausalLM, then AutoModel)."""
    import transformers
    try:
        cfg = transformers.AutoConfig.from_pretrained(path)
    except Exception as e:               # noqa: BLE001 - not a model directory
        raise CLIError(f"{path}: not a Hugging Face model directory ({e})") from None
    kw = {"dtype": dtype} if dtype is not None else {}
    for arch in getattr(cfg, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls.from_pretrained(path, **kw)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(path, **kw)
    except ValueError:
        return transformers.AutoModel.from_pretrained(path, **kw)


def load_tokenizer(path: Path):
    import transformers
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except Exception as e:               # noqa: BLE001
        raise CLIError(f"{path}: no usable tokenizer in the model directory ({e})") from None


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``serve`` and ``generate`` that configure the Engine."""
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument("--dtype", default=None,
                   help="model dtype: float32, float16, bfloat16 (default: the model's)")
    p.add_argument("--cache-dir", default=None,
                   help="decomposition cache (default: $FROD_RT_CACHE or ~/.cache/frod_rt)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="running requests at most")
    p.add_argument("--max-batch-tokens", type=int, default=2048, help="tokens per step at most")
    p.add_argument("--kv-cache-tokens", type=int, default=16384, help="KV cache capacity")
    p.add_argument("--device-adapter-capacity", type=int, default=16,
                   help="adapters resident on the device at once (others are evicted LRU)")


def engine_limits(args) -> dict:
    return {"max_num_seqs": args.max_num_seqs, "max_batch_tokens": args.max_batch_tokens,
            "kv_cache_tokens": args.kv_cache_tokens,
            "device_adapter_capacity": args.device_adapter_capacity,
            "cache_dir": args.cache_dir, "progress": True}


def load_engine(base: str, adapters: dict, args, **extra):
    from ..engine import Engine
    base_dir = existing_dir(base, "base model directory")
    return Engine.load(base_dir, adapters=adapters or None, device=args.device,
                       dtype=torch_dtype(args.dtype), **engine_limits(args), **extra)
