// Public CPU entry points of the rotation op: validate, plan, dispatch to the best ISA.
#include <cstdlib>

#include "frod/rotate.h"
#include "cpu_features.h"
#include "rotate_kernels.h"
#include "rotate_plan.h"

namespace frod {

bool cpu::has_avx2_fma() {
#if defined(__x86_64__) && defined(FROD_HAVE_AVX2_KERNELS)
  static const bool ok = [] {
    if (const char* env = std::getenv("FROD_CPU_ISA"); env && std::string(env) == "generic")
      return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

namespace {

/// One plan per calling thread, reused so steady-state calls do not allocate.
cpu::RotatePlan& thread_plan(const RotateProblem& p, bool allow_mixed) {
  thread_local cpu::RotatePlan plan;
  plan.build(p, allow_mixed);
  return plan;
}

void check_data_type(DType t) {
  FROD_CHECK_TYPE(t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16,
                  "rotate: z must be float32, float64, bfloat16 or float16, got ",
                  dtype_name(t));
}

void check_problem_pointers(const RotateProblem& p) {
  FROD_CHECK_ARG(p.seg.indptr != nullptr, "seg_indptr: null pointer");
  FROD_CHECK_ARG(p.seg.num_segments == 0 || p.seg.adapter != nullptr, "seg_adapter: null pointer");
  const PlanTable& t = p.plans;
  FROD_CHECK_ARG(p.A == 0 || t.slot_plan != nullptr, "slot_plan: null pointer");
  FROD_CHECK_ARG(t.num_plans == 0 || (t.meta && t.ptr), "plan table: null pointer");
  FROD_CHECK_ARG(t.num_entries == 0 || t.idx, "plan table: null entries");
}

}  // namespace

void validate_rotate_problem(const RotateProblem& p) {
  check_problem_pointers(p);
  cpu::RotatePlan plan;
  plan.build(p, false);
}

void rotate_forward_cpu(const RotateProblem& p, const void* z, int64_t ldz, const void* dl,
                        const void* s, void* h, int64_t ldh) {
  check_data_type(p.dtype);
  check_problem_pointers(p);
  FROD_CHECK_ARG(ldz >= p.n && ldh >= p.n, "row strides must be >= n");
  const cpu::RotatePlan& plan = thread_plan(p, /*allow_mixed=*/true);
  if (cpu::has_avx2_fma())
    cpu::avx2::forward(p, plan, z, ldz, dl, s, h, ldh);
  else
    cpu::generic::forward(p, plan, z, ldz, dl, s, h, ldh);
}

void rotate_backward_cpu(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                         int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                         void* d_dl, void* d_s) {
  check_data_type(p.dtype);
  check_problem_pointers(p);
  FROD_CHECK_ARG(ldz >= p.n && lddh >= p.n && (dz == nullptr || lddz >= p.n),
                 "row strides must be >= n");
  // The backward reduces d_dl / d_s per adapter over uniform tiles only.
  const cpu::RotatePlan& plan = thread_plan(p, /*allow_mixed=*/false);
  if (cpu::has_avx2_fma())
    cpu::avx2::backward(p, plan, z, ldz, dh, lddh, dl, s, dz, lddz, d_dl, d_s);
  else
    cpu::generic::backward(p, plan, z, ldz, dh, lddh, dl, s, dz, lddz, d_dl, d_s);
}

void validate_segments_cpu(const Segments& s, int64_t T, int64_t A) {
  FROD_CHECK_ARG(s.indptr != nullptr, "seg_indptr: null pointer");
  FROD_CHECK_ARG(s.num_segments == 0 || s.adapter != nullptr, "seg_adapter: null pointer");
  FROD_CHECK_ARG(s.num_segments >= 0, "seg_adapter: negative length");
  FROD_CHECK_ARG(s.indptr[0] == 0, "seg_indptr[0] must be 0, got ", s.indptr[0]);
  FROD_CHECK_ARG(s.indptr[s.num_segments] == T, "seg_indptr[-1] must equal the number of rows ",
                 T, ", got ", s.indptr[s.num_segments]);
  for (int64_t g = 0; g < s.num_segments; ++g) {
    FROD_CHECK_ARG(s.indptr[g + 1] >= s.indptr[g], "seg_indptr must be non-decreasing: seg_indptr[",
                   g, "] = ", s.indptr[g], " > seg_indptr[", g + 1, "] = ", s.indptr[g + 1]);
    FROD_CHECK_ARG(s.adapter[g] >= -1 && s.adapter[g] < A, "seg_adapter[", g, "] = ",
                   s.adapter[g], " is out of range [-1, ", A, ")");
  }
}

int64_t segments_from_ids_cpu(const int32_t* ids, int64_t T, int64_t num_adapters,
                              int32_t* indptr, int32_t* adapter) {
  FROD_CHECK_ARG(T < (int64_t(1) << 31), "too many rows: ", T);
  int64_t g = 0;
  indptr[0] = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t a = ids[t];
    FROD_CHECK_ARG(a >= -1 && a < num_adapters, "adapter_ids[", t, "] = ", a,
                   " is out of range [-1, ", num_adapters, ")");
    if (t == 0 || a != ids[t - 1]) {
      if (t > 0) indptr[g] = static_cast<int32_t>(t);
      adapter[g++] = a;
    }
  }
  indptr[g] = static_cast<int32_t>(T);
  return g;
}

}  // namespace frod
