// CUDA kernels of the FRoD rotation op (semantics in frod/rotate.h, API in frod/rotate_cuda.h).
//
// The patterns arrive planned (frod/pattern_plan.h: CSR for the forward, CSC for the backward,
// built once on the host and uploaded), so a call is ONE kernel launch, with no planning
// kernels, no scratch memory and no host reads of index values.
//
// Work unit: block b (256 threads) owns the R consecutive batch rows [b R, b R + R). It walks
// them in *pieces*, each the part of one segment (the segment of a row is found by binary
// search in seg_indptr, so no segment-to-tile map has to be built on the device). A piece's
// rows of the gathered operand (Z forward, dH backward) are staged in shared memory
// transposed, as n vectors of R values; thread i owns output columns i, i + 256, ..., keeps R
// accumulators in registers and writes each output element exactly once:
//   forward   H[t, r]  = (base[r] + dl[a, r]) Z[t, r] + sum_{e in CSR row r} s[a, j_e] Z[t, c_e]
//   backward  dZ[t, c] = dl[a, c] dH[t, c] + sum_{e in CSC col c} s[a, j_e] dH[t, r_e]
//             d_dl[a, c] += sum_t dH[t, c] Z[t, c]
//             d_s[a, j_e] += sum_t dH[t, r_e] Z[t, c]          (SDDMM, atomics per piece)
// R in {1, 2, 4, 8, 16} is the next power of two >= the mean segment length (decode: R = 1),
// capped by shared memory. A row's arithmetic does not depend on R, on the piece or on the
// other rows (same entry order, same FMAs), so the forward is batch invariant bit for bit.
#include <algorithm>
#include <array>
#include <mutex>

#include "cuda_utils.h"
#include "frod/rotate_cuda.h"

namespace frod {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxDevices = 64;

/// Bits of the error word (see frod/rotate_cuda.h).
enum RotateError : int32_t { kBadSegment = 1, kBadAdapter = 2, kBadPlan = 4 };

/// R values of type T, loaded from shared memory with the widest aligned accesses.
template <typename T, int R>
struct alignas(R * sizeof(T) >= 16 ? 16 : R * sizeof(T)) Vec {
  T v[R];
};

template <typename T> struct RotateArgs {
  int64_t T_rows, n, kcap, A;
  const int32_t* indptr;
  const int32_t* adapter;
  int64_t G;
  PlanTable plans;
  const T* z; int64_t ldz;
  const T* dh; int64_t lddh;
  const T* dl;
  const T* base_scale;  // (n,) or null: forward uses base + dl[a]
  const T* s;
  T* out; int64_t ldout;  // h (forward) or dz (backward, may be null)
  acc_t<T>* d_dl;         // (A, n) or null
  acc_t<T>* d_s;          // (A, kcap) or null
  int32_t* err;           // error word or null
};

/// One piece: rows [t0, t0 + rows) of one segment, with its slot and planned pattern.
struct Piece {
  int64_t t0;
  int rows;
  int32_t adapter;  ///< -1: no adapter (zeros)
  int32_t plan;     ///< -1: no pattern (dl only)
  int64_t off;      ///< entry offset of the plan in the table
};

__device__ __forceinline__ void flag(int32_t* err, int32_t bit) {
  if (err && threadIdx.x == 0) atomicOr(err, bit);
}

/// The piece that starts at row t (t < t_end): binary search of t's segment, then checks of
/// the segment, the slot and its plan. Every thread computes the same values.
template <typename T>
__device__ Piece find_piece(const RotateArgs<T>& a, int64_t t, int64_t t_end) {
  Piece p{t, 1, -1, -1, 0};
  // largest g with indptr[g] <= t
  int64_t lo = 0, hi = a.G;  // search in [0, G)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (a.indptr[mid] <= t) lo = mid; else hi = mid;
  }
  if (a.G == 0) {
    flag(a.err, kBadSegment);
    return p;
  }
  const int64_t b = a.indptr[lo], e = a.indptr[lo + 1];
  if (!(b <= t && t < e && e <= a.T_rows)) {
    flag(a.err, kBadSegment);
    return p;  // one row of zeros, then the next row is searched afresh
  }
  p.rows = static_cast<int>(min(e, t_end) - t);
  const int32_t ad = a.adapter[lo];
  if (ad < -1 || ad >= a.A) {
    flag(a.err, kBadAdapter);
    return p;
  }
  p.adapter = ad;
  if (ad < 0) return p;
  const int32_t pl = a.plans.slot_plan[ad];
  if (pl < -1 || pl >= a.plans.num_plans) {
    flag(a.err, kBadPlan);
    p.adapter = -1;
    return p;
  }
  if (pl >= 0) {
    const int32_t* ptr = a.plans.ptr + static_cast<int64_t>(pl) * 2 * (a.n + 1);
    const int64_t k = ptr[a.n], off = a.plans.meta[2 * pl];
    if (k > a.kcap || off < 0 || off + k > a.plans.num_entries) {
      flag(a.err, kBadPlan);
      p.adapter = -1;
      return p;
    }
    p.plan = pl;
    p.off = off;
  }
  return p;
}

