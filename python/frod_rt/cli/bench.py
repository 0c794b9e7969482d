"""``frod-rt bench ...``: runs the benchmarks of a source checkout (``python -m bench``).

Every argument after ``bench`` is passed through. The ``bench`` package lives in the
repository, not in the installed wheel: run this from anywhere inside a checkout (the
nearest directory above the current one that holds ``bench/``), or have frod_rt imported
from a checkout's ``python/`` tree. The benchmark imports the same frod_rt as this command:
the installed package, or the in-tree one when this command itself runs from ``python/``
(``make dev``); a checkout's ``python/`` without the compiled core never shadows the
installed package."""
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


def _has_bench(root: Path) -> bool:
    return (root / "bench" / "__main__.py").is_file() or (root / "bench" / "__init__.py").is_file()


def find_checkout(start: Path | None = None) -> Path | None:
    """The checkout holding ``bench/``: the first of ``start`` (default: the current
    directory) and its parents that holds ``bench/__main__.py`` or ``bench/__init__.py``,
    else the source checkout of this frod_rt (python/frod_rt/cli -> root), else None."""
    start = (start or Path.cwd()).resolve()
    for root in (start, *start.parents):
        if _has_bench(root):
            return root
    here = Path(__file__).resolve()
    if len(here.parents) > 3 and _has_bench(here.parents[3]):
        return here.parents[3]
    return None


def child_pythonpath(root: Path, env_path: str | None) -> str | None:
    """PYTHONPATH for the benchmark process: ``root/python`` first only when the frod_rt
    running this command was imported from there (an in-tree build with its compiled core);
    otherwise the caller's PYTHONPATH unchanged, so the installed frod_rt is used."""
    import frod_rt
    src = (root / "python").resolve()
    if Path(frod_rt.__file__).resolve().parent.parent == src:
        return str(src) + (os.pathsep + env_path if env_path else "")
    return env_path


def run_passthrough(argv: list[str]) -> int:
    root = find_checkout()
    if root is None:
        print("frod-rt bench: error: no bench package found (run from inside a frod_rt source "
              "checkout, where bench/ lives; it is not part of the installed package)",
              file=sys.stderr)
        return 2
    if not (root / "bench" / "__main__.py").is_file() and argv[:1] in (["-h"], ["--help"]):
        print(f"frod-rt bench: runs `python -m bench ARGS...` in {root}")
    env = dict(os.environ)
    path = child_pythonpath(root, env.get("PYTHONPATH"))
    if path:
        env["PYTHONPATH"] = path
    else:
        env.pop("PYTHONPATH", None)
    return subprocess.call([sys.executable, "-m", "bench", *argv], cwd=root, env=env)
