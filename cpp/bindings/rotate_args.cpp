// Validation of rotation-op arguments shared by the CPU and CUDA bindings.
#include "rotate_args.h"

namespace frod::bind {

void check_rows_like(const TensorView& t, const char* name, const RotateProblem& p,
                     DeviceType dev, int32_t device_index) {
  check_device(t, name, dev, device_index);
  check_dtype(t, name, p.dtype);
  check_shape(t, name, {p.T, p.n});
  check_rows_contiguous(t, name);
}

RotateProblem make_problem(const RotateViews& v, DeviceType dev, int num_threads) {
  FROD_CHECK_ARG(v.z.ndim == 2, "z: expected a 2-D tensor (T, n), got shape ", shape_str(v.z));
  check_device(v.z, "z", dev, v.z.device_index);
  const int32_t di = v.z.device_index;
  RotateProblem p;
  p.T = v.z.shape[0];
  p.n = v.z.shape[1];
  p.dtype = v.z.dtype;
  p.num_threads = num_threads < 1 ? 1 : num_threads;
  FROD_CHECK_TYPE(p.dtype == DType::f32 || p.dtype == DType::f64 || p.dtype == DType::bf16 ||
                      p.dtype == DType::f16,
                  "z: expected a floating dtype (float32, float64, bfloat16, float16), got ",
                  dtype_name(p.dtype));
  check_rows_contiguous(v.z, "z");

  for (auto [t, name] : {std::pair{&v.seg_indptr, "seg_indptr"}, {&v.seg_adapter, "seg_adapter"},
                         {&v.slot_plan, "slot_plan"}, {&v.plan_ptr, "plan_ptr"},
                         {&v.plan_idx, "plan_idx"}}) {
    check_device(*t, name, dev, di);
    check_dtype(*t, name, DType::i32);
    check_contiguous(*t, name);
  }
  check_device(v.plan_meta, "plan_meta", dev, di);
  check_dtype(v.plan_meta, "plan_meta", DType::i64);
  check_contiguous(v.plan_meta, "plan_meta");
  check_shape(v.seg_adapter, "seg_adapter", {-1});
  const int64_t G = v.seg_adapter.shape[0];
  check_shape(v.seg_indptr, "seg_indptr", {G + 1});

  FROD_CHECK_ARG(v.dl.ndim == 2, "dl: expected a 2-D tensor (A, n), got shape ", shape_str(v.dl));
  p.A = v.dl.shape[0];
  for (auto [t, name] : {std::pair{&v.dl, "dl"}, {&v.s, "s"}}) {
    check_device(*t, name, dev, di);
    check_dtype(*t, name, p.dtype);
    check_contiguous(*t, name);
  }
  check_shape(v.dl, "dl", {p.A, p.n});
  FROD_CHECK_ARG(v.s.ndim == 2 && v.s.shape[0] == p.A, "s: expected shape (", p.A,
                 ", k) to match dl's ", p.A, " adapters, got ", shape_str(v.s));
  p.kcap = v.s.shape[1];
  check_shape(v.slot_plan, "slot_plan", {p.A});
  FROD_CHECK_ARG(v.plan_meta.ndim == 2 && v.plan_meta.shape[1] == 2,
                 "plan_meta: expected shape (P, 2), got ", shape_str(v.plan_meta));
  const int64_t P = v.plan_meta.shape[0];
  check_shape(v.plan_ptr, "plan_ptr", {P, 2, p.n + 1});
  FROD_CHECK_ARG(v.plan_idx.ndim == 2 && v.plan_idx.shape[0] == 4,
                 "plan_idx: expected shape (4, E), got ", shape_str(v.plan_idx));
  p.seg = Segments{v.seg_indptr.ptr<const int32_t>(), v.seg_adapter.ptr<const int32_t>(), G};
  p.plans = PlanTable{P, v.plan_idx.shape[1], v.plan_meta.ptr<const int64_t>(),
                      v.plan_ptr.ptr<const int32_t>(), v.plan_idx.ptr<const int32_t>(),
                      v.slot_plan.ptr<const int32_t>()};
  return p;
}

}  // namespace frod::bind
