"""The build contains the CUDA kernels whenever nvcc and nvidia-cutlass were available.

Runs WITHOUT a GPU: it proves on CI that the CUDA sources (rotation kernels and the CUTLASS
sm_80 / sm_90a GEMMs) compiled and were linked into frod_rt._C.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import struct

import pytest
import torch

import frod_rt
from frod_rt import _C


def _nvcc() -> str | None:
    cand = os.environ.get("CUDACXX") or shutil.which("nvcc")
    if cand is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        cand = "/usr/local/cuda/bin/nvcc"
    return cand


def _toolchain_present() -> bool:
    return _nvcc() is not None and importlib.util.find_spec("cutlass_library") is not None


def test_cuda_kernels_built_when_toolchain_present():
    mode = getattr(_C, "cuda_build_mode", "AUTO")
    if mode == "OFF":
        pytest.skip("frod_rt._C was configured with FROD_CUDA=OFF")
    if not _toolchain_present():
        pytest.skip("no nvcc or nvidia-cutlass here: a CPU-only build is expected")
    assert _C.with_cuda, "nvcc and nvidia-cutlass are present but frod_rt._C has no CUDA kernels"
    assert frod_rt.cuda_kernels_built()
    for name in ("gemm", "frod_linear_fused", "frod_linear_replace", "segment_gemm",
                 "rotate_forward", "rotate_backward", "build_pattern_plan"):
        assert hasattr(_C, name), f"frod_rt._C lacks the CUDA binding {name}"


def _fatbin_cubins(path: str, kind_wanted: int = 2) -> set[int]:
    """SM versions of the ELF cubins (kind 2; PTX: kind 1) embedded in a shared object's CUDA
    fat binaries.

    Fat binary layout (as written by nvcc's fatbinary): a header (magic 0xBA55ED50, u16 version,
    u16 header size, u64 payload size) followed by entries (u16 kind: 1 PTX / 2 ELF, u16, u32
    header size, u64 payload size, ..., u32 SM version at byte 28).
    """
    data = open(path, "rb").read()
    magic = struct.pack("<I", 0xBA55ED50)
    sms: set[int] = set()
    pos = data.find(magic)
    while pos >= 0:
        _, hsize, fsize = struct.unpack_from("<HHQ", data, pos + 4)
        p, end = pos + hsize, pos + hsize + fsize
        while p < end and p + 32 <= len(data):
            kind, _, ehsize, psize = struct.unpack_from("<HHIQ", data, p)
            if ehsize == 0:
                break
            if kind == kind_wanted:
                sms.add(struct.unpack_from("<I", data, p + 28)[0])
            p += ehsize + psize
        pos = data.find(magic, pos + 4)
    return sms


def test_cuda_binary_has_code_for_every_architecture():
    if not getattr(_C, "with_cuda", False):
        pytest.skip("CPU-only build")
    archs = [a for a in _C.cuda_architectures.split(",") if a]
    assert archs, "no CUDA architectures recorded"
    sms = _fatbin_cubins(_C.__file__)
    ptx = _fatbin_cubins(_C.__file__, kind_wanted=1)
    for arch in archs:
        sm = int("".join(ch for ch in arch.split("-")[0] if ch.isdigit()))
        if arch.endswith("-virtual"):  # PTX only, JIT-compiled on newer GPUs
            assert sm in ptx, f"no compute_{sm} PTX in {_C.__file__} (found {sorted(ptx)})"
        else:
            assert sm in sms, f"no sm_{sm} cubin in {_C.__file__} (found {sorted(sms)})"
    families = set(_C.cutlass_gemm_families())
    if any(a.startswith("90a") for a in archs):
        assert "sm90a_cutlass3x" in families
    if any(a.startswith("8") for a in archs):
        assert "sm80_cutlass2x" in families


def test_cuda_ops_reject_cpu_tensors():
    x = torch.zeros(3, 8, dtype=torch.bfloat16)
    w = torch.zeros(8, 8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="CUDA"):
        frod_rt.ops.cutlass_linear(x, w)
    seg = torch.tensor([0, 3], dtype=torch.int32)
    ad = torch.tensor([0], dtype=torch.int32)
    dl = torch.zeros(1, 8, dtype=torch.bfloat16)
    s = torch.zeros(1, 2, dtype=torch.bfloat16)
    rc = torch.tensor([0, 1], dtype=torch.int32)
    vt, wu = frod_rt.ops.fused_weights(w, w, w)
    with pytest.raises(TypeError, match="CUDA"):
        frod_rt.ops.fused_frod_linear(x, vt, wu, None, seg, ad, dl, s, rc, rc)
    with pytest.raises(TypeError, match="CUDA"):
        frod_rt.ops.replace_frod_linear(x, vt, w, dl[0], None, seg, ad, dl, s, rc, rc)
    with pytest.raises(TypeError, match="CUDA"):
        frod_rt.ops.grouped_gemm(x, w[None], None, seg, ad)
