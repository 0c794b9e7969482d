// CUDA kernels of the FRoD rotation op (semantics in frod/rotate.h, API in frod/rotate_cuda.h).
//
// Work unit: a tile of up to R consecutive rows of one segment (one thread block, 256
// threads). The tile of the operand that is gathered by the sparse pattern (Z in the forward,
// dH in the backward) is staged in shared memory transposed, as n vectors of R values, so one
// pattern entry costs one 2R..8R-byte shared load and R FMAs. Thread i owns output columns
// i, i + 256, ...; it keeps R float accumulators in registers and writes each output element
// exactly once (coalesced across the warp):
//   forward   H[t0+b, r]  = (l[r] + dl[a, r]) Z[t0+b, r] + sum_{e in CSR row r} s[a, j_e] Z[t0+b, c_e]
//   backward  dZ[t0+b, c] = dl[a, c] dH[t0+b, c] + sum_{e in CSC col c} s[a, j_e] dH[t0+b, r_e]
//             d_dl[a, c] += sum_b dH[t0+b, c] Z[t0+b, c]
//             d_s[a, j_e] += sum_b dH[t0+b, r_e] Z[t0+b, c]          (SDDMM, atomics per tile)
// The backward traverses the pattern by column so Z is only needed at the thread's own column
// (read straight from global memory); one traversal gives dZ and d_s.
// R in {1, 2, 4, 8, 16} is chosen per call from the mean segment length and the shared memory
// limit (R * n * sizeof(T) bytes).
#include <algorithm>

#include "cuda_utils.h"
#include "frod/rotate_cuda.h"
#include "rotate_plan.cuh"

namespace frod {
namespace cuda {
namespace {

constexpr int kThreads = 256;

/// R values of type T, loaded from shared memory with the widest aligned accesses.
template <typename T, int R>
struct alignas(R * sizeof(T) >= 16 ? 16 : R * sizeof(T)) Vec {
  T v[R];
};

template <typename T> struct RotateArgs {
  int64_t T_rows, n, k;
  const T* z; int64_t ldz;
  const T* dh; int64_t lddh;
  const T* dl;
  const T* base_scale;  // (n,) or null: forward uses l + dl[a]
  const T* s;
  T* out; int64_t ldout;  // h (forward) or dz (backward, may be null)
  acc_t<T>* d_dl;         // (A, n) or null
  acc_t<T>* d_s;          // (A, k) or null
  bool per_adapter;
};

struct TileInfo {
  int64_t t0;
  int rows;
  int32_t adapter;
  bool live;
};

__device__ __forceinline__ TileInfo find_tile(const SegmentTiles& st, int R) {
  const int32_t b = static_cast<int32_t>(blockIdx.x);
  const int64_t G = st.num_segments;
  TileInfo t{0, 0, -1, false};
  if (G == 0 || b >= st.tile_offset[G]) return t;
  const int64_t g = tile_segment(st.tile_offset, G, b);
  const int64_t lo = st.indptr[g], hi = st.indptr[g + 1];
  t.t0 = lo + static_cast<int64_t>(b - st.tile_offset[g]) * R;
  t.rows = static_cast<int>(min(static_cast<int64_t>(R), hi - t.t0));
  t.adapter = st.eff_adapter[g];
  t.live = t.rows > 0;
  return t;
}

/// Stages rows [t0, t0 + rows) of x (row stride ld) into smem as n vectors of R (zero padded).
template <typename T, int R>
__device__ __forceinline__ void stage_transposed(const T* __restrict__ x, int64_t ld,
                                                 const TileInfo& t, int64_t n, T* sm) {
  const T zero = from_acc<T>(acc_t<T>(0));
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(R) * n; idx += blockDim.x) {
    const int b = static_cast<int>(idx / n);
    const int64_t i = idx - b * n;
    sm[i * R + b] = b < t.rows ? x[(t.t0 + b) * ld + i] : zero;
  }
}

template <typename T>
__device__ __forceinline__ void zero_rows(T* __restrict__ out, int64_t ld, const TileInfo& t,
                                          int64_t n) {
  const T zero = from_acc<T>(acc_t<T>(0));
  for (int b = 0; b < t.rows; ++b)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[(t.t0 + b) * ld + i] = zero;
}

template <typename T, int R>
__global__ void __launch_bounds__(kThreads)
    rotate_forward_kernel(RotateArgs<T> a, SegmentTiles st, Compressed csr) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* zs = reinterpret_cast<T*>(smem_raw);
  const TileInfo t = find_tile(st, R);
  if (!t.live) return;
  const int64_t n = a.n;
  if (t.adapter < 0) {
    zero_rows(a.out, a.ldout, t, n);
    return;
  }
  stage_transposed<T, R>(a.z, a.ldz, t, n, zs);
  __syncthreads();
  const int64_t pat = a.per_adapter ? t.adapter : 0;
  const int32_t* __restrict__ ptr = csr.ptr + pat * (n + 1);
  const int32_t* __restrict__ col = csr.other + pat * a.k;
  const int32_t* __restrict__ idx = csr.idx + pat * a.k;
  const T* __restrict__ s = a.s + t.adapter * a.k;
  const T* __restrict__ dl = a.dl + t.adapter * n;
  const Vec<T, R>* zv = reinterpret_cast<const Vec<T, R>*>(zs);
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) {
    A d = to_acc(dl[r]);
    if (a.base_scale) d += to_acc(a.base_scale[r]);
    A acc[R];
    const Vec<T, R> zr = zv[r];
#pragma unroll
    for (int b = 0; b < R; ++b) acc[b] = d * to_acc(zr.v[b]);
    const int32_t e1 = ptr[r + 1];
#pragma unroll 2
    for (int32_t e = ptr[r]; e < e1; ++e) {
      const A v = to_acc(s[idx[e]]);
      const Vec<T, R> zc = zv[col[e]];
#pragma unroll
      for (int b = 0; b < R; ++b) acc[b] = fma(v, to_acc(zc.v[b]), acc[b]);
    }
    T* o = a.out + t.t0 * a.ldout + r;
#pragma unroll
    for (int b = 0; b < R; ++b, o += a.ldout)
      if (b < t.rows) *o = from_acc<T>(acc[b]);
  }
}

