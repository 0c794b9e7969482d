// Work plan for the CPU rotation kernels: validated segments cut into row tiles, the sparse
// pattern in compressed-row (CSR) order, and the split of tiles over threads.
//
// A plan is rebuilt per call in O(G + T/32 + n + k) (plus O(A_present * (n + k)) for
// per-adapter patterns); its buffers are reused between calls on the same thread, so the hot
// path does not allocate once warm.
#pragma once

#include <cstdint>
#include <vector>

#include "frod/rotate.h"

namespace frod::cpu {

/// Largest number of rows handled by one tile. Tiles are processed transposed (n x width)
/// so the sparse inner loops run over `width` contiguous rows.
constexpr int kMaxTileRows = 32;

/// Segments of at most this many rows are packed together into mixed tiles (forward with
/// a shared pattern only): a decode batch where every row has its own adapter then still
/// runs W-wide vector code instead of one scalar row at a time.
constexpr int kMixedMaxSegmentRows = 2;

/// Marks a mixed tile in Tile::adapter.
constexpr int32_t kMixedTile = -2;

/// A block of rows processed together.
///  - uniform tile: consecutive rows [t0, t0 + rows) of one segment, adapter >= 0;
///  - mixed tile (adapter == kMixedTile): rows lane_row[lane0 + b] with adapters
///    lane_adapter[lane0 + b], b < rows, from several short segments (shared pattern).
struct Tile {
  int64_t t0;       ///< first row (uniform tiles)
  int32_t rows;     ///< rows in the tile, 1..kMaxTileRows
  int32_t width;    ///< rows rounded up to a power of two (kernel instantiation)
  int32_t adapter;  ///< adapter index, or kMixedTile
  int32_t lane0;    ///< mixed tiles: offset into RotatePlan::lane_row / lane_adapter
};

/// The pattern of one adapter in CSR order: entries of matrix row r are
/// e in [row_ptr[r], row_ptr[r+1]); their column is cols[e] and their value is
/// s[a, order ? order[e] : e].
struct CsrView {
  const int32_t* row_ptr;
  const int32_t* cols;
  const int32_t* order;
};

/// CSR form of one (rows, cols) pattern, owning its buffers when it had to be sorted.
struct CsrPattern {
  std::vector<int32_t> row_ptr;
  std::vector<int32_t> cols_sorted;
  std::vector<int32_t> order;
  bool identity = true;  ///< pattern was already sorted by row: use the caller's cols
  const int32_t* cols_src = nullptr;

  /// Validates and converts rows/cols (k entries each, values in [0, n), rows != cols).
  /// `adapter` (-1 for a shared pattern) is named in error messages.
  void build(const int32_t* rows, const int32_t* cols, int64_t k, int64_t n, int64_t adapter);
  CsrView view() const {
    return CsrView{row_ptr.data(), identity ? cols_src : cols_sorted.data(),
                   identity ? nullptr : order.data()};
  }
};

/// Everything a kernel needs besides the data pointers.
struct RotatePlan {
  std::vector<Tile> tiles;              ///< tiles of adapted rows, in segment order
  std::vector<int64_t> lane_row;        ///< rows of the mixed tiles' lanes
  std::vector<int32_t> lane_adapter;    ///< adapters of the mixed tiles' lanes
  std::vector<int64_t> base_rows;       ///< [begin, end) pairs of rows with no adapter
  std::vector<int32_t> present;         ///< adapters present, ascending
  std::vector<CsrPattern> csr;          ///< one per pattern: 1 if shared, else per adapter
  std::vector<int32_t> csr_of_adapter;  ///< adapter -> index into csr (-1 absent)
  int64_t adapted_rows = 0;

  /// Validates p and builds the tiles; allow_mixed packs short segments into mixed tiles
  /// (only used when the pattern is shared).
  void build(const RotateProblem& p, bool allow_mixed);
  /// The pattern of an adapter present in the batch (any adapter for a shared pattern).
  CsrView pattern_of(int32_t adapter) const {
    return csr[adapter < 0 ? 0 : csr_of_adapter[adapter]].view();
  }
};

/// Threads worth using for `work` multiply-adds split into `items` independent items.
int effective_threads(int requested, int64_t items, double work);

}  // namespace frod::cpu
