// Shared validation for the rotation bindings (CPU and CUDA): checks every view against the
// problem shape and fills a frod::RotateProblem. Messages name the Python argument.
#pragma once

#include "frod/rotate.h"
#include "frod/tensor_view.h"

namespace frod::bind {

/// Tensors of one rotation call, as passed from Python.
struct RotateViews {
  TensorView z, seg_indptr, seg_adapter, dl, s, rows, cols;
};

/// Validates the views (devices: data tensors on `dev`; segment and pattern index tensors on
/// `index_dev`) and returns the problem description. num_threads as given.
RotateProblem make_problem(const RotateViews& v, DeviceType dev, DeviceType index_dev,
                           int num_threads);

/// Checks a 2-D (T, n) tensor of p.dtype on `dev` with unit inner stride; names `name`.
void check_rows_like(const TensorView& t, const char* name, const RotateProblem& p,
                     DeviceType dev, int32_t device_index);

}  // namespace frod::bind
