// frod::segment_gemm_cuda: builds one grouped-GEMM problem per segment on the device and runs
// the CUTLASS grouped GEMM. Semantics in frod/grouped_gemm_cuda.h.
#include <cutlass/gemm_coord.h>

#include "cuda_utils.h"
#include "frod/gemm_cuda.h"
#include "frod/grouped_gemm_cuda.h"
#include "gemm_kernels.h"

namespace frod {
namespace cuda {
namespace {

/// Problem g: rows [indptr[g], indptr[g+1]) of x times weight[slot[g]]^T into the same rows of
/// y; M_g = 0 for slot -1 and for invalid segments (flagged).
__global__ void build_problems_kernel(SegmentGemmArgs a, size_t esz,
                                      cutlass::gemm::GemmCoord* __restrict__ sizes,
                                      void** __restrict__ pa, void** __restrict__ pb,
                                      void** __restrict__ pc, void** __restrict__ pd,
                                      int64_t* __restrict__ lda, int64_t* __restrict__ ldb,
                                      int64_t* __restrict__ ldc, int64_t* __restrict__ ldd,
                                      int32_t* __restrict__ err) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= a.num_segments) return;
  const int64_t lo = a.indptr[g], hi = a.indptr[g + 1];
  int32_t w = a.slot[g];
  int64_t m = hi - lo;
  if (lo < 0 || hi < lo || hi > a.T) {
    if (err) atomicOr(err, 1);
    m = 0;
  }
  if (w < -1 || w >= a.num_weights) {
    if (err) atomicOr(err, 2);
    w = -1;
  }
  if (w < 0) m = 0;
  const int64_t row0 = m > 0 ? lo : 0;
  const int64_t wi = w > 0 ? w : 0;
  sizes[g] = cutlass::gemm::GemmCoord(static_cast<int>(m), static_cast<int>(a.N),
                                      static_cast<int>(a.K));
  pa[g] = const_cast<char*>(static_cast<const char*>(a.x)) + row0 * a.ldx * esz;
  pb[g] = const_cast<char*>(static_cast<const char*>(a.weight)) + wi * a.N * a.K * esz;
  pd[g] = static_cast<char*>(a.y) + row0 * a.ldy * esz;
  pc[g] = a.bias ? const_cast<void*>(a.bias) : pd[g];
  lda[g] = a.ldx;
  ldb[g] = a.K;
  ldc[g] = a.bias ? 0 : a.ldy;
  ldd[g] = a.ldy;
}

}  // namespace
}  // namespace cuda

void segment_gemm_cuda(const SegmentGemmArgs& a, void* stream_ptr, int32_t* error_flags) {
  using namespace cuda;
  GemmProblem shape;  // the per-segment GEMMs share N, K, dtype and leading dimensions
  shape.M = a.T; shape.N = a.N; shape.K = a.K; shape.dtype = a.dtype;
  shape.a = a.x; shape.lda = a.ldx; shape.b = a.weight; shape.ldb = a.K;
  shape.bias = a.bias; shape.d = a.y; shape.ldd = a.ldy;
  check_gemm_problem(shape, "segment_gemm");
  FROD_CHECK_ARG(a.num_segments >= 0 && a.num_weights >= 0, "segment_gemm: negative count");
  FROD_CHECK_ARG(a.num_segments < (int64_t(1) << 31), "segment_gemm: too many segments");
  FROD_CHECK_ARG(a.indptr != nullptr && (a.num_segments == 0 || a.slot != nullptr),
                 "segment_gemm: null seg_indptr / slot");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cuda::StreamDeviceGuard device_guard(stream);
  if (error_flags) FROD_CUDA_CHECK(cudaMemsetAsync(error_flags, 0, sizeof(int32_t), stream));
  const int64_t G = a.num_segments;
  if (G == 0 || a.T == 0 || a.num_weights == 0) return;
  const size_t ptrs = align256(G * sizeof(void*));
  const size_t lds = align256(G * sizeof(int64_t));
  const size_t sizes = align256(G * sizeof(cutlass::gemm::GemmCoord));
  StreamBuffer buf(sizes + 4 * ptrs + 4 * lds, stream);
  auto* sz = buf.as<cutlass::gemm::GemmCoord>(0);
  void** pa = buf.as<void*>(sizes);
  void** pb = buf.as<void*>(sizes + ptrs);
  void** pc = buf.as<void*>(sizes + 2 * ptrs);
  void** pd = buf.as<void*>(sizes + 3 * ptrs);
  int64_t* lda = buf.as<int64_t>(sizes + 4 * ptrs);
  int64_t* ldb = buf.as<int64_t>(sizes + 4 * ptrs + lds);
  int64_t* ldc = buf.as<int64_t>(sizes + 4 * ptrs + 2 * lds);
  int64_t* ldd = buf.as<int64_t>(sizes + 4 * ptrs + 3 * lds);
  constexpr int kThreads = 128;
  build_problems_kernel<<<static_cast<unsigned>((G + kThreads - 1) / kThreads), kThreads, 0,
                          stream>>>(a, static_cast<size_t>(dtype_size(a.dtype)), sz, pa, pb, pc,
                                    pd, lda, ldb, ldc, ldd, error_flags);
  FROD_CUDA_CHECK_LAUNCH("segment_gemm: build_problems_kernel");
  GroupedGemmTN g;
  g.count = static_cast<int>(G);
  g.problem_sizes = sz;
  g.ptr_a = pa; g.ptr_b = pb; g.ptr_c = pc; g.ptr_d = pd;
  g.lda = lda; g.ldb = ldb; g.ldc = ldc; g.ldd = ldd;
  g.has_bias = a.bias != nullptr;
  if (a.dtype == DType::bf16) grouped_gemm_tn_bf16(g, stream); else grouped_gemm_tn_f16(g, stream);
}

}  // namespace frod