/// Stages rows [t0, t0 + rows) of x (row stride ld) into smem as n vectors of R (zero padded).
template <typename T, int R>
__device__ __forceinline__ void stage_transposed(const T* __restrict__ x, int64_t ld,
                                                 const Piece& p, int64_t n, T* sm) {
  const T zero = from_acc<T>(acc_t<T>(0));
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(R) * n; idx += blockDim.x) {
    const int b = static_cast<int>(idx / n);
    const int64_t i = idx - b * n;
    sm[i * R + b] = b < p.rows ? x[(p.t0 + b) * ld + i] : zero;
  }
}

template <typename T>
__device__ __forceinline__ void zero_rows(T* __restrict__ out, int64_t ld, const Piece& p,
                                          int64_t n) {
  const T zero = from_acc<T>(acc_t<T>(0));
  for (int b = 0; b < p.rows; ++b)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[(p.t0 + b) * ld + i] = zero;
}

/// Walks block b's rows [bR, bR + R) piece by piece: rows of no adapter (or invalid ones) get
/// zeros in a.out (if any), every other piece is passed to body(piece) after a barrier (the
/// previous piece is done with the shared staging buffer). Block 0 also checks the ends of
/// seg_indptr.
template <typename T, int R, typename Body>
__device__ __forceinline__ void for_each_piece(const RotateArgs<T>& a, Body body) {
  if (blockIdx.x == 0 && (a.indptr[0] != 0 || a.indptr[a.G] != a.T_rows)) flag(a.err, kBadSegment);
  int64_t t = static_cast<int64_t>(blockIdx.x) * R;
  const int64_t t_end = min(a.T_rows, t + R);
  while (t < t_end) {
    const Piece p = find_piece(a, t, t_end);
    t += p.rows;
    if (p.adapter < 0) {
      if (a.out) zero_rows(a.out, a.ldout, p, a.n);
      continue;
    }
    __syncthreads();
    body(p);
  }
}

template <typename T, int R>
__global__ void __launch_bounds__(kThreads) rotate_forward_kernel(RotateArgs<T> a) {
  using Acc = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* zs = reinterpret_cast<T*>(smem_raw);
  const int64_t n = a.n, E = a.plans.num_entries;
  for_each_piece<T, R>(a, [&](const Piece& p) {
    stage_transposed<T, R>(a.z, a.ldz, p, n, zs);
    __syncthreads();
    const int32_t* __restrict__ ptr =
        p.plan >= 0 ? a.plans.ptr + static_cast<int64_t>(p.plan) * 2 * (n + 1) : nullptr;
    const int32_t* __restrict__ col = a.plans.idx + p.off;
    const int32_t* __restrict__ jdx = a.plans.idx + E + p.off;
    const T* __restrict__ s = a.s + p.adapter * a.kcap;
    const T* __restrict__ dl = a.dl + p.adapter * n;
    const Vec<T, R>* zv = reinterpret_cast<const Vec<T, R>*>(zs);
    for (int64_t r = threadIdx.x; r < n; r += blockDim.x) {
      Acc d = to_acc(dl[r]);
      if (a.base_scale) d += to_acc(a.base_scale[r]);
      Acc acc[R];
      const Vec<T, R> zr = zv[r];
#pragma unroll
      for (int b = 0; b < R; ++b) acc[b] = d * to_acc(zr.v[b]);
      const int32_t e0 = ptr ? ptr[r] : 0, e1 = ptr ? ptr[r + 1] : 0;
#pragma unroll 2
      for (int32_t e = e0; e < e1; ++e) {
        const Acc v = to_acc(s[jdx[e]]);
        const Vec<T, R> zc = zv[col[e]];
#pragma unroll
        for (int b = 0; b < R; ++b) acc[b] = fma(v, to_acc(zc.v[b]), acc[b]);
      }
      T* o = a.out + p.t0 * a.ldout + r;
#pragma unroll
      for (int b = 0; b < R; ++b, o += a.ldout)
        if (b < p.rows) *o = from_acc<T>(acc[b]);
    }
  });
}

