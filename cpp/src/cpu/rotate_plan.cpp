// Validation of segments and slot plans, and the segment-to-tile map (see rotate_plan.h).
#include "rotate_plan.h"

#include <algorithm>

namespace frod::cpu {

namespace {

int32_t width_for(int64_t rows) {
  int32_t width = 1;
  while (width < rows) width <<= 1;
  return width;
}

/// Checks slot a's plan against the table and kcap (O(1)).
void check_slot_plan(const RotateProblem& p, int32_t a) {
  const PlanTable& t = p.plans;
  const int32_t pl = t.slot_plan[a];
  FROD_CHECK_ARG(pl >= -1 && pl < t.num_plans, "slot_plan[", a, "] = ", pl,
                 " is out of range [-1, ", t.num_plans, ")");
  if (pl < 0) return;
  const int32_t* ptr = t.ptr + static_cast<int64_t>(pl) * 2 * (p.n + 1);
  const int64_t k = ptr[p.n], off = t.meta[2 * pl];
  FROD_CHECK_ARG(ptr[0] == 0 && k >= 0 && ptr[2 * (p.n + 1) - 1] == k,
                 "plan ", pl, " of slot ", a, " is corrupt (row pointers)");
  FROD_CHECK_ARG(k <= p.kcap, "s: slot ", a, " has a pattern of k = ", k,
                 " entries but s has only ", p.kcap, " columns");
  FROD_CHECK_ARG(off >= 0 && off + k <= t.num_entries, "plan ", pl, " of slot ", a,
                 " is corrupt (entries outside the table)");
}

}  // namespace

CsrView RotatePlan::pattern(const RotateProblem& p, int32_t plan) const {
  if (plan < 0) return CsrView{empty_row_ptr_.data(), nullptr, nullptr};
  const PlanTable& t = p.plans;
  const int64_t off = t.meta[2 * plan];
  const bool identity = t.meta[2 * plan + 1] != 0;
  const int32_t* cols = t.idx + off;
  const int32_t* order = t.idx + t.num_entries + off;
  return CsrView{t.ptr + static_cast<int64_t>(plan) * 2 * (p.n + 1), cols,
                 identity ? nullptr : order};
}

void RotatePlan::build(const RotateProblem& p, bool allow_mixed) {
  FROD_CHECK_ARG(p.T >= 0 && p.n >= 0 && p.A >= 0 && p.kcap >= 0, "negative size");
  FROD_CHECK_ARG(p.T < (int64_t(1) << 31), "too many rows: ", p.T, " (limit 2^31 - 1)");
  FROD_CHECK_ARG(p.n < (int64_t(1) << 31) && p.kcap < (int64_t(1) << 31),
                 "n or k too large for int32 indices");
  FROD_CHECK_ARG(p.num_threads >= 1, "num_threads must be >= 1, got ", p.num_threads);
  const Segments& s = p.seg;
  validate_segments_cpu(s, p.T, p.A);
  tiles.clear();
  lane_row.clear();
  lane_row2.clear();
  lane_adapter.clear();
  base_rows.clear();
  present.clear();
  adapted_rows = 0;
  if (static_cast<int64_t>(empty_row_ptr_.size()) != p.n + 1) empty_row_ptr_.assign(p.n + 1, 0);
  if (static_cast<int64_t>(seen_.size()) < p.A) seen_.resize(p.A);
  std::fill(seen_.begin(), seen_.begin() + p.A, 0);
  if (static_cast<int64_t>(pending_.size()) < p.plans.num_plans + 1)
    pending_.resize(p.plans.num_plans + 1);
  pend_touched_.clear();

  // Moves `count` pending short segments of plan slot q into one mixed tile (a lone one
  // into a uniform tile: the uniform kernel is cheaper for it).
  auto emit = [&](int32_t q, int64_t count) {
    std::vector<ShortSegment>& segs = pending_[q];
    if (count == 1) {
      const ShortSegment& g = segs[0];
      tiles.push_back(Tile{g.row, g.rows, width_for(g.rows), g.adapter, 0, q - 1});
    } else {
      tiles.push_back(Tile{0, static_cast<int32_t>(count), width_for(count), kMixedTile,
                           static_cast<int32_t>(lane_adapter.size()), q - 1, 1});
      for (int64_t i = 0; i < count; ++i) {
        const ShortSegment& g = segs[i];
        lane_row.push_back(g.row);
        lane_row2.push_back(g.rows > 1 ? g.row + 1 : -1);
        lane_adapter.push_back(g.adapter);
        tiles.back().depth = std::max(tiles.back().depth, g.rows);
      }
    }
    segs.erase(segs.begin(), segs.begin() + count);
  };

  for (int64_t g = 0; g < s.num_segments; ++g) {
    const int64_t b = s.indptr[g], e = s.indptr[g + 1];
    const int32_t a = s.adapter[g];
    if (e == b) continue;
    if (a < 0) {
      base_rows.push_back(b);
      base_rows.push_back(e);
      continue;
    }
    if (!seen_[a]) {
      check_slot_plan(p, a);
      seen_[a] = 1;
      present.push_back(a);
    }
    const int32_t plan = p.plans.slot_plan[a];
    adapted_rows += e - b;
    if (allow_mixed && e - b <= kMixedMaxSegmentRows) {
      const int32_t q = plan + 1;
      if (pending_[q].empty()) pend_touched_.push_back(q);
      pending_[q].push_back(ShortSegment{b, static_cast<int32_t>(e - b), a});
      if (static_cast<int64_t>(pending_[q].size()) >= kMaxMixedLanes) emit(q, kMaxMixedLanes);
      continue;
    }
    // Split into tiles of at most kMaxTileRows rows, as even as possible.
    const int64_t len = e - b;
    const int64_t ntiles = (len + kMaxTileRows - 1) / kMaxTileRows;
    for (int64_t i = 0; i < ntiles; ++i) {
      const int64_t t0 = b + len * i / ntiles, t1 = b + len * (i + 1) / ntiles;
      tiles.push_back(Tile{t0, static_cast<int32_t>(t1 - t0), width_for(t1 - t0), a, 0, plan});
    }
  }
  for (int32_t q : pend_touched_) {
    while (!pending_[q].empty())
      emit(q, std::min<int64_t>(kMaxMixedLanes, static_cast<int64_t>(pending_[q].size())));
  }
  std::sort(present.begin(), present.end());
}

int effective_threads(int requested, int64_t items, double work) {
  // Below ~64k multiply-adds a parallel region costs more than it saves.
  if (requested <= 1 || items <= 1 || work < 65536.0) return 1;
  return static_cast<int>(std::min<int64_t>(requested, items));
}

}  // namespace frod::cpu
