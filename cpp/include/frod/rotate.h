// The per-segment FRoD rotation op (DESIGN.md section 2), torch-free.
//
// A batch of T rows is cut into G segments; segment g covers rows
// [indptr[g], indptr[g+1]) and uses adapter adapter[g] in [0, A), or -1 for none.
// Adapter slot a owns a scaling delta dl[a] (n,) and the values s[a, :k_a] of a sparse
// off-diagonal n x n matrix S_a with S_a[rows_j, cols_j] = s[a, j], where (rows, cols) is the
// pattern of the plan that the plan table assigns to slot a (frod/pattern_plan.h; k_a <= kcap,
// the row length of s). Slots may share a plan or each have their own.
//
// Forward, for every row t of a segment with adapter a (Z is T x n):
//     H[t, i]      = Z[t, i] * dl[a, i]
//     H[t, rows_j] += s[a, j] * Z[t, cols_j]        for j in 0..k_a-1
// i.e. H[t] = (diag(dl_a) + S_a) Z[t]. Rows of segments with adapter -1 get H[t] = 0.
//
// Backward, given dH (T x n):
//     dZ[t]      = (diag(dl_a) + S_a)^T dH[t]        (rows without adapter: 0)
//     d_dl[a, i] = sum_{t in a} dH[t, i] * Z[t, i]
//     d_s[a, j]  = sum_{t in a} dH[t, rows_j] * Z[t, cols_j]      (an SDDMM; 0 for j >= k_a)
// The backward writes the rows d_dl[a], d_s[a] of the adapters present in the batch
// (several segments may share an adapter: their sums add up) and leaves the other rows
// untouched. The sums are reduced in an order fixed by the thread count, so results are
// bit-for-bit repeatable for a given number of threads.
//
// Data types: Z, dH, H, dZ, dl and s share one dtype (float64, float32, bfloat16 or
// float16); arithmetic is float32 (float64 for float64 inputs). d_dl and d_s are written in
// that accumulation type (float32, or float64). Indices are int32.
#pragma once

#include <cstdint>

#include "frod/pattern_plan.h"
#include "frod/tensor_view.h"

namespace frod {

/// Batch segmentation: indptr (G+1,) int32, monotone, indptr[0] = 0, indptr[G] = T;
/// adapter (G,) int32 in [-1, A).
struct Segments {
  const int32_t* indptr = nullptr;
  const int32_t* adapter = nullptr;
  int64_t num_segments = 0;
};

/// Sizes and layout shared by forward and backward.
struct RotateProblem {
  int64_t T = 0;   ///< rows in the batch
  int64_t n = 0;   ///< width of Z and H (the layer's input features)
  int64_t A = 0;   ///< adapter slots in the dl / s tables
  int64_t kcap = 0;  ///< row length of s (A, kcap): every slot's k_a <= kcap
  Segments seg;
  PlanTable plans;   ///< slot -> pattern plan (frod/pattern_plan.h)
  DType dtype = DType::f32;  ///< dtype of Z, H, dH, dZ, dl, s
  int num_threads = 1;       ///< CPU threads to use (>= 1)
};

/// H = rotate(Z). z, h: (T, n) with row strides ldz, ldh (elements); dl (A, n), s (A, kcap)
/// contiguous. Per call only the segment-to-tile map is computed (the patterns come planned);
/// its buffers are reused, so a warm call does not allocate. Throws InvalidArgument for bad
/// segments, slot plans out of range or a slot whose k exceeds kcap.
void rotate_forward_cpu(const RotateProblem& p, const void* z, int64_t ldz, const void* dl,
                        const void* s, void* h, int64_t ldh);

/// Backward of rotate_forward_cpu. Any of dz, d_dl, d_s may be null (not computed).
/// dz: (T, n) in p.dtype with row stride lddz; d_dl: (A, n) and d_s: (A, kcap) contiguous in the
/// accumulation type (float64 if p.dtype is float64, else float32).
void rotate_backward_cpu(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                         int64_t lddh, const void* dl, const void* s, void* dz, int64_t lddz,
                         void* d_dl, void* d_s);

/// Validates segments and the slot plans of the adapters present against (T, n, A, kcap).
/// Throws InvalidArgument naming "seg_indptr", "seg_adapter" or "slot_plan". Host memory only.
void validate_rotate_problem(const RotateProblem& p);

/// Validates segments against T rows and A adapter slots: indptr monotone from 0 to T, adapters
/// in [-1, A). Throws InvalidArgument naming "seg_indptr" or "seg_adapter". Host memory.
void validate_segments_cpu(const Segments& seg, int64_t T, int64_t A);

/// Runs of equal ids: given ids (T,) int32 with -1 = no adapter, writes indptr (G+1,) and
/// adapter (G,) for the G maximal runs of equal consecutive ids and returns G. indptr and
/// adapter must have room for T+1 and T entries. Throws InvalidArgument if an id is < -1 or
/// >= num_adapters.
int64_t segments_from_ids_cpu(const int32_t* ids, int64_t T, int64_t num_adapters,
                              int32_t* indptr, int32_t* adapter);

}  // namespace frod
