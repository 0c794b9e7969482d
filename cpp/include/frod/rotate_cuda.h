// CUDA entry points of the rotation op (same semantics as frod/rotate.h), torch-free.
//
// All pointers are device pointers, including the segment indices and the plan table
// (frod/pattern_plan.h, uploaded once per pattern); work is enqueued on `stream` (a
// cudaStream_t passed as void*, null = legacy default stream) on the current device (the
// bindings make the tensors' device current), and nothing synchronises or allocates: one
// kernel launch per call.
//
// Index values are never read on the host. Bad values are skipped by the kernels, never used
// to address memory, and reported by OR-ing bits into the error word (`error_flags`, a device
// int32 the caller owns and clears; null = not reported):
//     1  seg_indptr: not from 0 to T, decreasing, or a row in no valid segment (that row is
//        written as zeros).
//     2  seg_adapter: an id outside [-1, A); the segment's rows are written as zeros.
//     4  slot_plan: a slot's plan outside [-1, P), or its k > kcap / entries outside the
//        table; the segment's rows are written as zeros.
// With valid inputs every output row is written exactly once, and the forward is bit-for-bit
// deterministic and batch invariant. The backward adds d_dl / d_s with float atomics across
// pieces (the caller zeroes them first): the order of additions can vary from run to run
// (results agree to rounding); dZ is deterministic.
//
// Kernel layout (docs/cuda.md): block b owns R <= 16 consecutive rows, walked in pieces of one
// segment each; a piece's gathered operand sits in shared memory (R * n * sizeof(T) bytes, so
// n is limited to about 100k for 16-bit types on sm_80/sm_90).
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

/// Backward on the GPU. Same layouts as rotate_backward_cpu, except that d_dl / d_s are
/// *accumulated into* (atomics in float32 / float64): pass them zeroed. Rows of adapters
/// absent from the batch are left untouched.
void rotate_backward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                          int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                          void* d_dl, void* d_s, void* stream, int32_t* error_flags = nullptr);

}  // namespace frod
