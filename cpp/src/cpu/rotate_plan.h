// Work plan for the CPU rotation kernels: validated segments cut into row tiles, each tile
// pointing at the planned pattern (frod/pattern_plan.h) of its slots, and the split of tiles
// over threads.
//
// Per call only the segment-to-tile map is built, in O(G + T/32 + present slots); the
// patterns arrive planned. The buffers are reused between calls on the same thread, so the
// hot path does not allocate once warm.
#pragma once

#include <cstdint>
#include <vector>

#include "frod/rotate.h"

namespace frod::cpu {

/// Largest number of rows handled by one tile. Tiles are processed transposed (n x width)
/// so the sparse inner loops run over `width` contiguous rows.
constexpr int kMaxTileRows = 32;

/// Segments of at most this many rows are packed together into mixed tiles (forward only):
/// a decode batch where every row has its own adapter then still runs W-wide vector code
/// instead of one scalar row at a time. A mixed tile's lanes are segments (one lane per
/// segment, its one or two rows handled side by side), so each adapter's sparse values are
/// transposed into lanes once per tile, not once per row. Lanes of one mixed tile share a
/// plan; slots with different plans fill different mixed tiles.
constexpr int kMixedMaxSegmentRows = 2;

/// Most lanes (segments) in one mixed tile: 16 keeps the transposed values of a 64-row
/// block of the pattern in L1 and leaves a 64-row decode batch of 2-row segments two tiles
/// to share between threads.
constexpr int kMaxMixedLanes = 16;

/// Marks a mixed tile in Tile::adapter.
constexpr int32_t kMixedTile = -2;

/// A block of rows processed together.
///  - uniform tile: consecutive rows [t0, t0 + rows) of one segment, adapter >= 0;
///  - mixed tile (adapter == kMixedTile): `rows` lanes, lane b the short segment of rows
///    lane_row[lane0 + b] and (if >= 0) lane_row2[lane0 + b] with adapter
///    lane_adapter[lane0 + b]; the lanes' slots share `plan`.
struct Tile {
  int64_t t0;       ///< first row (uniform tiles)
  int32_t rows;     ///< rows in the tile, 1..kMaxTileRows (mixed tiles: lanes)
  int32_t width;    ///< rows (lanes) rounded up to a power of two (kernel instantiation)
  int32_t adapter;  ///< adapter index, or kMixedTile
  int32_t lane0;    ///< mixed tiles: offset into RotatePlan::lane_row / lane_row2 / lane_adapter
  int32_t plan;     ///< plan index of the tile's slots, -1 = none (S = 0)
  int32_t depth = 1;  ///< mixed tiles: 2 when some lane has a second row
};

/// The pattern of one plan in CSR order: entries of matrix row r are
/// e in [row_ptr[r], row_ptr[r+1]); their column is cols[e] and their value is
/// s[a, order ? order[e] : e].
struct CsrView {
  const int32_t* row_ptr;
  const int32_t* cols;
  const int32_t* order;
};

/// Everything a kernel needs besides the data pointers.
struct RotatePlan {
  std::vector<Tile> tiles;              ///< tiles of adapted rows
  std::vector<int64_t> lane_row;        ///< first row of each mixed-tile lane
  std::vector<int64_t> lane_row2;       ///< its second row, or -1
  std::vector<int32_t> lane_adapter;    ///< adapters of the mixed tiles' lanes
  std::vector<int64_t> base_rows;       ///< [begin, end) pairs of rows with no adapter
  std::vector<int32_t> present;         ///< adapters present, ascending
  int64_t adapted_rows = 0;

  /// Validates p's segments and the slot plans of the adapters present, and builds the
  /// tiles; allow_mixed packs short segments of slots sharing a plan into mixed tiles.
  void build(const RotateProblem& p, bool allow_mixed);
  /// The CSR of plan `plan` of p's table (an empty pattern for -1).
  CsrView pattern(const RotateProblem& p, int32_t plan) const;

 private:
  std::vector<int32_t> empty_row_ptr_;            ///< n+1 zeros
  std::vector<int32_t> seen_;                     ///< per adapter: present mark
  struct ShortSegment {
    int64_t row;      ///< first row
    int32_t rows;     ///< 1..kMixedMaxSegmentRows
    int32_t adapter;
  };
  std::vector<std::vector<ShortSegment>> pending_;  ///< per plan + 1: short segments pending
  std::vector<int32_t> pend_touched_;               ///< plan + 1 indices with pending lanes
};

/// Threads worth using for `work` multiply-adds split into `items` independent items.
int effective_threads(int requested, int64_t items, double work);

}  // namespace frod::cpu
