// Rotation plans: a sparse pattern compressed once, on the host, into the order the CPU and
// CUDA kernels traverse it, and the table that maps adapter slots to plans. Torch-free.
//
// A pattern is k off-diagonal entries (rows[j], cols[j]) of an n x n matrix; adapter values
// s[a, j] follow the pattern's own order j. Its plan, built by build_pattern_plan, is
//
//     ptr (2, n+1) int32   ptr[0] = CSR row pointer: entries of row r are e in
//                                    [ptr[0][r], ptr[0][r+1]), sorted by r, then by j
//                          ptr[1] = CSC column pointer, the same by column
//     idx (4, k)   int32   idx[0][e] = column of CSR entry e,  idx[1][e] = its j
//                          idx[2][e] = row of CSC entry e,     idx[3][e] = its j
//
// so the forward H[r] += s[j] Z[c] walks CSR rows (each output element written once) and
// the CUDA backward dZ[c] += s[j] dH[r] walks CSC columns. `identity` means the pattern was
// already sorted by row (idx[1][e] == e), which lets the CPU kernels read s without the
// indirection.
//
// A table of P plans (PlanTable) concatenates them:
//     ptr  (P, 2, n+1) int32   each plan's ptr, relative to its own entries
//     idx  (4, E)      int32   plan p's entries at columns [meta[p][0], meta[p][0] + k_p)
//     meta (P, 2)      int64   meta[p] = {entry offset, identity flag}
//     slot_plan (A,)   int32   plan of adapter slot a, or -1 (S_a = 0: dl only)
// with k_p = ptr[p][0][n]. Slot a's values are s[a, :k_p] of an (A, kcap) table, k_p <= kcap,
// so slots with patterns of different k share one call. Tables are built from plans made by
// build_pattern_plan, so a call checks only the O(1)-per-slot metadata (plan index, k_p <= kcap,
// entries in range of E), never the entries themselves.
#pragma once

#include <cstdint>

namespace frod {

/// Pointers of a plan table (host memory for the CPU kernels, device memory for CUDA).
struct PlanTable {
  int64_t num_plans = 0;        ///< P
  int64_t num_entries = 0;      ///< E (columns of idx)
  const int64_t* meta = nullptr;       ///< (P, 2)
  const int32_t* ptr = nullptr;        ///< (P, 2, n+1)
  const int32_t* idx = nullptr;        ///< (4, E)
  const int32_t* slot_plan = nullptr;  ///< (A,)
};

/// Validates a pattern (0 <= rows, cols < n, rows != cols) and writes its plan into
/// ptr (2 * (n + 1) int32) and idx (4 * k int32), both host memory. Returns true when the
/// pattern was already sorted by row. `adapter` >= 0 is named in error messages
/// ("rows[a, j]"), -1 names a shared pattern ("rows[j]"). O(n + k), no allocation beyond
/// O(n) scratch. Throws InvalidArgument.
bool build_pattern_plan(const int32_t* rows, const int32_t* cols, int64_t k, int64_t n,
                        int64_t adapter, int32_t* ptr, int32_t* idx);

}  // namespace frod
