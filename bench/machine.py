"""Describe the machine and software a benchmark ran on (recorded in every JSON)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    """Installed version of a distribution (without importing it), None if absent."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _frod_rt_version() -> str | None:
    try:
        import frod_rt
        return frod_rt.__version__
    except ImportError:
        return None


def machine_info(device: str) -> dict:
    """CPU model, cores, torch threads, GPU name, library versions and git commit."""
    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "frod_rt": _frod_rt_version(),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "git_commit": _git_commit(),
        "device": device,
        "gpu": None,
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT",
                                           "MKL_NUM_THREADS") if k in os.environ},
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import frod_rt
        info["frod_rt_cuda_kernels"] = bool(frod_rt.cuda_kernels_built())
    except Exception:  # noqa: BLE001
        info["frod_rt_cuda_kernels"] = None
    return info
