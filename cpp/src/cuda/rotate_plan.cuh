// Device-side planning for the rotation kernels, built per call on the stream (no host reads
// of index values, no synchronisation):
//   * segments: each segment is validated and cut into tiles of R rows; tile b belongs to the
//     segment g with tile_offset[g] <= b < tile_offset[g+1] (binary search in the kernels);
//   * pattern: CSR (entries grouped by matrix row r, for the forward gather
//     H[:, r] += s_j Z[:, c_j]) and, for the backward, CSC (grouped by column c, for
//     dZ[:, c] += s_j dH[:, r_j]). Within a row / column the entries are in ascending j, so
//     the summation order is fixed and results are bit-for-bit repeatable.
// Out-of-range entries never index memory: they are skipped and set a bit in `err`.
#pragma once

#include <cstdint>

#include "cuda_utils.h"
#include "frod/rotate.h"

namespace frod::cuda {

/// Bits of the error word written by the rotation kernels (see frod/rotate_cuda.h).
enum RotateError : int32_t {
  kBadSegment = 1,   ///< seg_indptr out of [0, T], decreasing, or not from 0 to T
  kBadAdapter = 2,   ///< seg_adapter outside [-1, A)
  kBadPattern = 4,   ///< a pattern entry outside [0, n) or on the diagonal
};

/// Compressed pattern of P patterns (P = A when per-adapter, else 1), each n x n with k slots:
/// entries of line i (a row for CSR, a column for CSC) of pattern p are
/// e in [ptr[p*(n+1)+i], ptr[p*(n+1)+i+1]); `other[p*k+e]` is the other coordinate and
/// `idx[p*k+e]` the index j into s[a, :].
struct Compressed {
  const int32_t* ptr;
  const int32_t* other;
  const int32_t* idx;
};

/// Segment tiling: tile_offset (G+1,), eff_adapter (G,) (-1 = no adapter), indptr (G+1,).
struct SegmentTiles {
  const int32_t* indptr;
  const int32_t* tile_offset;
  const int32_t* eff_adapter;
  int64_t num_segments;
};

/// Scratch memory and results of one plan. Lives until the enqueued kernels have run.
class RotatePlanCuda {
 public:
  /// Enqueues the planning kernels on `stream`. `rows_per_tile` is the kernels' R;
  /// want_csr / want_csc select the pattern layouts to build. err: device int32 (zeroed here).
  RotatePlanCuda(const RotateProblem& p, int rows_per_tile, bool want_csr, bool want_csc,
                 int32_t* err, cudaStream_t stream);

  SegmentTiles tiles() const { return tiles_; }
  Compressed csr() const { return csr_; }
  Compressed csc() const { return csc_; }
  /// Upper bound on the number of tiles (the launch grid): ceil(T / R) + G.
  int64_t max_tiles() const { return max_tiles_; }

 private:
  StreamBuffer buf_;
  SegmentTiles tiles_{};
  Compressed csr_{}, csc_{};
  int64_t max_tiles_ = 0;
};

/// Size in bytes of the scratch of a plan (for tests of the workspace arithmetic).
size_t rotate_plan_bytes(const RotateProblem& p, bool want_csr, bool want_csc);

/// Finds the tile's segment: the largest g with tile_offset[g] <= b (tile_offset ascending).
__device__ __forceinline__ int64_t tile_segment(const int32_t* tile_offset, int64_t G,
                                                int32_t b) {
  int64_t lo = 0, hi = G;  // invariant: tile_offset[lo] <= b < tile_offset[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (tile_offset[mid] <= b) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace frod::cuda
