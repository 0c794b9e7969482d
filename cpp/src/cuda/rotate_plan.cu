// Device-side planning of the rotation kernels: segment tiles and CSR / CSC pattern.
// See rotate_plan.cuh.
#include "rotate_plan.cuh"

namespace frod::cuda {
namespace {

constexpr int kScanThreads = 1024;

/// Validates segment g and writes its tile count (index g of tile_count, which is scanned into
/// tile_offset afterwards) and effective adapter. Bad ranges get 0 tiles; bad adapters -1.
__global__ void segments_kernel(const int32_t* __restrict__ indptr,
                                const int32_t* __restrict__ adapter, int64_t G, int64_t T,
                                int64_t A, int R, int32_t* __restrict__ tile_count,
                                int32_t* __restrict__ eff_adapter, int32_t* __restrict__ err) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g == 0) {
    tile_count[G] = 0;
    if (indptr[0] != 0 || indptr[G] != T) atomicOr(err, kBadSegment);
  }
  if (g >= G) return;
  const int64_t lo = indptr[g], hi = indptr[g + 1];
  int32_t a = adapter[g];
  if (a < -1 || a >= A) {
    atomicOr(err, kBadAdapter);
    a = -1;
  }
  int32_t tiles = 0;
  if (lo < 0 || hi < lo || hi > T) {
    atomicOr(err, kBadSegment);
  } else {
    tiles = static_cast<int32_t>((hi - lo + R - 1) / R);
  }
  tile_count[g] = tiles;
  eff_adapter[g] = a;
}

/// Counts valid entries per row (CSR) and per column (CSC) of every pattern.
__global__ void pattern_count_kernel(const int32_t* __restrict__ rows,
                                     const int32_t* __restrict__ cols, int64_t P, int64_t k,
                                     int64_t n, int32_t* __restrict__ row_cnt,
                                     int32_t* __restrict__ col_cnt, int32_t* __restrict__ err) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= P * k) return;
  const int64_t p = e / k;
  const int32_t r = rows[e], c = cols[e];
  if (r < 0 || r >= n || c < 0 || c >= n || r == c) {
    atomicOr(err, kBadPattern);
    return;
  }
  if (row_cnt) atomicAdd(row_cnt + p * (n + 1) + r, 1);
  if (col_cnt) atomicAdd(col_cnt + p * (n + 1) + c, 1);
}

/// In-place exclusive prefix sum of `len` int32 values; one block per array
/// (array b starts at data + b * stride).
__global__ void __launch_bounds__(kScanThreads)
    exclusive_scan_kernel(int32_t* __restrict__ data, int64_t len, int64_t stride) {
  constexpr int kWarps = kScanThreads / 32;
  __shared__ int32_t warp_total[kWarps];
  __shared__ int32_t warp_prefix[kWarps];
  __shared__ int32_t carry;
  int32_t* x = data + blockIdx.x * stride;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < len; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    const int32_t v = i < len ? x[i] : 0;
    int32_t incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      const int32_t w = warp_total[lane];
      int32_t s = w;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int32_t y = __shfl_up_sync(0xffffffffu, s, o);
        if (lane >= o) s += y;
      }
      warp_prefix[lane] = s - w;  // exclusive prefix of the warp totals
    }
    __syncthreads();
    const int32_t c0 = carry;
    if (i < len) x[i] = c0 + warp_prefix[warp] + incl - v;
    __syncthreads();
    if (threadIdx.x == kScanThreads - 1) carry = c0 + warp_prefix[kWarps - 1] + warp_total[kWarps - 1];
    __syncthreads();
  }
}

