// pybind11 conversion: Python tuple -> frod::TensorView.
//
// The Python side (frod_rt/_core.py: view()) describes a tensor as
//     (data_ptr: int, dtype_code: int, device_type: int, device_index: int,
//      shape: tuple[int, ...], strides: tuple[int, ...])
// with codes from frod::DType / frod::DeviceType. Nothing here depends on torch.
#pragma once

#include <pybind11/pybind11.h>

#include "frod/tensor_view.h"

namespace pybind11::detail {

template <> struct type_caster<frod::TensorView> {
  PYBIND11_TYPE_CASTER(frod::TensorView, const_name("TensorView"));

  bool load(handle src, bool) {
    if (!isinstance<tuple>(src)) return false;
    auto t = reinterpret_borrow<tuple>(src);
    if (t.size() != 6) return false;
    value.data = reinterpret_cast<void*>(t[0].cast<uintptr_t>());
    const int dt = t[1].cast<int>();
    if (dt < 0 || dt > 5) throw frod::TypeError(frod::concat("unknown dtype code ", dt));
    value.dtype = static_cast<frod::DType>(dt);
    const int dev = t[2].cast<int>();
    if (dev != 1 && dev != 2) throw frod::TypeError(frod::concat("unknown device type ", dev));
    value.device = static_cast<frod::DeviceType>(dev);
    value.device_index = t[3].cast<int32_t>();
    auto shape = t[4].cast<tuple>();
    auto stride = t[5].cast<tuple>();
    if (shape.size() > static_cast<size_t>(frod::kMaxDims) || stride.size() != shape.size())
      throw frod::InvalidArgument("tensor view: at most 4 dims, with one stride per dim");
    value.ndim = static_cast<int32_t>(shape.size());
    for (int d = 0; d < value.ndim; ++d) {
      value.shape[d] = shape[d].cast<int64_t>();
      value.stride[d] = stride[d].cast<int64_t>();
    }
    return true;
  }

  static handle cast(const frod::TensorView&, return_value_policy, handle) {
    throw cast_error("TensorView cannot be returned to Python");
  }
};

}  // namespace pybind11::detail
