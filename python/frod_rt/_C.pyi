"""Type stub for the compiled core frod_rt._C (see cpp/bindings/)."""
from typing import Optional, Tuple

TensorView = Tuple[int, int, int, int, Tuple[int, ...], Tuple[int, ...]]

with_cuda: bool

def rotate_forward(
    z: TensorView,
    seg_indptr: TensorView,
    seg_adapter: TensorView,
    dl: TensorView,
    s: TensorView,
    rows: TensorView,
    cols: TensorView,
    h: TensorView,
    num_threads: int = 1,
    stream: int = 0,
) -> None:
    """h[t] = (diag(dl[a]) + S_a) z[t] for rows of segments with adapter a, 0 elsewhere."""

def rotate_backward(
    z: TensorView,
    grad_h: TensorView,
    seg_indptr: TensorView,
    seg_adapter: TensorView,
    dl: TensorView,
    s: TensorView,
    rows: TensorView,
    cols: TensorView,
    grad_z: Optional[TensorView] = None,
    grad_dl: Optional[TensorView] = None,
    grad_s: Optional[TensorView] = None,
    num_threads: int = 1,
    stream: int = 0,
) -> None:
    """Backward of rotate_forward; writes the present adapters' rows of grad_dl / grad_s."""

def segments_from_ids(
    adapter_ids: TensorView, num_adapters: int, seg_indptr: TensorView, seg_adapter: TensorView
) -> int:
    """Runs of equal consecutive ids -> (seg_indptr, seg_adapter); returns the run count."""
