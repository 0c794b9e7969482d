"""Command line: ``python -m bench <layer|engine|train|all> [--quick] [--device cpu|cuda] [--out DIR]``.

Each suite run writes ``<out>/<suite>-<device>-<YYYYmmdd-HHMMSS>.json`` (see
:mod:`bench.results`) and its PNG plots next to it, and prints the headline numbers.
``--tiny`` runs a seconds-long configuration that only checks the harness (used by the tests).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path

import torch

from .machine import machine_info
from .results import Results

SUITES = ("layer", "engine", "train")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("suite", choices=SUITES + ("all",))
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sweeps (minutes on 2 CPU cores)")
    size.add_argument("--tiny", action="store_true", help="seconds-long harness check, not a benchmark")
    size.add_argument("--medium", action="store_true",
                      help="engine suite only: the ~50M-parameter model of issue 13 (slow on CPU)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="output folder (default: bench/results)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return ap.parse_args(argv)


def run_suite(suite: str, device: str, mode: str, out_dir: Path, command: str = "") -> Path:
    """Run one suite and write its JSON; returns the JSON path."""
    mod = importlib.import_module(f"bench.{suite}")
    res = Results(suite, device, quick=(mode != "full"), machine=machine_info(device),
                  settings={"mode": mode, "command": command})
    mod.run(res, device, mode, out_dir)
    path = res.save(out_dir)
    print(f"[bench] {suite}: wrote {path}")
    for p in res.doc["plots"]:
        print(f"[bench] {suite}: plot {out_dir / p}")
    print(f"[bench] {suite} headline: {json.dumps(res.doc['headline'], indent=1)}")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("python -m bench: --device cuda requested but torch sees no CUDA device",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # PEFT FRoD builds a sparse COO tensor in every forward; torch warns each time
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    warnings.filterwarnings("ignore", category=FutureWarning)
    mode = "tiny" if args.tiny else "quick" if args.quick else "medium" if args.medium else "full"
    if mode == "medium" and args.suite != "engine":
        print("python -m bench: --medium exists for the engine suite only", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    for suite in (SUITES if args.suite == "all" else (args.suite,)):
        run_suite(suite, args.device, mode, out_dir, "python -m bench " + " ".join(
            sys.argv[1:] if argv is None else argv))
    return 0
