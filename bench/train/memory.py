"""Peak memory of a region: CUDA allocator peak on GPU, process peak RSS (VmHWM) on CPU."""
from __future__ import annotations

from pathlib import Path

import torch


def _vm(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.result()`` ->
    {"peak_bytes", "start_bytes", "kind"}. On CPU the kernel's high-water mark is reset
    through /proc/self/clear_refs (Linux); where that is impossible ``kind`` says so."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "process_peak_rss"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = "process_peak_rss_since_start"
            self.start = _vm("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _vm("VmHWM")
        return False

    def result(self) -> dict:
        return {"peak_bytes": self.peak, "start_bytes": self.start, "kind": self.kind}


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers of ``model`` (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
