// CUTLASS 2.x TN GEMM, float16 in/out, float32 accumulate, sm_80. See gemm_sm80.cuh.
#include "gemm_sm80.cuh"

namespace frod::cuda {
void gemm_tn_sm80_f16(const GemmTN& p, cudaStream_t stream) {
  Sm80GemmTN<cutlass::half_t>::run(p, stream);
}
}  // namespace frod::cuda
