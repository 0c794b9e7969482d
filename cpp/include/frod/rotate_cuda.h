// CUDA entry points of the rotation op (same semantics as frod/rotate.h), torch-free.
//
// All pointers are device pointers, including the segment and pattern index arrays; work is
// enqueued on `stream` (a cudaStream_t passed as void*, null = legacy default stream) on the
// current device, and nothing synchronises (except rotate_validate_cuda).
//
// Index values are never read on the host. Out-of-range entries are skipped by the kernels,
// never used to address memory, and reported in the error word (`error_flags`, a device
// int32 set to the OR of the bits below, or 0; pass null to ignore):
//     1  seg_indptr: an entry outside [0, T], a decreasing pair, or indptr[0] != 0 /
//        indptr[G] != T. A segment whose own range is invalid is skipped (its rows of the
//        output are not written); rows covered by no segment are not written.
//     2  seg_adapter: an id outside [-1, A); that segment is treated as adapter -1 (zeros).
//     4  rows / cols: an entry outside [0, n) or on the diagonal; that entry is ignored.
// With valid inputs every output row is written exactly once, and the forward is bit-for-bit
// deterministic (the pattern is traversed in a fixed order per output element). The backward
// sums d_dl / d_s with float atomics across row tiles: its order of additions can vary from run
// to run (results agree to rounding); dZ is deterministic.
//
// Kernel layout (see docs/cuda.md): one block of 256 threads per tile of R <= 16 rows of one
// segment; the gathered operand's tile sits in shared memory (R * n * sizeof(T) bytes, so n is
// limited to about 100k for 16-bit types on sm_80/sm_90); the pattern is compressed on the
// device per call (CSR for the forward, CSC for the backward; O(P*(n + k)) work, P = 1 for a
// shared pattern, A for per-adapter patterns).
#pragma once

#include <cstdint>

#include "frod/rotate.h"

namespace frod {

/// True when this build has CUDA kernels and a device is visible.
bool cuda_available();

/// H = rotate(Z) on the GPU. Same layouts as rotate_forward_cpu. p.num_threads is ignored.
///
///     for each segment g, a = adapter[g], t in [indptr[g], indptr[g+1]):
///         H[t, :] = 0                                               if a == -1
///         H[t, i] = (base[i] + dl[a, i]) Z[t, i] + sum_{j: rows_j = i} s[a, j] Z[t, cols_j]
///
/// base_scale: optional (n,) vector `base` in the dtype of Z (null = 0). With base = l it gives
/// the *replace* form H = Z diag(l + dl_a) + S_a Z used by frod/linear_cuda.h.
void rotate_forward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dl,
                         const void* s, void* h, int64_t ldh, void* stream,
                         const void* base_scale = nullptr, int32_t* error_flags = nullptr);

/// Backward on the GPU. Same layouts as rotate_backward_cpu; d_dl / d_s rows of present
/// adapters are overwritten (zeroed, then accumulated with atomics in float32 / float64).
/// Rows of adapters absent from the batch are left untouched.
void rotate_backward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                          int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                          void* d_dl, void* d_s, void* stream, int32_t* error_flags = nullptr);

/// Checks the segment and pattern index values of `p` on the device and returns the error
/// bits above (0 = valid). Synchronises `stream`.
int32_t rotate_validate_cuda(const RotateProblem& p, void* stream);

}  // namespace frod
