// Shared validation for the rotation bindings (CPU and CUDA): checks every view against the
// problem shape and fills a frod::RotateProblem. Messages name the Python argument.
#pragma once

#include "frod/rotate.h"
#include "frod/tensor_view.h"

namespace frod::bind {

/// Tensors of one rotation call, as passed from Python: the data, the segments and the plan
/// table (frod/pattern_plan.h): slot_plan (A,) int32, plan_meta (P, 2) int64,
/// plan_ptr (P, 2, n+1) int32, plan_idx (4, E) int32.
struct RotateViews {
  TensorView z, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx;
};

/// Validates the views (all on z's device) and returns the problem description.
RotateProblem make_problem(const RotateViews& v, DeviceType dev, int num_threads);

/// Checks a 2-D (T, n) tensor of p.dtype on `dev` with unit inner stride; names `name`.
void check_rows_like(const TensorView& t, const char* name, const RotateProblem& p,
                     DeviceType dev, int32_t device_index);

}  // namespace frod::bind
