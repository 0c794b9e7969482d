// ISA-specific CPU rotation kernels. rotate_kernels.cpp is compiled once per ISA
// (generic x86-64 / any CPU, and AVX2+FMA) into the namespaces declared here;
// rotate_cpu.cpp picks one at run time from the CPU's features.
#pragma once

#include <cstdint>

#include "frod/rotate.h"
#include "rotate_plan.h"

#define FROD_DECLARE_ROTATE_KERNELS(NS)                                                        \
  namespace NS {                                                                               \
  void forward(const RotateProblem& p, const RotatePlan& plan, const void* z, int64_t ldz,     \
               const void* dl, const void* s, void* h, int64_t ldh);                           \
  void backward(const RotateProblem& p, const RotatePlan& plan, const void* z, int64_t ldz,    \
                const void* dh, int64_t lddh, const void* dl, const void* s, void* dz,         \
                int64_t lddz, void* d_dl, void* d_s);                                          \
  }

namespace frod::cpu {
FROD_DECLARE_ROTATE_KERNELS(generic)
FROD_DECLARE_ROTATE_KERNELS(avx2)
}  // namespace frod::cpu
