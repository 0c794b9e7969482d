"""Reading a PEFT-format FRoD adapter directory (upstream PEFT and the official research
code, which is a PEFT fork, save the same layout)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..method.adapter_io import AdapterError


def read_peft_frod_dir(path: Path, flavour: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (adapter_config.json as a dict, state dict) of a FRoD adapter directory.

    ``flavour`` ("PEFT", "official FRoD") names the format in error messages. Raises
    FileNotFoundError for a missing directory or file, AdapterError for a config that is not
    valid JSON or not ``peft_type: FROD``, and for unreadable weights.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{flavour} adapter directory not found: {path}")
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing (not a {flavour} adapter directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "")).upper() != "FROD":
        raise AdapterError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}, expected 'FROD'")
    st, pt = path / "adapter_model.safetensors", path / "adapter_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            sd = load_file(str(st))
        elif pt.is_file():
            sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{path}: neither adapter_model.safetensors nor "
                                    "adapter_model.bin found")
    except FileNotFoundError:
        raise
    except Exception as e:
        raise AdapterError(f"{path}: adapter weights are unreadable ({e})") from e
    return cfg, sd


def split_lambda_tensors(sd: dict[str, torch.Tensor], prefix: str, l_name: str, s_name: str,
                         where: str) -> tuple[dict, dict, list[str]]:
    """Split a PEFT-format FRoD state dict into per-layer tensors.

    Keys ``<prefix><layer>.<l_name>`` and ``<prefix><layer>.<s_name>`` give (lambda by layer,
    s values by layer); every other key is returned, in order, as the third item. Raises
    AdapterError naming ``where`` when there are no lambda tensors or a layer lacks one of
    the two.
    """
    lam, sv, rest = {}, {}, []
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith("." + l_name):
            lam[k[len(prefix):-len(l_name) - 1]] = v
        elif k.startswith(prefix) and k.endswith("." + s_name):
            sv[k[len(prefix):-len(s_name) - 1]] = v
        else:
            rest.append(k)
    if not lam:
        raise AdapterError(f"{where}: no '{l_name}' tensors found")
    if set(lam) != set(sv):
        raise AdapterError(f"{where}: layers without both {l_name} and {s_name}: "
                           f"{sorted(set(lam) ^ set(sv))[:5]}")
    return lam, sv, rest