template <typename T, int R>
__global__ void __launch_bounds__(kThreads) rotate_backward_kernel(RotateArgs<T> a) {
  using Acc = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* hs = reinterpret_cast<T*>(smem_raw);
  const int64_t n = a.n, E = a.plans.num_entries;
  const bool want_z = a.d_dl != nullptr || a.d_s != nullptr;
  for_each_piece<T, R>(a, [&](const Piece& p) {
    stage_transposed<T, R>(a.dh, a.lddh, p, n, hs);
    __syncthreads();
    const int32_t* __restrict__ ptr =
        p.plan >= 0 ? a.plans.ptr + static_cast<int64_t>(p.plan) * 2 * (n + 1) + (n + 1)
                    : nullptr;  // CSC half
    const int32_t* __restrict__ row = a.plans.idx + 2 * E + p.off;
    const int32_t* __restrict__ jdx = a.plans.idx + 3 * E + p.off;
    const T* __restrict__ s = a.s + p.adapter * a.kcap;
    const T* __restrict__ dl = a.dl + p.adapter * n;
    Acc* __restrict__ d_s = a.d_s ? a.d_s + p.adapter * a.kcap : nullptr;
    const Vec<T, R>* hv = reinterpret_cast<const Vec<T, R>*>(hs);
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
      Acc zc[R];
      const T* zp = a.z + p.t0 * a.ldz + c;
#pragma unroll
      for (int b = 0; b < R; ++b, zp += a.ldz) zc[b] = (want_z && b < p.rows) ? to_acc(*zp) : Acc(0);
      const Vec<T, R> hc = hv[c];
      const Acc d = to_acc(dl[c]);
      Acc acc[R];
      Acc dot_dl = 0;
#pragma unroll
      for (int b = 0; b < R; ++b) {
        const Acc h = to_acc(hc.v[b]);
        acc[b] = d * h;
        dot_dl = fma(h, zc[b], dot_dl);
      }
      if (a.d_dl) atomicAdd(a.d_dl + p.adapter * n + c, dot_dl);
      const int32_t e0 = ptr ? ptr[c] : 0, e1 = ptr ? ptr[c + 1] : 0;
      for (int32_t e = e0; e < e1; ++e) {
        const int32_t j = jdx[e];
        const Vec<T, R> hr = hv[row[e]];
        const Acc v = to_acc(s[j]);
        Acc dot = 0;
#pragma unroll
        for (int b = 0; b < R; ++b) {
          const Acc h = to_acc(hr.v[b]);
          acc[b] = fma(v, h, acc[b]);
          dot = fma(h, zc[b], dot);
        }
        if (d_s) atomicAdd(d_s + j, dot);
      }
      if (a.out) {
        T* o = a.out + p.t0 * a.ldout + c;
#pragma unroll
        for (int b = 0; b < R; ++b, o += a.ldout)
          if (b < p.rows) *o = from_acc<T>(acc[b]);
      }
    }
  });
}

/// Rows per block: the next power of two >= the mean segment length, capped at 16 and by the
/// shared memory the device offers for R * n values.
int choose_rows_per_block(const RotateProblem& p, size_t elem_bytes, int device) {
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

/// Opts `kernel` in to the device's whole dynamic shared memory, once per device (the
/// attribute is per function and device; setting it per call raced between host threads).
template <typename Kernel> void opt_in_smem_once(Kernel kernel, int device) {
  static std::array<std::once_flag, kMaxDevices> once;
  FROD_CHECK_ARG(device >= 0 && device < kMaxDevices, "rotate (CUDA): device index ", device,
                 " >= ", kMaxDevices);
  std::call_once(once[device], [&] {
    FROD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         max_smem_optin(device)));
  });
}

