// The multi-adapter FRoD linear layer on CUDA (DESIGN.md section 2), torch-free.
//
// A batch of T rows, cut into segments as in frod/rotate.h (rot.seg, rot.plans, dl, s); the
// layer has n inputs and `out` outputs, base weight W (out, n), bias b (out,) or none, shared
// basis V (n, n), U (out, n) and scales l (n,) with W = U diag(l) V^T. dtype bfloat16 or
// float16 (rot.dtype); every GEMM accumulates in float32 (see frod/gemm_cuda.h for the shape
// requirements: n and out multiples of 8, 16-byte aligned pointers and leading dimensions).
// Nothing synchronises; all pointers are device pointers.
#pragma once

#include <cstdint>

#include "frod/rotate.h"

namespace frod {

/// Fused form: one GEMM with concatenated K after Z = X V.
///
///     xh  : (T, 2n), leading dim ldxh >= 2n; the caller puts X in xh[:, :n]
///     vt  : (n, n)   = V^T, row-major (so both GEMMs read K-contiguous operands)
///     wu  : (out, 2n) = [W | U], row-major, leading dim ldwu >= 2n
///     z   : (T, n)   workspace, leading dim n
///     y   : (T, out), leading dim ldy
///
///     Z            = X @ V                       # GEMM (T, n, K=n)
///     xh[:, n:2n]  = H = rotate(Z)               # per segment, 0 for adapter -1
///     Y            = xh @ wu^T + b               # GEMM (T, out, K=2n)  == X W^T + H U^T + b
struct FusedLinearArgs {
  RotateProblem rot;  ///< T, n, A, kcap, segments, plan table, dtype
  int64_t out = 0;
  void* xh = nullptr;
  int64_t ldxh = 0;
  const void* vt = nullptr;
  const void* wu = nullptr;
  int64_t ldwu = 0;
  const void* bias = nullptr;
  const void* dl = nullptr;  ///< (A, n)
  const void* s = nullptr;   ///< (A, k)
  void* z = nullptr;
  void* y = nullptr;
  int64_t ldy = 0;
};
void frod_linear_fused_cuda(const FusedLinearArgs& a, void* stream, int32_t* error_flags = nullptr);

/// Replace form for adapted rows: W is not used, since W' = U (diag(l + dl) + S) V^T.
///
///     x   : (T, n), leading dim ldx;  vt: (n, n) = V^T;  u: (out, n) = U;  l: (n,)
///     z, h: (T, n) workspaces, leading dim n;  y: (T, out), leading dim ldy
///
///     Z = X @ V                                   # GEMM (T, n, K=n)
///     H[t] = Z[t] * (l + dl_a) + S_a Z[t]         # rows of adapter -1: H = 0 (so Y = b)
///     Y = H @ U^T + b                             # GEMM (T, out, K=n)
///
/// Meant for rows that all have an adapter (the engine runs base rows through W), so every row
/// of an adapter gets the same arithmetic whatever else is in the batch.
struct ReplaceLinearArgs {
  RotateProblem rot;
  int64_t out = 0;
  const void* x = nullptr;
  int64_t ldx = 0;
  const void* vt = nullptr;
  const void* u = nullptr;
  const void* l = nullptr;
  const void* bias = nullptr;
  const void* dl = nullptr;
  const void* s = nullptr;
  void* z = nullptr;
  void* h = nullptr;
  void* y = nullptr;
  int64_t ldy = 0;
};
void frod_linear_replace_cuda(const ReplaceLinearArgs& a, void* stream,
                              int32_t* error_flags = nullptr);

}  // namespace frod
