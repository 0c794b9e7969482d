"""``frod-rt bench ...``: runs the benchmarks of a source checkout (``python -m bench``).

Every argument after ``bench`` is passed through. The ``bench`` package lives in the
repository, not in the installed wheel: run this from a checkout (the current directory or
the checkout this frod_rt was imported from)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks (python -m bench) of a source checkout",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("args", nargs="*", help="passed to python -m bench")


def find_checkout() -> Path | None:
    """The directory holding ``bench/__init__.py`` or ``bench/__main__.py``: the current
    directory, else the source checkout of this frod_rt (python/frod_rt/cli -> root)."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), here.parents[3] if len(here.parents) > 3 else None):
        if root is not None and ((root / "bench" / "__main__.py").is_file()
                                 or (root / "bench" / "__init__.py").is_file()):
            return root
    return None


def run_passthrough(argv: list[str]) -> int:
    root = find_checkout()
    if root is None:
        print("frod-rt bench: error: no bench package found (run from a frod_rt source "
              "checkout, where bench/ lives; it is not part of the installed package)",
              file=sys.stderr)
        return 2
    if not (root / "bench" / "__main__.py").is_file() and argv[:1] in (["-h"], ["--help"]):
        print(f"frod-rt bench: runs `python -m bench ARGS...` in {root}")
    env = dict(os.environ)
    py = str(root / "python")
    env["PYTHONPATH"] = py + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.call([sys.executable, "-m", "bench", *argv], cwd=root, env=env)
