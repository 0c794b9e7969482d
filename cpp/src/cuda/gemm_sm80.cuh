// CUTLASS 2.x "TN" GEMM for sm_80 (mma.sync tensor cores, cp.async multistage pipeline).
// Included by one .cu file per element type; see gemm_kernels.h for the semantics.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm.h>

#include "cuda_utils.h"
#include "gemm_kernels.h"

namespace frod::cuda {

template <typename Element>  // cutlass::bfloat16_t or cutlass::half_t
struct Sm80GemmTN {
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 8 elements = 16 B
  using Gemm = cutlass::gemm::device::Gemm<
      Element, cutlass::layout::RowMajor,     // A: (M, K) row-major (activations)
      Element, cutlass::layout::ColumnMajor,  // B: (K, N) column-major == torch weight (N, K)
      Element, cutlass::layout::RowMajor,     // C (bias, ldc = 0 broadcasts it) and D (M, N)
      float,                                  // accumulator type
      cutlass::arch::OpClassTensorOp,         // tensor cores
      cutlass::arch::Sm80,                    // mma.sync.m16n8k16 + cp.async
      cutlass::gemm::GemmShape<128, 128, 32>, // threadblock tile (M, N, K)
      cutlass::gemm::GemmShape<64, 64, 32>,   // warp tile: 2 x 2 warps = 128 threads
      cutlass::gemm::GemmShape<16, 8, 16>,    // mma instruction shape for 16-bit inputs
      cutlass::epilogue::thread::LinearCombination<
          Element,                            // output element
          kAlign,                             // elements per vectorised store (16 B)
          float,                              // accumulator
          float>,                             // alpha/beta compute type: D = acc + 1 * bias
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>,  // raster in groups of 8
      4,                                      // pipeline stages (4 x 16 KB smem)
      kAlign,                                 // alignment of A (elements)
      kAlign>;                                // alignment of B (elements)

  static void run(const GemmTN& p, cudaStream_t stream) {
    using Ref = cutlass::TensorRef<Element, cutlass::layout::RowMajor>;
    using RefB = cutlass::TensorRef<Element const, cutlass::layout::ColumnMajor>;
    using RefA = cutlass::TensorRef<Element const, cutlass::layout::RowMajor>;
    Element* d = static_cast<Element*>(p.d);
    const Element* bias = static_cast<const Element*>(p.bias);
    // Bias: C = bias with row stride 0, beta = 1 (cf. CUTLASS example 12_gemm_bias_relu).
    const float beta = bias ? 1.0f : 0.0f;
    typename Gemm::Arguments args(
        {p.M, p.N, p.K},
        RefA(static_cast<const Element*>(p.a), p.lda),
        RefB(static_cast<const Element*>(p.b), p.ldb),
        bias ? cutlass::TensorRef<Element const, cutlass::layout::RowMajor>(bias, 0)
             : cutlass::TensorRef<Element const, cutlass::layout::RowMajor>(d, p.ldd),
        Ref(d, p.ldd),
        {1.0f, beta});
    Gemm gemm;
    cutlass::Status st = gemm.can_implement(args);
    if (st != cutlass::Status::kSuccess)
      throw InvalidArgument(concat("gemm (sm80): CUTLASS cannot run M=", p.M, " N=", p.N, " K=",
                                   p.K, ": ", cutlassGetStatusString(st)));
    st = gemm.initialize(args, nullptr, stream);
    if (st != cutlass::Status::kSuccess)
      throw std::runtime_error(concat("gemm (sm80): initialize failed: ", cutlassGetStatusString(st)));
    st = gemm.run(stream);
    if (st != cutlass::Status::kSuccess)
      throw std::runtime_error(concat("gemm (sm80): launch failed: ", cutlassGetStatusString(st)));
  }
};

}  // namespace frod::cuda
