// Internal declarations of the CUTLASS GEMM instantiations (one per .cu file, so they compile
// in parallel and a change to one does not rebuild the others). Semantics in
// frod/gemm_cuda.h; the dispatch by architecture lives in gemm_dispatch.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace frod::cuda {

/// One "TN" GEMM, all row-major with unit inner stride:
///     D (M, N) = A (M, K) @ B (N, K)^T + bias (N,) broadcast over rows (bias may be null).
/// A, B, D, bias share one 16-bit dtype; accumulation in float32.
/// Requirements (checked by the dispatcher): K, N, lda, ldb, ldd multiples of 8; pointers
/// 16-byte aligned.
struct GemmTN {
  int M = 0, N = 0, K = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  const void* bias = nullptr;
  void* d = nullptr;
  int64_t ldd = 0;
};

/// Grouped "TN" GEMM with every array on the device (count problems):
///     for g: D_g (M_g, N_g) = A_g (M_g, K_g) @ B_g (N_g, K_g)^T + bias (N_g,)
/// problem_sizes is cutlass::gemm::GemmCoord[count] (M, N, K ints); ptr_* and ld* are arrays
/// of count pointers / int64 leading dimensions. bias (single, shared by all problems) may be
/// null. Problems with M_g == 0 do nothing.
struct GroupedGemmTN {
  int count = 0;
  void* problem_sizes = nullptr;  // cutlass::gemm::GemmCoord*
  void** ptr_a = nullptr;
  void** ptr_b = nullptr;
  void** ptr_c = nullptr;  // bias pointer per problem, or D when no bias
  void** ptr_d = nullptr;
  int64_t* lda = nullptr;
  int64_t* ldb = nullptr;
  int64_t* ldc = nullptr;  // 0 (bias broadcast) or ldd
  int64_t* ldd = nullptr;
  bool has_bias = false;
};

// CUTLASS 2.x, mma.sync (sm_80 and newer binaries of the same major; built for 8.x).
void gemm_tn_sm80_bf16(const GemmTN& p, cudaStream_t stream);
void gemm_tn_sm80_f16(const GemmTN& p, cudaStream_t stream);
// CUTLASS 3.x, TMA + wgmma warp-specialised (sm_90a only).
void gemm_tn_sm90_bf16(const GemmTN& p, cudaStream_t stream);
void gemm_tn_sm90_f16(const GemmTN& p, cudaStream_t stream);
// CUTLASS 2.x GemmGrouped (built for every listed architecture; mma.sync).
void grouped_gemm_tn_bf16(const GroupedGemmTN& p, cudaStream_t stream);
void grouped_gemm_tn_f16(const GroupedGemmTN& p, cudaStream_t stream);

/// True when this library contains the sm_90a CUTLASS 3.x GEMMs / the sm_80 CUTLASS 2.x GEMMs.
bool have_sm90_gemm();
bool have_sm80_gemm();

}  // namespace frod::cuda
