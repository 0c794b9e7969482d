"""Interop with other FRoD implementations.

- :mod:`frod_rt.interop.peft`: import/export adapters of upstream PEFT's FRoD tuner
  (``import_peft``, ``export_peft``).
- :mod:`frod_rt.interop.official`: import checkpoints of the official research code
  (``import_official``), reproducing its forward output.

See docs/interop.md.
"""
from .official import OfficialImport, import_official
from .peft import PeftImport, export_peft, import_peft

__all__ = ["PeftImport", "import_peft", "export_peft", "OfficialImport", "import_official"]
