"""Type stub for the compiled core frod_rt._C (see cpp/bindings/)."""
from typing import Optional, Tuple

TensorView = Tuple[int, int, int, int, Tuple[int, ...], Tuple[int, ...]]

with_cuda: bool
cuda_build_mode: str  # FROD_CUDA at configure time: "AUTO", "ON" or "OFF"

def build_pattern_plan(rows: TensorView, cols: TensorView, n: int, adapter: int,
                       plan_ptr: TensorView, plan_idx: TensorView) -> bool:
    """Validates a (k,) pattern and writes its plan: plan_ptr (2, n+1) CSR/CSC pointers,
    plan_idx (4, k) [csr cols, csr j, csc rows, csc j]; True when sorted by row."""

def rotate_forward(
    z: TensorView,
    seg_indptr: TensorView,
    seg_adapter: TensorView,
    dl: TensorView,
    s: TensorView,
    slot_plan: TensorView,
    plan_meta: TensorView,
    plan_ptr: TensorView,
    plan_idx: TensorView,
    h: TensorView,
    num_threads: int = 1,
    stream: int = 0,
    base_scale: Optional[TensorView] = None,
    error_flags: Optional[TensorView] = None,
) -> None:
    """h[t] = (diag(base + dl[a]) + S_a) z[t] for rows of segments with slot a (S_a from the
    slot's plan, values s[a, :k_a]), 0 elsewhere. base_scale: CUDA only."""

def rotate_backward(
    z: TensorView,
    grad_h: TensorView,
    seg_indptr: TensorView,
    seg_adapter: TensorView,
    dl: TensorView,
    s: TensorView,
    slot_plan: TensorView,
    plan_meta: TensorView,
    plan_ptr: TensorView,
    plan_idx: TensorView,
    grad_z: Optional[TensorView] = None,
    grad_dl: Optional[TensorView] = None,
    grad_s: Optional[TensorView] = None,
    num_threads: int = 1,
    stream: int = 0,
    error_flags: Optional[TensorView] = None,
) -> None:
    """Backward of rotate_forward; writes (CPU) / adds into (CUDA: pass zeros) the present
    adapters' rows of grad_dl / grad_s."""

def validate_segments(seg_indptr: TensorView, seg_adapter: TensorView, T: int, A: int) -> None:
    """ValueError unless the (CPU) segments run monotonically from 0 to T with ids in [-1, A)."""

def segments_from_ids(
    adapter_ids: TensorView, num_adapters: int, seg_indptr: TensorView, seg_adapter: TensorView
) -> int:
    """Runs of equal consecutive ids -> (seg_indptr, seg_adapter); returns the run count."""


# ---- only in builds with CUDA kernels (with_cuda is True); see cpp/bindings/bind_cuda.cpp ----
cuda_architectures: str  # CMAKE_CUDA_ARCHITECTURES, comma-separated

def cuda_device_available() -> bool: ...
def gemm_backend() -> str: ...
def cutlass_gemm_families() -> list[str]: ...
def gemm(a: TensorView, b: TensorView, bias: Optional[TensorView], d: TensorView,
         stream: int = 0) -> None:
    """d (M, N) = a (M, K) @ b (N, K)^T + bias (N,) on CUTLASS (bf16/fp16)."""
def frod_linear_fused(xh: TensorView, vt: TensorView, wu: TensorView, bias: Optional[TensorView],
                      seg_indptr: TensorView, seg_adapter: TensorView, dl: TensorView,
                      s: TensorView, slot_plan: TensorView, plan_meta: TensorView,
                      plan_ptr: TensorView, plan_idx: TensorView, z: TensorView,
                      y: TensorView, error_flags: Optional[TensorView] = None,
                      stream: int = 0) -> None:
    """Z = X V; xh[:, n:] = rotate(Z); y = xh @ wu^T + bias, with X = xh[:, :n]."""
def frod_linear_replace(x: TensorView, vt: TensorView, u: TensorView, l: TensorView,
                        bias: Optional[TensorView], seg_indptr: TensorView,
                        seg_adapter: TensorView, dl: TensorView, s: TensorView,
                        slot_plan: TensorView, plan_meta: TensorView, plan_ptr: TensorView,
                        plan_idx: TensorView, z: TensorView, h: TensorView,
                        y: TensorView, error_flags: Optional[TensorView] = None,
                        stream: int = 0) -> None:
    """Z = X V; H = Z diag(l + dl_a) + S_a Z; y = H U^T + bias."""
def segment_gemm(x: TensorView, weight: TensorView, bias: Optional[TensorView],
                 seg_indptr: TensorView, seg_slot: TensorView, y: TensorView,
                 error_flags: Optional[TensorView] = None, stream: int = 0) -> None:
    """y[seg g] = x[seg g] @ weight[slot[g]]^T + bias for segments with slot >= 0."""

def paged_decode_attention(q: TensorView, k_cache: TensorView, v_cache: TensorView,
                           block_tables: TensorView, ctx_lens: TensorView, out: TensorView,
                           scale: float, num_threads: int) -> None:
    """Decode attention of one query token per sequence straight from a paged KV cache:
    q, out (B, Hq, D); k_cache, v_cache (NB, bs, Hkv, D); block_tables (B, MB) and
    ctx_lens (B,) int64. CPU only (cpp/include/frod/paged_attention.h)."""
