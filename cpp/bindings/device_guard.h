// Makes a CUDA device current for the scope of one binding call (tensors may live on any GPU,
// and torch's default stream is the null handle, which names no device). CUDA builds only.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>

#include "frod/tensor_view.h"

namespace frod::bind {

class DeviceGuard {
 public:
  explicit DeviceGuard(int32_t device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != device && cudaSetDevice(device) != cudaSuccess)
      throw std::runtime_error(concat("cannot select CUDA device ", device));
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

}  // namespace frod::bind
