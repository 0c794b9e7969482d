// Small helpers shared by the CUDA translation units: error checks, stream-ordered scratch
// memory, 16-bit float conversions and the per-dtype dispatch macro. Host + device code,
// no CUTLASS, no torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "frod/tensor_view.h"

namespace frod::cuda {

/// Throws std::runtime_error("<what>: <CUDA error string>") when `err` is not cudaSuccess.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
#define FROD_CUDA_CHECK(expr) ::frod::cuda::check((expr), #expr)
/// After a kernel launch: reports launch-configuration errors (asynchronous faults surface
/// at the next synchronising call, as usual in CUDA).
#define FROD_CUDA_CHECK_LAUNCH(name) ::frod::cuda::check(cudaGetLastError(), name)

/// Device scratch memory from the stream-ordered pool (cudaMallocAsync), released in stream
/// order when the object goes out of scope, so kernels enqueued before that still see it.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) FROD_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~StreamBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  template <typename T> T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

/// Makes the device that owns `stream` current for the scope (no-op for the null stream or
/// when it already is), so kernels, scratch memory and device queries match the stream even
/// when the caller's current device differs (tensors on another GPU).
class StreamDeviceGuard {
 public:
  explicit StreamDeviceGuard(cudaStream_t stream) {
#if CUDART_VERSION >= 12080  // cudaStreamGetDevice appeared in CUDA 12.8
    if (stream == nullptr) return;
    int want = 0;
    FROD_CUDA_CHECK(cudaStreamGetDevice(stream, &want));
    FROD_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ == want) {
      prev_ = -1;
    } else {
      FROD_CUDA_CHECK(cudaSetDevice(want));
    }
#else
    (void)stream;
#endif
  }
  ~StreamDeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  StreamDeviceGuard(const StreamDeviceGuard&) = delete;
  StreamDeviceGuard& operator=(const StreamDeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

/// Rounds `bytes` up to a multiple of 256 (alignment of sub-buffers carved from one block).
constexpr size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

/// Device index of the current context and its compute capability major * 10 + minor.
int current_device();
int compute_capability(int device);
int multiprocessor_count(int device);
/// Largest dynamic shared memory a block may opt in to on `device` (bytes).
int max_smem_optin(int device);

// ---- scalar conversions (device) ----------------------------------------------------------
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}

}  // namespace frod::cuda

/// Runs the statements (variadic, so they may contain commas) with `T` bound to the CUDA storage type of `dtype` (float, double,
/// __nv_bfloat16, __half); throws frod::TypeError for other dtypes.
#define FROD_CUDA_DISPATCH_FLOAT(dtype, ...)                                           \
  switch (dtype) {                                                                      \
    case ::frod::DType::f32: { using T = float; __VA_ARGS__; break; }                          \
    case ::frod::DType::f64: { using T = double; __VA_ARGS__; break; }                         \
    case ::frod::DType::bf16: { using T = __nv_bfloat16; __VA_ARGS__; break; }                 \
    case ::frod::DType::f16: { using T = __half; __VA_ARGS__; break; }                         \
    default:                                                                            \
      throw ::frod::TypeError(::frod::concat("expected a floating dtype, got ",         \
                                             ::frod::dtype_name(dtype)));               \
  }
