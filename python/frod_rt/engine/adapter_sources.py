"""What ``Engine.add_adapter`` accepts, turned into a frod_rt adapter directory that fits
the base model.

* a frod_rt adapter directory whose layers are the base's: used as it is;
* a frod_rt adapter trained on the same backbone under a task-model prefix (``bert.`` of
  ``BertForSequenceClassification`` against ``BertModel``, or the reverse): names mapped
  (:func:`frod_rt.method.adapter_fit.fit_adapter_to_model`) and written to ``work_dir``;
* a PEFT FRoD directory (``adapter_config.json`` with ``peft_type: FROD``): imported on load
  (:func:`frod_rt.interop.import_peft`, ``basis="auto"``) and written to ``work_dir``: in
  frod_rt's basis when it maps within the importer's tolerance (it then batches with native
  adapters), else exactly in PEFT's basis, whose decomposition is saved next to it
  (``<dir>/decomposition/``) and served as a basis of its own (:func:`saved_basis`).

An adapter of another model raises the one AdapterError "adapter 'x' was trained for
<model>, this base is <model>: ..." before anything is decomposed.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import torch

from ..method.adapter_io import BASIS_DIR, CONFIG_NAME, AdapterError, read_adapter, write_adapter

PEFT_CONFIG_NAME = "adapter_config.json"
BASIS_TOL = 1e-3                     # largest relative reconstruction error of a saved basis


def is_peft_dir(path: Path) -> bool:
    """True for a PEFT-format adapter directory that is not a frod_rt adapter directory."""
    return (path / PEFT_CONFIG_NAME).is_file() and not (path / CONFIG_NAME).is_file()


def prepare_adapter_dir(name: str, path: Path, model, work_dir: Path,
                        cache_dir=None) -> tuple[Path, object]:
    """The frod_rt adapter directory to register for ``path`` (``path`` itself, or a converted
    copy under ``work_dir``) and the adapter file already parsed from it when there is one
    (so the manager does not read it again; None otherwise). Raises AdapterError /
    FileNotFoundError for a bad adapter."""
    path = Path(path)
    if is_peft_dir(path):
        from ..interop.peft import import_peft
        # decomposes the adapter's layers in frod_rt's basis (cached per category on disk, so
        # the same categories the engine serves)
        res = import_peft(path, model, basis="auto", name=name, cache_dir=cache_dir)
        out = Path(work_dir) / f"adapter-{uuid.uuid4().hex}"
        res.save(out)                  # with its decomposition when kept in PEFT's basis
        return out, None
    if not (path / CONFIG_NAME).is_file():
        return path, None                     # read_adapter in the manager names the problem
    from ..method.adapter_fit import fit_adapter_to_model
    adapter = read_adapter(path, name=name)
    fitted = fit_adapter_to_model(adapter, model)
    if fitted is adapter:
        return path, adapter
    return _write(fitted, work_dir, name), fitted


def _write(adapter, work_dir: Path, name: str) -> Path:
    out = Path(work_dir) / f"adapter-{uuid.uuid4().hex}"
    write_adapter(adapter, out)
    return out


def saved_basis(path: Path, model):
    """The decomposition saved with the adapter in ``path`` (``path/decomposition``,
    ``Decomposition.save``), or None when there is none. Raises AdapterError when it does not
    reconstruct ``model``'s weights (``|U diag(l) V^T - W| / |W|`` above ``BASIS_TOL`` for some
    layer): it belongs to another base."""
    from ..method.basis import Decomposition
    from ..method.categories import linear_weight
    where = Path(path) / BASIS_DIR
    if not (where / "decomposition.json").is_file():
        return None
    try:
        d = Decomposition.load(where)
    except (OSError, ValueError) as e:
        raise AdapterError(f"{where}: unreadable decomposition ({e})") from e
    modules = dict(model.named_modules())
    for name, b in d.layers.items():
        m = modules.get(name)
        if m is None:
            raise AdapterError(f"{where}: layer {name!r} is not in this base")
        W = linear_weight(m).detach().to("cpu", torch.float64)
        R = (b.U.double() * b.l.double()) @ d.categories[b.category].V.double().T
        err = float(torch.linalg.norm(R - W) / torch.linalg.norm(W).clamp_min(1e-300))
        if not err <= BASIS_TOL:
            raise AdapterError(f"{where}: this basis does not reconstruct the base's layer "
                               f"{name!r} (relative error {err:.1e}): it belongs to another base")
    return d