/// Zeroes d_dl[a] and d_s[a] for the adapter of every segment (before the atomics).
template <typename A>
__global__ void zero_grads_kernel(SegmentTiles st, int64_t n, int64_t k, A* __restrict__ d_dl,
                                  A* __restrict__ d_s) {
  const int64_t g = blockIdx.y;
  const int32_t a = st.eff_adapter[g];
  if (a < 0 || st.tile_offset[g + 1] == st.tile_offset[g]) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n + k;
       i += stride) {
    if (i < n) {
      if (d_dl) d_dl[a * n + i] = A(0);
    } else if (d_s) {
      d_s[a * k + (i - n)] = A(0);
    }
  }
}

template <typename T, int R>
__global__ void __launch_bounds__(kThreads)
    rotate_backward_kernel(RotateArgs<T> a, SegmentTiles st, Compressed csc) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* hs = reinterpret_cast<T*>(smem_raw);
  const TileInfo t = find_tile(st, R);
  if (!t.live) return;
  const int64_t n = a.n;
  if (t.adapter < 0) {
    if (a.out) zero_rows(a.out, a.ldout, t, n);
    return;
  }
  stage_transposed<T, R>(a.dh, a.lddh, t, n, hs);
  __syncthreads();
  const bool want_z = a.d_dl != nullptr || a.d_s != nullptr;
  const int64_t pat = a.per_adapter ? t.adapter : 0;
  const int32_t* __restrict__ ptr = csc.ptr ? csc.ptr + pat * (n + 1) : nullptr;
  const int32_t* __restrict__ row = csc.other + pat * a.k;
  const int32_t* __restrict__ idx = csc.idx + pat * a.k;
  const T* __restrict__ s = a.s + t.adapter * a.k;
  const T* __restrict__ dl = a.dl + t.adapter * n;
  A* __restrict__ d_s = a.d_s ? a.d_s + t.adapter * a.k : nullptr;
  const Vec<T, R>* hv = reinterpret_cast<const Vec<T, R>*>(hs);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    A zc[R];
    const T* zp = a.z + t.t0 * a.ldz + c;
#pragma unroll
    for (int b = 0; b < R; ++b, zp += a.ldz) zc[b] = (want_z && b < t.rows) ? to_acc(*zp) : A(0);
    const Vec<T, R> hc = hv[c];
    const A d = to_acc(dl[c]);
    A acc[R];
    A dot_dl = 0;
