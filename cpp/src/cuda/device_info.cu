// Device queries used by the dispatchers (cached per device) and frod::cuda_available().
#include <mutex>
#include <vector>

#include "cuda_utils.h"
#include "frod/rotate_cuda.h"

namespace frod {

bool cuda_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls are not confused
    return false;
  }
  return count > 0;
}

namespace cuda {
namespace {

struct DeviceInfo {
  int cc = 0, sms = 0, smem_optin = 0;
};

const DeviceInfo& info(int device) {
  static std::mutex mu;
  static std::vector<DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0) throw std::runtime_error("invalid CUDA device index");
  if (static_cast<size_t>(device) >= cache.size()) cache.resize(device + 1);
  DeviceInfo& d = cache[device];
  if (d.cc == 0) {
    int major = 0, minor = 0;
    FROD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    FROD_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    FROD_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
    FROD_CUDA_CHECK(
        cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    d.cc = major * 10 + minor;
  }
  return d;
}

}  // namespace

int current_device() {
  int d = 0;
  FROD_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}
int compute_capability(int device) { return info(device).cc; }
int multiprocessor_count(int device) { return info(device).sms; }
int max_smem_optin(int device) { return info(device).smem_optin; }

}  // namespace cuda
}  // namespace frod
