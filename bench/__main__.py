"""``python -m bench ...``: see :mod:`bench.run`.

Run it from the checkout root with frod_rt installed (``make setup`` / ``pip install .``):
``python -m bench layer --quick``. With an in-tree build (``make dev``), ``PYTHONPATH=python``
selects the checkout's frod_rt instead. A checkout's ``python/`` without the compiled core
(a fresh clone) on the path would hide the installed package; ``_import_frod_rt`` then drops
that directory from ``sys.path`` and imports the installed frod_rt, saying so on stderr.

libgomp (one runtime, shared by torch and frod_rt._C) lets idle threads spin by default,
which starved other work on a shared machine. frod_rt is imported before torch so that its
default (a bounded spin, GOMP_SPINCOUNT=20000) applies unless the caller chose a policy;
the environment is recorded in every JSON.
"""
import sys
from pathlib import Path


def _import_frod_rt() -> None:
    """Import frod_rt; when the checkout's python/ is on the path but holds no compiled core,
    import the installed package instead (see the module docstring)."""
    src = (Path(__file__).resolve().parent.parent / "python").resolve()
    shadowing = [p for p in sys.path if Path(p or ".").resolve() == src]
    if shadowing and not any((src / "frod_rt").glob("_C*.so")) and not any((src / "frod_rt").glob("_C*.pyd")):
        sys.path[:] = [p for p in sys.path if p not in shadowing]
        print(f"[bench] {src} holds no compiled frod_rt core: using the installed frod_rt",
              file=sys.stderr)
    import frod_rt  # noqa: F401  (sets the OpenMP wait default before torch loads)


_import_frod_rt()

from .run import main  # noqa: E402

sys.exit(main())
