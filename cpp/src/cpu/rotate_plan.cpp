// Validation of segments and patterns, CSR conversion and tiling (see rotate_plan.h).
#include "rotate_plan.h"

#include <algorithm>

namespace frod::cpu {

namespace {

std::string entry_name(const char* what, int64_t adapter, int64_t j) {
  return adapter < 0 ? concat(what, "[", j, "]") : concat(what, "[", adapter, ", ", j, "]");
}

}  // namespace

void CsrPattern::build(const int32_t* rows, const int32_t* cols, int64_t k, int64_t n,
                       int64_t adapter) {
  row_ptr.assign(static_cast<size_t>(n) + 1, 0);
  cols_src = cols;
  identity = true;
  int32_t prev = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t r = rows[j], c = cols[j];
    FROD_CHECK_ARG(r >= 0 && r < n, entry_name("rows", adapter, j), " = ", r,
                   " is out of range [0, ", n, ")");
    FROD_CHECK_ARG(c >= 0 && c < n, entry_name("cols", adapter, j), " = ", c,
                   " is out of range [0, ", n, ")");
    FROD_CHECK_ARG(r != c, "rows/cols entry ", j, (adapter >= 0 ? concat(" of adapter ", adapter) : ""),
                   " is on the diagonal (", r, ", ", c,
                   "): S is off-diagonal, the diagonal belongs to dl");
    if (r < prev) identity = false;
    prev = r;
    ++row_ptr[r + 1];
  }
  for (int64_t r = 0; r < n; ++r) row_ptr[r + 1] += row_ptr[r];
  if (identity) return;
  // Counting sort by row (stable), remembering where each entry came from.
  cols_sorted.resize(static_cast<size_t>(k));
  order.resize(static_cast<size_t>(k));
  std::vector<int32_t> next(row_ptr.begin(), row_ptr.end() - 1);
  for (int64_t j = 0; j < k; ++j) {
    const int32_t e = next[rows[j]]++;
    cols_sorted[e] = cols[j];
    order[e] = static_cast<int32_t>(j);
  }
}

void RotatePlan::build(const RotateProblem& p, bool allow_mixed) {
  FROD_CHECK_ARG(p.T >= 0 && p.n >= 0 && p.A >= 0 && p.pat.k >= 0, "negative size");
  FROD_CHECK_ARG(p.T < (int64_t(1) << 31), "too many rows: ", p.T, " (limit 2^31 - 1)");
  FROD_CHECK_ARG(p.n < (int64_t(1) << 31) && p.pat.k < (int64_t(1) << 31),
                 "n or k too large for int32 indices");
  FROD_CHECK_ARG(p.num_threads >= 1, "num_threads must be >= 1, got ", p.num_threads);
  const Segments& s = p.seg;
  FROD_CHECK_ARG(s.num_segments >= 0, "seg_adapter: negative length");
  FROD_CHECK_ARG(s.indptr[0] == 0, "seg_indptr[0] must be 0, got ", s.indptr[0]);
  FROD_CHECK_ARG(s.indptr[s.num_segments] == p.T, "seg_indptr[-1] must equal the number of rows ",
                 p.T, ", got ", s.indptr[s.num_segments]);
  tiles.clear();
  lane_row.clear();
  lane_adapter.clear();
  base_rows.clear();
  const bool mixed = allow_mixed && !p.pat.per_adapter;
  int64_t pending_begin = 0;  // first lane not yet in a mixed tile
  auto emit_mixed = [&](bool final) {
    while (static_cast<int64_t>(lane_row.size()) - pending_begin >= (final ? 1 : kMaxTileRows)) {
      const int32_t rows = static_cast<int32_t>(
          std::min<int64_t>(kMaxTileRows, static_cast<int64_t>(lane_row.size()) - pending_begin));
      int32_t width = 1;
      while (width < rows) width <<= 1;
      if (rows == 1)  // a lone row: the uniform scalar kernel is cheaper
        tiles.push_back(Tile{lane_row[pending_begin], 1, 1, lane_adapter[pending_begin], 0});
      else
        tiles.push_back(Tile{0, rows, width, kMixedTile, static_cast<int32_t>(pending_begin)});
      pending_begin += rows;
    }
  };
  present.clear();
  csr_of_adapter.assign(static_cast<size_t>(p.A), -1);
  adapted_rows = 0;
  for (int64_t g = 0; g < s.num_segments; ++g) {
    const int64_t b = s.indptr[g], e = s.indptr[g + 1];
    FROD_CHECK_ARG(e >= b, "seg_indptr must be non-decreasing: seg_indptr[", g, "] = ", b,
                   " > seg_indptr[", g + 1, "] = ", e);
    const int32_t a = s.adapter[g];
    FROD_CHECK_ARG(a >= -1 && a < p.A, "seg_adapter[", g, "] = ", a, " is out of range [-1, ",
                   p.A, ")");
    if (e == b) continue;
    if (a < 0) {
      base_rows.push_back(b);
      base_rows.push_back(e);
      continue;
    }
    if (csr_of_adapter[a] == -1) {
      csr_of_adapter[a] = -2;  // mark present; CSR index assigned below
      present.push_back(a);
    }
    adapted_rows += e - b;
    if (mixed && e - b <= kMixedMaxSegmentRows) {
      for (int64_t t = b; t < e; ++t) {
        lane_row.push_back(t);
        lane_adapter.push_back(a);
      }
      emit_mixed(false);
      continue;
    }
    // Split into tiles of at most kMaxTileRows rows, as even as possible.
    const int64_t len = e - b;
    const int64_t ntiles = (len + kMaxTileRows - 1) / kMaxTileRows;
    for (int64_t i = 0; i < ntiles; ++i) {
      const int64_t t0 = b + len * i / ntiles, t1 = b + len * (i + 1) / ntiles;
      const int32_t rows = static_cast<int32_t>(t1 - t0);
      int32_t width = 1;
      while (width < rows) width <<= 1;
      tiles.push_back(Tile{t0, rows, width, a, 0});
    }
  }
  emit_mixed(true);
  std::sort(present.begin(), present.end());
  // Patterns: shared -> one CSR, per adapter -> one per present adapter.
  // A shared pattern is always validated; per-adapter patterns only for adapters in the batch
  // (checking every adapter's pattern would cost O(A * k) per call).
  const size_t ncsr = p.pat.per_adapter ? present.size() : 1;
  if (csr.size() < ncsr) csr.resize(ncsr);
  if (!p.pat.per_adapter) {
    csr[0].build(p.pat.rows, p.pat.cols, p.pat.k, p.n, -1);
    for (int32_t a : present) csr_of_adapter[a] = 0;
  } else {
    for (size_t i = 0; i < present.size(); ++i) {
      const int32_t a = present[i];
      csr[i].build(p.pat.rows + a * p.pat.k, p.pat.cols + a * p.pat.k, p.pat.k, p.n, a);
      csr_of_adapter[a] = static_cast<int32_t>(i);
    }
  }
}

int effective_threads(int requested, int64_t items, double work) {
  // Below ~64k multiply-adds a parallel region costs more than it saves.
  if (requested <= 1 || items <= 1 || work < 65536.0) return 1;
  return static_cast<int>(std::min<int64_t>(requested, items));
}

}  // namespace frod::cpu
