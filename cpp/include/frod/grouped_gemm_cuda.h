// Segment-grouped GEMM on CUTLASS for rows of hot adapters with merged weights
// (DESIGN.md section 2, "merged" variant), torch-free.
//
//     x      : (T, K) row-major, leading dim ldx
//     weight : (num_weights, N, K) contiguous: weight[w] = W'_w = W + U (diag(dl) + S) V^T
//     bias   : (N,) or null
//     indptr : (G+1,) int32, slot: (G,) int32 in [-1, num_weights)   (device arrays)
//     y      : (T, N), leading dim ldy
//
//     for g in 0..G-1:
//         if slot[g] >= 0:
//             y[indptr[g]:indptr[g+1], :] = x[indptr[g]:indptr[g+1], :] @ weight[slot[g]]^T + bias
//     rows of segments with slot -1 are not written (they belong to another path)
//
// One GEMM problem per segment, all run by one CUTLASS 2.x GemmGrouped launch (device-side
// problem visitor, so the segment sizes are never read on the host); float32 accumulate;
// bfloat16 / float16. Requirements as frod/gemm_cuda.h (K, N, ldx, ldy multiples of 8).
// Invalid segments (range outside [0, T] or slot outside [-1, num_weights)) are skipped and set
// bit 1 / 2 of *error_flags (device int32) when given.
#pragma once

#include <cstdint>

#include "frod/tensor_view.h"

namespace frod {

struct SegmentGemmArgs {
  int64_t T = 0, K = 0, N = 0, num_weights = 0, num_segments = 0;
  DType dtype = DType::bf16;
  const int32_t* indptr = nullptr;
  const int32_t* slot = nullptr;
  const void* x = nullptr;
  int64_t ldx = 0;
  const void* weight = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;
  int64_t ldy = 0;
};

void segment_gemm_cuda(const SegmentGemmArgs& a, void* stream, int32_t* error_flags = nullptr);

}  // namespace frod
