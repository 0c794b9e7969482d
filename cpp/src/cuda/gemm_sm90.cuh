// CUTLASS 3.x "TN" GEMM for sm_90a: TMA loads, wgmma, warp-specialised cooperative kernel with
// a persistent tile scheduler; the bias is added in the epilogue (per-column broadcast).
// Included by one .cu file per element type; see gemm_kernels.h for the semantics.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>

#include "cuda_utils.h"
#include "gemm_kernels.h"

namespace frod::cuda {

template <typename Element>  // cutlass::bfloat16_t or cutlass::half_t
struct Sm90GemmTN {
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 8 = 16 bytes (TMA)
  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_64>;  // CTA tile (M, N, K)
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;    // no multicast: any M

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90,                             // architecture
      cutlass::arch::OpClassTensorOp,                  // tensor cores
      TileShape, ClusterShape,                         // as the mainloop
      cutlass::epilogue::collective::EpilogueTileAuto, // epilogue sub-tile picked by CUTLASS
      float,                                           // accumulator type
      float,                                           // epilogue compute type
      void, cutlass::layout::RowMajor, kAlign,         // C: none (no source operand read)
      Element, cutlass::layout::RowMajor, kAlign,      // D: (M, N) row-major
      cutlass::epilogue::TmaWarpSpecializedCooperative,// TMA-store epilogue for the coop kernel
      cutlass::epilogue::fusion::LinCombPerColBias<    // D = alpha * acc + bias[n]
          Element,                                     //   output element
          float,                                       //   compute element
          Element>                                     //   bias element (null pointer -> 0)
      >::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90,                             // architecture
      cutlass::arch::OpClassTensorOp,                  // tensor cores (wgmma)
      Element, cutlass::layout::RowMajor, kAlign,      // A: (M, K), K contiguous
      Element, cutlass::layout::ColumnMajor, kAlign,   // B: (K, N) col-major == weight (N, K)
      float,                                           // accumulator
      TileShape, ClusterShape,                         // tiles as above
      cutlass::gemm::collective::StageCountAutoCarveout<  // as many smem stages as fit next
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,  // to the epilogue
      cutlass::gemm::KernelTmaWarpSpecializedCooperative  // 2 consumer warpgroups + 1 producer
      >::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<
      cute::Shape<int, int, int, int>,  // problem shape (M, N, K, L=batch)
      CollectiveMainloop, CollectiveEpilogue>;  // default: persistent tile scheduler
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  static void run(const GemmTN& p, cudaStream_t stream) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(p.M, p.K, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(p.N, p.K, 1));
    StrideC sc = cutlass::make_cute_packed_stride(StrideC{}, cute::make_shape(p.M, p.N, 1));
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(p.M, p.N, 1));
    cute::get<0>(sa) = p.lda;  // leading dimensions of possibly padded / sliced operands
    cute::get<0>(sb) = p.ldb;
    cute::get<0>(sd) = p.ldd;

    const int device = current_device();
    cutlass::KernelHardwareInfo hw;
    hw.device_id = device;
    hw.sm_count = multiprocessor_count(device);

    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.M, p.N, p.K, 1},
        {static_cast<const Element*>(p.a), sa, static_cast<const Element*>(p.b), sb},
        {{}, nullptr, sc, static_cast<Element*>(p.d), sd},
        hw};
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = 0.0f;
    args.epilogue.thread.bias_ptr = static_cast<const Element*>(p.bias);

    Gemm gemm;
    cutlass::Status st = gemm.can_implement(args);
    if (st != cutlass::Status::kSuccess)
      throw InvalidArgument(concat("gemm (sm90): CUTLASS cannot run M=", p.M, " N=", p.N, " K=",
                                   p.K, ": ", cutlassGetStatusString(st)));
    StreamBuffer workspace(Gemm::get_workspace_size(args), stream);
    st = gemm.initialize(args, workspace.as<void>(), stream);
    if (st != cutlass::Status::kSuccess)
      throw std::runtime_error(concat("gemm (sm90): initialize failed: ", cutlassGetStatusString(st)));
    st = gemm.run(stream);
    if (st != cutlass::Status::kSuccess)
      throw std::runtime_error(concat("gemm (sm90): launch failed: ", cutlassGetStatusString(st)));
  }
};

}  // namespace frod::cuda
