// Host construction of a pattern's rotation plan (see frod/pattern_plan.h); shared by the
// CPU and CUDA backends (the CUDA side uploads the arrays once).
#include "frod/pattern_plan.h"

#include <vector>

#include "frod/tensor_view.h"

namespace frod {
namespace {

std::string entry_name(const char* what, int64_t adapter, int64_t j) {
  return adapter < 0 ? concat(what, "[", j, "]") : concat(what, "[", adapter, ", ", j, "]");
}

/// Stable counting sort of entries j by key[j] (< n): fills line pointer `lp` (n+1),
/// `other_out[e]` = other[j] and `j_out[e]` = j.
void compress(const int32_t* key, const int32_t* other, int64_t k, int64_t n, int32_t* lp,
              int32_t* other_out, int32_t* j_out, std::vector<int32_t>& next) {
  for (int64_t i = 0; i <= n; ++i) lp[i] = 0;
  for (int64_t j = 0; j < k; ++j) ++lp[key[j] + 1];
  for (int64_t i = 0; i < n; ++i) lp[i + 1] += lp[i];
  next.assign(lp, lp + n);
  for (int64_t j = 0; j < k; ++j) {
    const int32_t e = next[key[j]]++;
    other_out[e] = other[j];
    j_out[e] = static_cast<int32_t>(j);
  }
}

}  // namespace

bool build_pattern_plan(const int32_t* rows, const int32_t* cols, int64_t k, int64_t n,
                        int64_t adapter, int32_t* ptr, int32_t* idx) {
  FROD_CHECK_ARG(n >= 0 && k >= 0, "pattern: negative size (n = ", n, ", k = ", k, ")");
  FROD_CHECK_ARG(n < (int64_t(1) << 31) && k < (int64_t(1) << 31),
                 "pattern: n or k too large for int32 indices");
  FROD_CHECK_ARG(k == 0 || (rows && cols), "rows/cols: null pointer");
  bool sorted = true;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t r = rows[j], c = cols[j];
    FROD_CHECK_ARG(r >= 0 && r < n, entry_name("rows", adapter, j), " = ", r,
                   " is out of range [0, ", n, ")");
    FROD_CHECK_ARG(c >= 0 && c < n, entry_name("cols", adapter, j), " = ", c,
                   " is out of range [0, ", n, ")");
    FROD_CHECK_ARG(r != c, "rows/cols entry ", j,
                   (adapter >= 0 ? concat(" of adapter ", adapter) : ""),
                   " is on the diagonal (", r, ", ", c,
                   "): S is off-diagonal, the diagonal belongs to dl");
    if (j > 0 && r < rows[j - 1]) sorted = false;
  }
  std::vector<int32_t> next;
  compress(rows, cols, k, n, ptr, idx, idx + k, next);                   // CSR
  compress(cols, rows, k, n, ptr + (n + 1), idx + 2 * k, idx + 3 * k, next);  // CSC
  return sorted;
}

}  // namespace frod
