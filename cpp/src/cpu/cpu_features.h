// Run-time CPU feature checks shared by the ISA dispatchers.
#pragma once

namespace frod::cpu {

/// True when the AVX2+FMA kernels were built and this CPU runs them (FROD_CPU_ISA=generic
/// in the environment forces the generic kernels).
bool has_avx2_fma();

}  // namespace frod::cpu
