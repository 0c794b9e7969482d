// CUDA entry points of the rotation op (same semantics as frod/rotate.h), torch-free.
//
// All pointers are device pointers, including the segment and pattern index arrays; work is
// enqueued on `stream` (a cudaStream_t passed as void*) and nothing synchronises.
// Index values are not read on the host: out-of-range segment or pattern entries are
// skipped by the kernels and reported through the returned error flag array when given
// (see rotate_validate_cuda), never written out of bounds.
#pragma once

#include <cstdint>

#include "frod/rotate.h"

namespace frod {

/// True when this build has CUDA kernels and a device is visible.
bool cuda_available();

/// H = rotate(Z) on the GPU. Same layouts as rotate_forward_cpu. p.num_threads is ignored.
void rotate_forward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dl,
                         const void* s, void* h, int64_t ldh, void* stream);

/// Backward on the GPU. Same layouts as rotate_backward_cpu; d_dl / d_s rows of present
/// adapters are overwritten (accumulated with atomics in float32 / float64).
void rotate_backward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                          int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                          void* d_dl, void* d_s, void* stream);

}  // namespace frod
