// CUTLASS 2.x grouped "TN" GEMM (GemmGrouped, mma.sync tensor cores) with a device-side
// problem visitor: the problem sizes live in device memory only. Built for every listed
// architecture (the sm_80 mma.sync path also runs on sm_90). Included by one .cu per dtype.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_grouped.h>
#include <cutlass/gemm/kernel/default_gemm_grouped.h>

#include "cuda_utils.h"
#include "gemm_kernels.h"

namespace frod::cuda {

template <typename Element>  // cutlass::bfloat16_t or cutlass::half_t
struct GroupedGemmTN_ {
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 8 = 16 bytes
  using GemmKernel = typename cutlass::gemm::kernel::DefaultGemmGrouped<
      Element, cutlass::layout::RowMajor,      // A: x rows of the segment (M_g, K)
      cutlass::ComplexTransform::kNone, kAlign,
      Element, cutlass::layout::ColumnMajor,   // B: (K, N) column-major == weight[w] (N, K)
      cutlass::ComplexTransform::kNone, kAlign,
      Element, cutlass::layout::RowMajor,      // C (bias, ldc = 0) and D: y rows (M_g, N)
      float,                                   // accumulator
      cutlass::arch::OpClassTensorOp,          // tensor cores
      cutlass::arch::Sm80,                     // mma.sync + cp.async (runs on sm_80 .. sm_90)
      cutlass::gemm::GemmShape<128, 128, 32>,  // threadblock tile
      cutlass::gemm::GemmShape<64, 64, 32>,    // warp tile (4 warps)
      cutlass::gemm::GemmShape<16, 8, 16>,     // mma instruction
      cutlass::epilogue::thread::LinearCombination<Element, kAlign, float, float>,  // acc + bias
      cutlass::gemm::threadblock::GemmBatchedIdentityThreadblockSwizzle,  // required by grouped
      4,                                       // pipeline stages
      cutlass::gemm::kernel::GroupScheduleMode::kDeviceOnly  // sizes read on the device only
      >::GemmKernel;
  using Gemm = cutlass::gemm::device::GemmGrouped<GemmKernel>;

  static void run(const GroupedGemmTN& p, cudaStream_t stream) {
    if (p.count == 0) return;
    const int device = current_device();
    const int per_sm = Gemm::maximum_active_blocks();
    if (per_sm <= 0) throw std::runtime_error("grouped gemm: kernel does not fit on this device");
    const int blocks = per_sm * multiprocessor_count(device);
    typename Gemm::EpilogueOutputOp::Params epilogue(1.0f, p.has_bias ? 1.0f : 0.0f);
    typename Gemm::Arguments args(
        static_cast<cutlass::gemm::GemmCoord*>(p.problem_sizes), p.count, blocks, epilogue,
        reinterpret_cast<Element**>(p.ptr_a), reinterpret_cast<Element**>(p.ptr_b),
        reinterpret_cast<Element**>(p.ptr_c), reinterpret_cast<Element**>(p.ptr_d), p.lda, p.ldb,
        p.ldc, p.ldd, /*host_problem_sizes=*/nullptr);
    Gemm gemm;
    StreamBuffer workspace(gemm.get_workspace_size(args), stream);
    cutlass::Status st = gemm.initialize(args, workspace.as<void>(), stream);
    if (st != cutlass::Status::kSuccess)
      throw std::runtime_error(concat("grouped gemm: initialize failed: ", cutlassGetStatusString(st)));
    st = gemm.run(stream);
    if (st != cutlass::Status::kSuccess)
      throw std::runtime_error(concat("grouped gemm: launch failed: ", cutlassGetStatusString(st)));
  }
};

}  // namespace frod::cuda
