"""What ``Engine.add_adapter`` accepts, turned into a frod_rt adapter directory that fits
the base model.

* a frod_rt adapter directory whose layers are the base's: used as it is;
* a frod_rt adapter trained on the same backbone under a task-model prefix (``bert.`` of
  ``BertForSequenceClassification`` against ``BertModel``, or the reverse): names mapped
  (:func:`frod_rt.method.adapter_fit.fit_adapter_to_model`) and written to ``work_dir``;
* a PEFT FRoD directory (``adapter_config.json`` with ``peft_type: FROD``): imported on load
  (:func:`frod_rt.interop.import_peft`) in frod_rt's basis of the base and written to
  ``work_dir``; refused when its basis does not map onto frod_rt's within the importer's
  tolerance.

An adapter of another model raises the one AdapterError "adapter 'x' was trained for
<model>, this base is <model>: ..." before anything is decomposed.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from ..method.adapter_io import CONFIG_NAME, AdapterError, read_adapter, write_adapter

PEFT_CONFIG_NAME = "adapter_config.json"


def is_peft_dir(path: Path) -> bool:
    """True for a PEFT-format adapter directory that is not a frod_rt adapter directory."""
    return (path / PEFT_CONFIG_NAME).is_file() and not (path / CONFIG_NAME).is_file()


def prepare_adapter_dir(name: str, path: Path, model, work_dir: Path, cache_dir=None) -> Path:
    """The frod_rt adapter directory to register for ``path`` (``path`` itself, or a converted
    copy under ``work_dir``). Raises AdapterError / FileNotFoundError for a bad adapter."""
    path = Path(path)
    if is_peft_dir(path):
        from ..interop.peft import import_peft
        # decomposes the adapter's layers in frod_rt's basis (cached per category on disk, so
        # the same categories the engine serves)
        res = import_peft(path, model, basis="frod_rt", name=name, cache_dir=cache_dir)
        return _write(res.adapter, work_dir, name)
    if not (path / CONFIG_NAME).is_file():
        return path                           # read_adapter in the manager names the problem
    from ..method.adapter_fit import fit_adapter_to_model
    adapter = read_adapter(path, name=name)
    fitted = fit_adapter_to_model(adapter, model)
    return path if fitted is adapter else _write(fitted, work_dir, name)


def _write(adapter, work_dir: Path, name: str) -> Path:
    out = Path(work_dir) / f"adapter-{uuid.uuid4().hex}"
    write_adapter(adapter, out)
    return out