#pragma unroll
    for (int b = 0; b < R; ++b) {
      const A h = to_acc(hc.v[b]);
      acc[b] = d * h;
      dot_dl = fma(h, zc[b], dot_dl);
    }
    if (a.d_dl) atomicAdd(a.d_dl + t.adapter * n + c, dot_dl);
    const int32_t e0 = ptr ? ptr[c] : 0, e1 = ptr ? ptr[c + 1] : 0;  // no CSC: only d_dl wanted
    for (int32_t e = e0; e < e1; ++e) {
      const int32_t j = idx[e];
      const Vec<T, R> hr = hv[row[e]];
      const A v = to_acc(s[j]);
      A dot = 0;
#pragma unroll
      for (int b = 0; b < R; ++b) {
        const A h = to_acc(hr.v[b]);
        acc[b] = fma(v, h, acc[b]);
        dot = fma(h, zc[b], dot);
      }
      if (d_s) atomicAdd(d_s + j, dot);
    }
    if (a.out) {
      T* o = a.out + t.t0 * a.ldout + c;
#pragma unroll
      for (int b = 0; b < R; ++b, o += a.ldout)
        if (b < t.rows) *o = from_acc<T>(acc[b]);
    }
  }
}

/// Rows per tile: the next power of two >= the mean segment length, capped at 16 and by the
/// shared memory the device offers for R * n values.
int choose_rows_per_tile(const RotateProblem& p, size_t elem_bytes, int device) {
  const int64_t G = std::max<int64_t>(p.seg.num_segments, 1);
  const int64_t mean = (p.T + G - 1) / G;
  int R = 1;
  while (R < 16 && R < mean) R *= 2;
  const size_t limit = static_cast<size_t>(max_smem_optin(device));
  while (R > 1 && static_cast<size_t>(R) * p.n * elem_bytes > limit) R /= 2;
  FROD_CHECK_ARG(static_cast<size_t>(p.n) * elem_bytes <= limit, "rotate (CUDA): n = ", p.n,
                 " is too wide: one row of ", p.n * elem_bytes, " bytes exceeds the ", limit,
                 " bytes of shared memory per block");
  return R;
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, int64_t grid, size_t smem, cudaStream_t stream, const char* name,
            Args... args) {
  if (grid <= 0) return;
  FROD_CHECK_ARG(grid < (int64_t(1) << 31), name, ": too many tiles (", grid, ")");
  if (smem > 48 * 1024)
    FROD_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(args...);
  FROD_CUDA_CHECK_LAUNCH(name);
}

#define FROD_DISPATCH_R(R_value, ...)              \
  switch (R_value) {                                \
    case 1: { constexpr int R = 1; __VA_ARGS__; break; }   \
    case 2: { constexpr int R = 2; __VA_ARGS__; break; }   \
    case 4: { constexpr int R = 4; __VA_ARGS__; break; }   \
    case 8: { constexpr int R = 8; __VA_ARGS__; break; }   \
    default: { constexpr int R = 16; __VA_ARGS__; break; } \
  }

void check_common(const RotateProblem& p) {
  FROD_CHECK_ARG(p.T >= 0 && p.n >= 0 && p.A >= 0 && p.pat.k >= 0, "rotate: negative size");
  FROD_CHECK_ARG(p.seg.indptr != nullptr, "seg_indptr: null pointer");
  FROD_CHECK_ARG(p.seg.num_segments == 0 || p.seg.adapter != nullptr, "seg_adapter: null pointer");
  FROD_CHECK_ARG(p.pat.k == 0 || (p.pat.rows && p.pat.cols), "rows/cols: null pointer");
  FROD_CHECK_ARG(p.T < (int64_t(1) << 31) && p.n < (int64_t(1) << 31) &&
                     p.pat.k < (int64_t(1) << 31),
                 "rotate (CUDA): T, n and k must be < 2^31");
}

/// Error word: the caller's, or a scratch one.
struct ErrorWord {
  ErrorWord(int32_t* given, cudaStream_t s) : scratch(given ? 0 : sizeof(int32_t), s) {
    ptr = given ? given : scratch.as<int32_t>();
  }
  StreamBuffer scratch;
  int32_t* ptr;
};

}  // namespace
}  // namespace cuda

