// frod::gemm_tn_cuda: validates a GEMM problem and picks the CUTLASS instantiation for the
// current device (sm_90 -> CUTLASS 3.x, sm_8x -> CUTLASS 2.x). Which instantiations exist is
// decided at configure time (FROD_HAVE_SM80_GEMM / FROD_HAVE_SM90_GEMM, from
// CMAKE_CUDA_ARCHITECTURES).
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_utils.h"
#include "frod/gemm_cuda.h"
#include "gemm_kernels.h"

namespace frod {
namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

enum class Backend { sm80, sm90 };

Backend pick_backend() {
  const int cc = cuda::compute_capability(cuda::current_device());
#ifdef FROD_HAVE_SM90_GEMM
  if (cc == 90) return Backend::sm90;
#endif
#ifdef FROD_HAVE_SM80_GEMM
  if (cc >= 80 && cc < 90) return Backend::sm80;
#endif
  throw TypeError(concat("frod_rt CUDA GEMM: no kernel for compute capability ", cc / 10, ".",
                         cc % 10, " in this build (built for:"
#ifdef FROD_HAVE_SM80_GEMM
                         " sm_80"
#endif
#ifdef FROD_HAVE_SM90_GEMM
                         " sm_90a"
#endif
                         ")"));
}

}  // namespace

namespace cuda {
bool have_sm90_gemm() {
#ifdef FROD_HAVE_SM90_GEMM
  return true;
#else
  return false;
#endif
}
bool have_sm80_gemm() {
#ifdef FROD_HAVE_SM80_GEMM
  return true;
#else
  return false;
#endif
}
}  // namespace cuda

std::vector<std::string> cutlass_gemm_families() {
  std::vector<std::string> out;
  if (cuda::have_sm80_gemm()) out.emplace_back("sm80_cutlass2x");
  if (cuda::have_sm90_gemm()) out.emplace_back("sm90a_cutlass3x");
  return out;
}

void check_gemm_problem(const GemmProblem& p, const char* what) {
  FROD_CHECK_TYPE(p.dtype == DType::bf16 || p.dtype == DType::f16, what,
                  ": the CUDA GEMMs take bfloat16 or float16, got ", dtype_name(p.dtype));
  FROD_CHECK_ARG(p.M >= 0 && p.N >= 0 && p.K > 0, what, ": bad sizes M=", p.M, " N=", p.N,
                 " K=", p.K);
  FROD_CHECK_ARG(p.M < (int64_t(1) << 31) && p.N < (int64_t(1) << 31) && p.K < (int64_t(1) << 31),
                 what, ": sizes must be < 2^31");
  FROD_CHECK_ARG(p.K % 8 == 0 && p.N % 8 == 0, what, ": K = ", p.K, " and N = ", p.N,
                 " must be multiples of 8 (16-byte vector loads)");
  FROD_CHECK_ARG(p.lda >= p.K && p.ldb >= p.K && p.ldd >= p.N, what,
                 ": leading dimensions too small (lda=", p.lda, " ldb=", p.ldb, " ldd=", p.ldd, ")");
  FROD_CHECK_ARG(p.lda % 8 == 0 && p.ldb % 8 == 0 && p.ldd % 8 == 0, what,
                 ": leading dimensions must be multiples of 8 (lda=", p.lda, " ldb=", p.ldb,
                 " ldd=", p.ldd, ")");
  FROD_CHECK_ARG(aligned16(p.a) && aligned16(p.b) && aligned16(p.d) &&
                     (p.bias == nullptr || aligned16(p.bias)),
                 what, ": operands must be 16-byte aligned");
}

const char* gemm_backend_name() {
  return pick_backend() == Backend::sm90 ? "cutlass3x_sm90a_tma_wgmma" : "cutlass2x_sm80_mma_sync";
}

void gemm_tn_cuda(const GemmProblem& p, void* stream_ptr) {
  check_gemm_problem(p, "gemm");
  if (p.M == 0 || p.N == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cuda::StreamDeviceGuard device_guard(stream);
  cuda::GemmTN g;
  g.M = static_cast<int>(p.M);
  g.N = static_cast<int>(p.N);
  g.K = static_cast<int>(p.K);
  g.a = p.a;
  g.lda = p.lda;
  g.b = p.b;
  g.ldb = p.ldb;
  g.bias = p.bias;
  g.d = p.d;
  g.ldd = p.ldd;
  const Backend be = pick_backend();
  const bool bf16 = p.dtype == DType::bf16;
#ifdef FROD_HAVE_SM90_GEMM
  if (be == Backend::sm90) {
    if (bf16) cuda::gemm_tn_sm90_bf16(g, stream); else cuda::gemm_tn_sm90_f16(g, stream);
    return;
  }
#endif
#ifdef FROD_HAVE_SM80_GEMM
  if (be == Backend::sm80) {
    if (bf16) cuda::gemm_tn_sm80_bf16(g, stream); else cuda::gemm_tn_sm80_f16(g, stream);
    return;
  }
#endif
  (void)be;
  (void)bf16;
}

}  // namespace frod
