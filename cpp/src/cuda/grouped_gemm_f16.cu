// CUTLASS 2.x grouped TN GEMM, float16, float32 accumulate. See grouped_gemm.cuh.
#include "grouped_gemm.cuh"

namespace frod::cuda {
void grouped_gemm_tn_f16(const GroupedGemmTN& p, cudaStream_t stream) {
  GroupedGemmTN_<cutlass::half_t>::run(p, stream);
}
}  // namespace frod::cuda