/// Scatters each valid entry into its row's (CSR) and column's (CSC) slot range.
__global__ void pattern_fill_kernel(const int32_t* __restrict__ rows,
                                    const int32_t* __restrict__ cols, int64_t P, int64_t k,
                                    int64_t n, const int32_t* __restrict__ row_ptr,
                                    int32_t* __restrict__ row_cur, int32_t* __restrict__ csr_col,
                                    int32_t* __restrict__ csr_idx,
                                    const int32_t* __restrict__ col_ptr,
                                    int32_t* __restrict__ col_cur, int32_t* __restrict__ csc_row,
                                    int32_t* __restrict__ csc_idx) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= P * k) return;
  const int64_t p = e / k;
  const int32_t j = static_cast<int32_t>(e - p * k);
  const int32_t r = rows[e], c = cols[e];
  if (r < 0 || r >= n || c < 0 || c >= n || r == c) return;
  if (row_ptr) {
    const int64_t pos = row_ptr[p * (n + 1) + r] + atomicAdd(row_cur + p * n + r, 1);
    csr_col[p * k + pos] = c;
    csr_idx[p * k + pos] = j;
  }
  if (col_ptr) {
    const int64_t pos = col_ptr[p * (n + 1) + c] + atomicAdd(col_cur + p * n + c, 1);
    csc_row[p * k + pos] = r;
    csc_idx[p * k + pos] = j;
  }
}

/// Sorts the entries of each line (row or column) by j, so the order no longer depends on the
/// atomics of the fill. One thread per line; lines are short (k / n entries on average).
__global__ void sort_lines_kernel(const int32_t* __restrict__ ptr, int32_t* __restrict__ other,
                                  int32_t* __restrict__ idx, int64_t P, int64_t n, int64_t k) {
  const int64_t line = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (line >= P * n) return;
  const int64_t p = line / n, i = line - p * n;
  const int32_t e0 = ptr[p * (n + 1) + i], e1 = ptr[p * (n + 1) + i + 1];
  int32_t* o = other + p * k;
  int32_t* x = idx + p * k;
  for (int32_t a = e0 + 1; a < e1; ++a) {
    const int32_t kj = x[a], ko = o[a];
    int32_t b = a - 1;
    while (b >= e0 && x[b] > kj) {
      x[b + 1] = x[b];
      o[b + 1] = o[b];
      --b;
    }
    x[b + 1] = kj;
    o[b + 1] = ko;
  }
}

struct Layout {
  size_t seg_count, eff, row_ptr, row_cur, row_col, row_idx, col_ptr, col_cur, col_row,
      col_idx, total;
};

Layout layout(const RotateProblem& p, bool want_csr, bool want_csc) {
  const int64_t P = p.pat.per_adapter ? p.A : 1;
  const size_t G = static_cast<size_t>(p.seg.num_segments);
  const size_t lines = static_cast<size_t>(P) * static_cast<size_t>(p.n + 1);
  const size_t entries = static_cast<size_t>(P) * static_cast<size_t>(p.pat.k);
  Layout l{};
  size_t off = 0;
  auto take = [&](size_t count, bool want) {
    const size_t at = off;
    if (want) off += align256(count * sizeof(int32_t));
    return at;
  };
  l.seg_count = take(G + 1, true);
  l.eff = take(G, true);
  l.row_ptr = take(lines, want_csr);
  l.row_cur = take(lines, want_csr);
  l.row_col = take(entries, want_csr);
  l.row_idx = take(entries, want_csr);
  l.col_ptr = take(lines, want_csc);
  l.col_cur = take(lines, want_csc);
  l.col_row = take(entries, want_csc);
  l.col_idx = take(entries, want_csc);
  l.total = off;
  return l;
}

unsigned blocks_for(int64_t items, int threads) {
  return static_cast<unsigned>((items + threads - 1) / threads);
}

}  // namespace

size_t rotate_plan_bytes(const RotateProblem& p, bool want_csr, bool want_csc) {
  return layout(p, want_csr, want_csc).total;
}

