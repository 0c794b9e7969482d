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

/// A block of consecutive rows of one segment, all with the same adapter.
struct Tile {
  int64_t t0;       ///< first row
  int32_t rows;     ///< rows in the tile, 1..kMaxTileRows
  int32_t width;    ///< rows rounded up to a power of two (kernel instantiation)
  int32_t adapter;  ///< adapter index, >= 0
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
  std::vector<int64_t> base_rows;       ///< [begin, end) pairs of rows with no adapter
  std::vector<int32_t> present;         ///< adapters present, ascending
  std::vector<CsrPattern> csr;          ///< one per pattern: 1 if shared, else per adapter
  std::vector<int32_t> csr_of_adapter;  ///< adapter -> index into csr (-1 absent)
  int64_t adapted_rows = 0;

  void build(const RotateProblem& p);
  CsrView pattern_of(int32_t adapter) const { return csr[csr_of_adapter[adapter]].view(); }
};

/// Threads worth using for `work` multiply-adds split into `items` independent items.
int effective_threads(int requested, int64_t items, double work);

}  // namespace frod::cpu
