// Torch-free description of a strided tensor that lives in memory owned by someone else.
//
// The Python layer builds one of these per tensor argument (data pointer, dtype code,
// device, shape, strides in elements); the C++ core never touches torch. Every kernel entry
// point validates the views it receives with the helpers below and throws
// frod::InvalidArgument (mapped to Python ValueError) or frod::TypeError (TypeError)
// naming the offending argument.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace frod {

/// Element types understood by the core. Codes are part of the Python<->C++ contract.
enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, i32 = 4, i64 = 5 };

/// Where the memory lives. Codes follow DLPack (kDLCPU = 1, kDLCUDA = 2).
enum class DeviceType : int32_t { cpu = 1, cuda = 2 };

constexpr int kMaxDims = 4;

/// A non-owning strided view: element (i0, i1, ...) is at data + sum(i_d * stride[d]) elements.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  DeviceType device = DeviceType::cpu;
  int32_t device_index = 0;
  int32_t ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t stride[kMaxDims] = {0, 0, 0, 0};

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
};

/// Bad value or shape: surfaces in Python as ValueError.
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
/// Wrong dtype or device: surfaces in Python as TypeError.
struct TypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* dtype_name(DType t);
const char* device_name(DeviceType d);
int64_t dtype_size(DType t);

/// Builds a message from stream-able parts: concat("a", 1, "b") == "a1b".
template <typename... Parts> std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

#define FROD_CHECK_ARG(cond, ...)                                      \
  do {                                                                 \
    if (!(cond)) throw ::frod::InvalidArgument(::frod::concat(__VA_ARGS__)); \
  } while (0)
#define FROD_CHECK_TYPE(cond, ...)                                     \
  do {                                                                 \
    if (!(cond)) throw ::frod::TypeError(::frod::concat(__VA_ARGS__)); \
  } while (0)

/// Shape string such as "(3, 5)".
std::string shape_str(const TensorView& t);

/// Checks rank and each listed dim (-1 = any). Throws InvalidArgument naming `name`.
void check_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> dims);
/// Checks the dtype. Throws TypeError naming `name`.
void check_dtype(const TensorView& t, const char* name, DType want);
/// Checks the device. Throws TypeError naming `name`.
void check_device(const TensorView& t, const char* name, DeviceType dev, int32_t index);
/// Checks that the innermost dim is unit-stride and, for 2-D, that rows do not overlap.
void check_rows_contiguous(const TensorView& t, const char* name);
/// Checks full C-contiguity.
void check_contiguous(const TensorView& t, const char* name);

}  // namespace frod
