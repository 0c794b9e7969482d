// The fused and replace forms of the multi-adapter FRoD linear layer: CUTLASS GEMMs around the
// rotation kernel. Semantics in frod/linear_cuda.h.
#include "cuda_utils.h"
#include "frod/gemm_cuda.h"
#include "frod/linear_cuda.h"
#include "frod/rotate_cuda.h"

namespace frod {
namespace {

void check_rot(const RotateProblem& p, const char* what) {
  FROD_CHECK_TYPE(p.dtype == DType::bf16 || p.dtype == DType::f16, what,
                  ": bfloat16 or float16 only, got ", dtype_name(p.dtype));
  FROD_CHECK_ARG(p.n > 0, what, ": n must be > 0");
}

GemmProblem gemm(const RotateProblem& r, int64_t M, int64_t N, int64_t K, const void* a,
                 int64_t lda, const void* b, int64_t ldb, const void* bias, void* d,
                 int64_t ldd) {
  GemmProblem g;
  g.M = M; g.N = N; g.K = K; g.dtype = r.dtype;
  g.a = a; g.lda = lda; g.b = b; g.ldb = ldb; g.bias = bias; g.d = d; g.ldd = ldd;
  return g;
}

}  // namespace

void frod_linear_fused_cuda(const FusedLinearArgs& a, void* stream, int32_t* error_flags) {
  const RotateProblem& r = a.rot;
  check_rot(r, "frod_linear_fused");
  FROD_CHECK_ARG(a.ldxh >= 2 * r.n, "xh: leading dimension ", a.ldxh, " < 2n = ", 2 * r.n);
  const size_t esz = static_cast<size_t>(dtype_size(r.dtype));
  char* h = static_cast<char*>(a.xh) + static_cast<size_t>(r.n) * esz;  // xh[:, n:]
  const GemmProblem g1 = gemm(r, r.T, r.n, r.n, a.xh, a.ldxh, a.vt, r.n, nullptr, a.z, r.n);
  const GemmProblem g2 = gemm(r, r.T, a.out, 2 * r.n, a.xh, a.ldxh, a.wu, a.ldwu, a.bias, a.y,
                              a.ldy);
  check_gemm_problem(g1, "frod_linear_fused: Z = X V");
  check_gemm_problem(g2, "frod_linear_fused: Y = [X|H] [W|U]^T");
  gemm_tn_cuda(g1, stream);
  rotate_forward_cuda(r, a.z, r.n, a.dl, a.s, h, a.ldxh, stream, nullptr, error_flags);
  gemm_tn_cuda(g2, stream);
}

void frod_linear_replace_cuda(const ReplaceLinearArgs& a, void* stream, int32_t* error_flags) {
  const RotateProblem& r = a.rot;
  check_rot(r, "frod_linear_replace");
  FROD_CHECK_ARG(a.l != nullptr, "l: null pointer");
  const GemmProblem g1 = gemm(r, r.T, r.n, r.n, a.x, a.ldx, a.vt, r.n, nullptr, a.z, r.n);
  const GemmProblem g2 = gemm(r, r.T, a.out, r.n, a.h, r.n, a.u, r.n, a.bias, a.y, a.ldy);
  check_gemm_problem(g1, "frod_linear_replace: Z = X V");
  check_gemm_problem(g2, "frod_linear_replace: Y = H U^T");
  gemm_tn_cuda(g1, stream);
  rotate_forward_cuda(r, a.z, r.n, a.dl, a.s, a.h, r.n, stream, a.l, error_flags);
  gemm_tn_cuda(g2, stream);
}

}  // namespace frod