RotatePlanCuda::RotatePlanCuda(const RotateProblem& p, int R, bool want_csr, bool want_csc,
                               int32_t* err, cudaStream_t stream)
    : buf_(layout(p, want_csr, want_csc).total, stream) {
  const Layout l = layout(p, want_csr, want_csc);
  const int64_t G = p.seg.num_segments, n = p.n, k = p.pat.k;
  const int64_t P = p.pat.per_adapter ? p.A : 1;
  int32_t* tile_offset = buf_.as<int32_t>(l.seg_count);
  int32_t* eff = buf_.as<int32_t>(l.eff);
  max_tiles_ = (p.T + R - 1) / R + G;
  FROD_CUDA_CHECK(cudaMemsetAsync(err, 0, sizeof(int32_t), stream));

  constexpr int kThreads = 256;
  segments_kernel<<<blocks_for(G + 1, kThreads), kThreads, 0, stream>>>(
      p.seg.indptr, p.seg.adapter, G, p.T, p.A, R, tile_offset, eff, err);
  FROD_CUDA_CHECK_LAUNCH("rotate: segments_kernel");
  exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(tile_offset, G + 1, 0);
  FROD_CUDA_CHECK_LAUNCH("rotate: exclusive_scan_kernel (tiles)");
  tiles_ = SegmentTiles{p.seg.indptr, tile_offset, eff, G};

  if (!(want_csr || want_csc)) return;
  const size_t lines_bytes = static_cast<size_t>(P) * (n + 1) * sizeof(int32_t);
  int32_t* row_ptr = want_csr ? buf_.as<int32_t>(l.row_ptr) : nullptr;
  int32_t* row_cur = want_csr ? buf_.as<int32_t>(l.row_cur) : nullptr;
  int32_t* col_ptr = want_csc ? buf_.as<int32_t>(l.col_ptr) : nullptr;
  int32_t* col_cur = want_csc ? buf_.as<int32_t>(l.col_cur) : nullptr;
  for (int32_t* x : {row_ptr, row_cur, col_ptr, col_cur})
    if (x) FROD_CUDA_CHECK(cudaMemsetAsync(x, 0, lines_bytes, stream));
  if (P * k > 0) {
    pattern_count_kernel<<<blocks_for(P * k, kThreads), kThreads, 0, stream>>>(
        p.pat.rows, p.pat.cols, P, k, n, row_ptr, col_ptr, err);
    FROD_CUDA_CHECK_LAUNCH("rotate: pattern_count_kernel");
  }
  for (int32_t* x : {row_ptr, col_ptr}) {
    if (!x) continue;
    exclusive_scan_kernel<<<static_cast<unsigned>(P), kScanThreads, 0, stream>>>(x, n + 1, n + 1);
    FROD_CUDA_CHECK_LAUNCH("rotate: exclusive_scan_kernel (pattern)");
  }
  int32_t* row_col = want_csr ? buf_.as<int32_t>(l.row_col) : nullptr;
  int32_t* row_idx = want_csr ? buf_.as<int32_t>(l.row_idx) : nullptr;
  int32_t* col_row = want_csc ? buf_.as<int32_t>(l.col_row) : nullptr;
  int32_t* col_idx = want_csc ? buf_.as<int32_t>(l.col_idx) : nullptr;
  if (P * k > 0) {
    pattern_fill_kernel<<<blocks_for(P * k, kThreads), kThreads, 0, stream>>>(
        p.pat.rows, p.pat.cols, P, k, n, row_ptr, row_cur, row_col, row_idx, col_ptr, col_cur,
        col_row, col_idx);
    FROD_CUDA_CHECK_LAUNCH("rotate: pattern_fill_kernel");
    if (want_csr) {
      sort_lines_kernel<<<blocks_for(P * n, kThreads), kThreads, 0, stream>>>(row_ptr, row_col,
                                                                               row_idx, P, n, k);
      FROD_CUDA_CHECK_LAUNCH("rotate: sort_lines_kernel (csr)");
    }
    if (want_csc) {
      sort_lines_kernel<<<blocks_for(P * n, kThreads), kThreads, 0, stream>>>(col_ptr, col_row,
                                                                               col_idx, P, n, k);
      FROD_CUDA_CHECK_LAUNCH("rotate: sort_lines_kernel (csc)");
    }
  }
  csr_ = Compressed{row_ptr, row_col, row_idx};
  csc_ = Compressed{col_ptr, col_row, col_idx};
}

}  // namespace frod::cuda