template <typename Kernel, typename Args>
void launch(Kernel kernel, int64_t grid, size_t smem, int device, cudaStream_t stream,
            const char* name, const Args& args) {
  if (grid <= 0) return;
  FROD_CHECK_ARG(grid < (int64_t(1) << 31), name, ": too many blocks (", grid, ")");
  if (smem > 48 * 1024) opt_in_smem_once(kernel, device);
  kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(args);
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
  FROD_CHECK_ARG(p.T >= 0 && p.n >= 0 && p.A >= 0 && p.kcap >= 0, "rotate: negative size");
  FROD_CHECK_ARG(p.seg.indptr != nullptr, "seg_indptr: null pointer");
  FROD_CHECK_ARG(p.seg.num_segments == 0 || p.seg.adapter != nullptr, "seg_adapter: null pointer");
  FROD_CHECK_ARG(p.A == 0 || p.plans.slot_plan != nullptr, "slot_plan: null pointer");
  FROD_CHECK_ARG(p.T < (int64_t(1) << 31) && p.n < (int64_t(1) << 31) &&
                     p.kcap < (int64_t(1) << 31),
                 "rotate (CUDA): T, n and k must be < 2^31");
}

template <typename T>
RotateArgs<T> make_args(const RotateProblem& p, int32_t* err) {
  RotateArgs<T> a{};
  a.T_rows = p.T; a.n = p.n; a.kcap = p.kcap; a.A = p.A;
  a.indptr = p.seg.indptr; a.adapter = p.seg.adapter; a.G = p.seg.num_segments;
  a.plans = p.plans;
  a.err = err;
  return a;
}

}  // namespace
}  // namespace cuda

void rotate_forward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dl,
                         const void* s, void* h, int64_t ldh, void* stream_ptr,
                         const void* base_scale, int32_t* error_flags) {
  using namespace cuda;
  check_common(p);
  FROD_CHECK_ARG(ldz >= p.n && ldh >= p.n, "row strides must be >= n");
  if (p.T == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  StreamDeviceGuard device_guard(stream);
  const int device = current_device();
  FROD_CUDA_DISPATCH_FLOAT(p.dtype, {
    const int Rv = choose_rows_per_block(p, sizeof(T), device);
    RotateArgs<T> args = make_args<T>(p, error_flags);
    args.z = static_cast<const T*>(z); args.ldz = ldz;
    args.dl = static_cast<const T*>(dl); args.base_scale = static_cast<const T*>(base_scale);
    args.s = static_cast<const T*>(s); args.out = static_cast<T*>(h); args.ldout = ldh;
    FROD_DISPATCH_R(Rv, launch(rotate_forward_kernel<T, R>, (p.T + R - 1) / R,
                               size_t(R) * p.n * sizeof(T), device, stream,
                               "rotate_forward_kernel", args));
  });
}

void rotate_backward_cuda(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                          int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                          void* d_dl, void* d_s, void* stream_ptr, int32_t* error_flags) {
  using namespace cuda;
  check_common(p);
  FROD_CHECK_ARG(ldz >= p.n && lddh >= p.n && (dz == nullptr || lddz >= p.n),
                 "row strides must be >= n");
  if (p.T == 0 || (dz == nullptr && d_dl == nullptr && d_s == nullptr)) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  StreamDeviceGuard device_guard(stream);
  const int device = current_device();
  FROD_CUDA_DISPATCH_FLOAT(p.dtype, {
    using Acc = acc_t<T>;
    const int Rv = choose_rows_per_block(p, sizeof(T), device);
    RotateArgs<T> args = make_args<T>(p, error_flags);
    args.z = static_cast<const T*>(z); args.ldz = ldz;
    args.dh = static_cast<const T*>(dh); args.lddh = lddh;
    args.dl = static_cast<const T*>(dl); args.s = static_cast<const T*>(s);
    args.out = static_cast<T*>(dz); args.ldout = lddz;
    args.d_dl = static_cast<Acc*>(d_dl); args.d_s = static_cast<Acc*>(d_s);
    FROD_DISPATCH_R(Rv, launch(rotate_backward_kernel<T, R>, (p.T + R - 1) / R,
                               size_t(R) * p.n * sizeof(T), device, stream,
                               "rotate_backward_kernel", args));
  });
}

}  // namespace frod
