// Validation helpers for frod::TensorView (see tensor_view.h).
#include "frod/tensor_view.h"

namespace frod {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
  }
  return "unknown";
}

const char* device_name(DeviceType d) {
  switch (d) {
    case DeviceType::cpu: return "cpu";
    case DeviceType::cuda: return "cuda";
  }
  return "unknown";
}

int64_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::f64: case DType::i64: return 8;
  }
  return 0;
}

std::string shape_str(const TensorView& t) {
  std::ostringstream os;
  os << "(";
  for (int d = 0; d < t.ndim; ++d) os << (d ? ", " : "") << t.shape[d];
  if (t.ndim == 1) os << ",";
  os << ")";
  return os.str();
}

void check_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> dims) {
  bool ok = t.ndim == static_cast<int32_t>(dims.size());
  int d = 0;
  for (int64_t want : dims) {
    if (ok && want >= 0 && t.shape[d] != want) ok = false;
    ++d;
  }
  if (!ok) {
    std::ostringstream os;
    os << name << ": expected shape (";
    d = 0;
    for (int64_t want : dims) {
      os << (d++ ? ", " : "");
      if (want >= 0) os << want; else os << "*";
    }
    os << ") but got " << shape_str(t);
    throw InvalidArgument(os.str());
  }
  if (t.numel() > 0) FROD_CHECK_ARG(t.data != nullptr, name, ": null data pointer");
}

void check_dtype(const TensorView& t, const char* name, DType want) {
  FROD_CHECK_TYPE(t.dtype == want, name, ": expected dtype ", dtype_name(want), " but got ",
                  dtype_name(t.dtype));
}

void check_device(const TensorView& t, const char* name, DeviceType dev, int32_t index) {
  FROD_CHECK_TYPE(t.device == dev && (dev == DeviceType::cpu || t.device_index == index), name,
                  ": expected a tensor on ", device_name(dev),
                  dev == DeviceType::cuda ? concat(":", index) : std::string(), " but got ",
                  device_name(t.device),
                  t.device == DeviceType::cuda ? concat(":", t.device_index) : std::string());
}

void check_rows_contiguous(const TensorView& t, const char* name) {
  if (t.ndim == 0 || t.numel() == 0) return;
  FROD_CHECK_ARG(t.shape[t.ndim - 1] <= 1 || t.stride[t.ndim - 1] == 1, name,
                 ": innermost dimension must be contiguous (stride 1), got stride ",
                 t.stride[t.ndim - 1]);
  if (t.ndim == 2)
    FROD_CHECK_ARG(t.shape[0] <= 1 || t.stride[0] >= t.shape[1], name, ": row stride ",
                   t.stride[0], " is smaller than the row length ", t.shape[1]);
}

void check_contiguous(const TensorView& t, const char* name) {
  if (t.numel() == 0) return;
  int64_t expect = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    if (t.shape[d] != 1)
      FROD_CHECK_ARG(t.stride[d] == expect, name, ": expected a contiguous tensor, got shape ",
                     shape_str(t), " with stride[", d, "] = ", t.stride[d]);
    expect *= t.shape[d];
  }
}

}  // namespace frod
