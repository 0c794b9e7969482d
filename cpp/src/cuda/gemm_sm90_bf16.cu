// CUTLASS 3.x TN GEMM, bfloat16 in/out, float32 accumulate, sm_90a. See gemm_sm90.cuh.
#include "gemm_sm90.cuh"

namespace frod::cuda {
void gemm_tn_sm90_bf16(const GemmTN& p, cudaStream_t stream) {
  Sm90GemmTN<cutlass::bfloat16_t>::run(p, stream);
}
}  // namespace frod::cuda
