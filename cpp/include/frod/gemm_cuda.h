// Dense GEMM on CUTLASS for the FRoD linear layers, torch-free (device pointers + stream).
//
//     D (M, N) = A (M, K) @ B (N, K)^T  [+ bias (N,) added to every row]
//
// All three matrices are row-major with unit inner stride and leading dimensions lda, ldb, ldd
// (elements): this is torch's F.linear(A, B, bias) with B a weight of shape (out, in). One
// dtype for A, B, bias and D: bfloat16 or float16; products accumulate in float32 and are
// rounded once to the output dtype.
//
// Kernels: CUTLASS 3.x TMA + wgmma (warp-specialised cooperative, persistent) on sm_90a;
// CUTLASS 2.x mma.sync multistage on sm_80 / sm_86 / sm_89. Other architectures raise.
//
// Requirements (InvalidArgument otherwise): K > 0; K, N, lda, ldb, ldd multiples of 8 and the
// pointers 16-byte aligned (16-byte vector / TMA loads). M may be anything >= 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "frod/tensor_view.h"

namespace frod {

struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  DType dtype = DType::bf16;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  const void* bias = nullptr;  ///< (N,) or null
  void* d = nullptr;
  int64_t ldd = 0;
};

/// Enqueues D = A @ B^T (+ bias) on `stream` (cudaStream_t as void*), current device.
void gemm_tn_cuda(const GemmProblem& p, void* stream);

/// Throws InvalidArgument / TypeError when `p` does not meet the requirements above; `what`
/// names the GEMM in the message (e.g. "Z = X V").
void check_gemm_problem(const GemmProblem& p, const char* what);

/// Name of the kernel family gemm_tn_cuda picks on the current device ("cutlass3x_sm90a_tma_wgmma"
/// or "cutlass2x_sm80_mma_sync"); throws on devices without one.
const char* gemm_backend_name();

/// The dense GEMM families compiled into this build: "sm80_cutlass2x", "sm90a_cutlass3x".
std::vector<std::string> cutlass_gemm_families();

}  // namespace frod