void rotate_forward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dl,
                         const void* s, void* h, int64_t ldh, void* stream_ptr,
                         const void* base_scale, int32_t* error_flags) {
  using namespace cuda;
  check_common(p);
  FROD_CHECK_ARG(ldz >= p.n && ldh >= p.n, "row strides must be >= n");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  StreamDeviceGuard device_guard(stream);
  ErrorWord err(error_flags, stream);
  if (p.T == 0) {
    FROD_CUDA_CHECK(cudaMemsetAsync(err.ptr, 0, sizeof(int32_t), stream));
    return;
  }
  const int device = current_device();
  FROD_CUDA_DISPATCH_FLOAT(p.dtype, {
    const int Rv = choose_rows_per_tile(p, sizeof(T), device);
    RotatePlanCuda plan(p, Rv, /*csr=*/true, /*csc=*/false, err.ptr, stream);
    RotateArgs<T> args{p.T, p.n, p.pat.k, static_cast<const T*>(z), ldz, nullptr, 0,
                       static_cast<const T*>(dl), static_cast<const T*>(base_scale),
                       static_cast<const T*>(s), static_cast<T*>(h), ldh, nullptr, nullptr,
                       p.pat.per_adapter};
    FROD_DISPATCH_R(Rv, launch(rotate_forward_kernel<T, R>, plan.max_tiles(),
                               size_t(R) * p.n * sizeof(T), stream, "rotate_forward_kernel",
                               args, plan.tiles(), plan.csr()));
  });
}

void rotate_backward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                          int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                          void* d_dl, void* d_s, void* stream_ptr, int32_t* error_flags) {
  using namespace cuda;
  check_common(p);
  FROD_CHECK_ARG(ldz >= p.n && lddh >= p.n && (dz == nullptr || lddz >= p.n),
                 "row strides must be >= n");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  StreamDeviceGuard device_guard(stream);
  ErrorWord err(error_flags, stream);
  if (p.T == 0 || (dz == nullptr && d_dl == nullptr && d_s == nullptr)) {
    FROD_CUDA_CHECK(cudaMemsetAsync(err.ptr, 0, sizeof(int32_t), stream));
    return;
  }
  const int device = current_device();
  FROD_CUDA_DISPATCH_FLOAT(p.dtype, {
    using Acc = acc_t<T>;
    const int Rv = choose_rows_per_tile(p, sizeof(T), device);
    const bool need_pattern = dz != nullptr || d_s != nullptr;
    RotatePlanCuda plan(p, Rv, /*csr=*/false, /*csc=*/need_pattern, err.ptr, stream);
    if (d_dl || d_s) {
      const int64_t G = p.seg.num_segments;
      const unsigned gx = static_cast<unsigned>(
          std::min<int64_t>((p.n + p.pat.k + kThreads - 1) / kThreads, 64));
      for (int64_t g0 = 0; g0 < G; g0 += 65535) {  // gridDim.y limit
        SegmentTiles sub = plan.tiles();
        sub.tile_offset += g0;
        sub.eff_adapter += g0;
        sub.indptr += g0;
        sub.num_segments = std::min<int64_t>(65535, G - g0);
        dim3 grid(std::max(gx, 1u), static_cast<unsigned>(sub.num_segments));
        zero_grads_kernel<Acc><<<grid, kThreads, 0, stream>>>(sub, p.n, p.pat.k,
                                                              static_cast<Acc*>(d_dl),
                                                              static_cast<Acc*>(d_s));
        FROD_CUDA_CHECK_LAUNCH("zero_grads_kernel");
      }
    }
    RotateArgs<T> args{p.T, p.n, p.pat.k, static_cast<const T*>(z), ldz,
                       static_cast<const T*>(dh), lddh, static_cast<const T*>(dl), nullptr,
                       static_cast<const T*>(s), static_cast<T*>(dz), lddz,
                       static_cast<Acc*>(d_dl), static_cast<Acc*>(d_s), p.pat.per_adapter};
    FROD_DISPATCH_R(Rv, launch(rotate_backward_kernel<T, R>, plan.max_tiles(),
                               size_t(R) * p.n * sizeof(T), stream, "rotate_backward_kernel",
                               args, plan.tiles(), plan.csc()));
  });
}

int32_t rotate_validate_cuda(const RotateProblem& p, void* stream_ptr) {
  using namespace cuda;
  check_common(p);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  StreamDeviceGuard device_guard(stream);
  ErrorWord err(nullptr, stream);
  {
    RotatePlanCuda plan(p, 16, /*csr=*/true, /*csc=*/false, err.ptr, stream);
  }
  int32_t host = 0;
  FROD_CUDA_CHECK(cudaMemcpyAsync(&host, err.ptr, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  FROD_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace frod
