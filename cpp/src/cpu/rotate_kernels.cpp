// CPU kernels of the FRoD rotation op (semantics in frod/rotate.h).
//
// Compiled once per ISA with FROD_ISA_NS naming the namespace (see rotate_kernels.h).
// Each tile of up to 32 rows of one segment is loaded transposed into a thread-local
// n x W buffer (W = rows rounded up to a power of two), so every sparse entry becomes a
// W-wide vector operation on contiguous memory:
//   forward   Ht[r, :]  = dl[r] * Zt[r, :] + sum_{e in row r} s[e] * Zt[cols[e], :]
//   backward  dZt[c, :] += s[e] * dHt[r, :],  d_s[e] += <dHt[r, :], Zt[c, :]>,
//             d_dl[r] += <dHt[r, :], Zt[r, :]>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define FROD_X86_TRANSPOSE 1
#endif

#include "rotate_kernels.h"
#include "scalar_types.h"

#ifndef FROD_ISA_NS
#error "FROD_ISA_NS must name the ISA namespace"
#endif

namespace frod::cpu::FROD_ISA_NS {
namespace {

/// Pointers and sizes of one call, typed.
template <typename In> struct Args {
  using Acc = typename Scalar<In>::acc;
  int64_t n, k;
  const In* z; int64_t ldz;
  const In* dh; int64_t lddh;
  const In* dl;
  const In* s;
  In* out; int64_t ldout;  // h (forward) or dz (backward)
  Acc* d_dl;
  Acc* d_s;
};

/// Grow-only per-thread scratch, reused across calls.
template <typename Acc> Acc* scratch(size_t slot, size_t count) {
  thread_local std::vector<Acc> bufs[6];
  std::vector<Acc>& b = bufs[slot];
  if (b.size() < count) b.resize(count);
  return b.data();
}

/// W lanes of Acc as NV vectors of L lanes (GCC vector extensions; lowered to AVX2 ymm
/// registers in the avx2 build, to SSE pairs in the generic one). Writing the lane loops
/// explicitly keeps the compiler from vectorising across sparse entries with gathers.
template <typename Acc, int W> struct Lanes {
  static constexpr int L = (W * static_cast<int>(sizeof(Acc)) >= 32) ? 32 / static_cast<int>(sizeof(Acc)) : W;
  static constexpr int NV = W / L;
  typedef Acc V __attribute__((vector_size(L * sizeof(Acc)), aligned(sizeof(Acc)), may_alias));
  static const V* at(const Acc* p) { return reinterpret_cast<const V*>(p); }
  static V* at(Acc* p) { return reinterpret_cast<V*>(p); }
  static Acc hsum(V v) {
#ifdef FROD_X86_TRANSPOSE
    if constexpr (L == 8 && sizeof(Acc) == 4) {
      __m256 x;
      std::memcpy(&x, &v, sizeof(x));
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
      h = _mm_hadd_ps(h, h);
      return _mm_cvtss_f32(_mm_hadd_ps(h, h));
    }
#endif
    Acc s = 0;
    for (int i = 0; i < L; ++i) s += v[i];
    return s;
  }
};

#ifdef FROD_X86_TRANSPOSE
/// 8 consecutive values of a table row as floats.
template <typename In> inline __m256 load8(const In* p) {
  if constexpr (std::is_same_v<In, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<In, bf16_t>) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}

/// dst[q * ld + b] = src[b][e + q] for b, q < 8: an 8 x 8 transpose in registers.
template <typename In>
inline void transpose8(const In* const* src, int64_t e, float* dst, int64_t ld) {
  const __m256 r0 = load8(src[0] + e), r1 = load8(src[1] + e), r2 = load8(src[2] + e),
               r3 = load8(src[3] + e), r4 = load8(src[4] + e), r5 = load8(src[5] + e),
               r6 = load8(src[6] + e), r7 = load8(src[7] + e);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ld, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ld, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/// st[(e - e_lo) * W + b] = src[b][order ? order[e] : e] for e in [e_lo, e_hi), b < nsrc:
/// rows of W tables (or W matrix rows) transposed into W-wide lane vectors. Lanes >= nsrc
/// are not written.
template <int W, typename In, typename Acc>
inline void gather_lanes(const In* const* src, int nsrc, int64_t e_lo, int64_t e_hi,
                         const int32_t* order, Acc* st) {
  int b_done = 0;
#ifdef FROD_X86_TRANSPOSE
  if constexpr (W >= 8 && std::is_same_v<Acc, float>) {
    if (order == nullptr) {
      const int b_full = nsrc / 8 * 8;
      int64_t e = e_lo;
      for (; e + 8 <= e_hi; e += 8)
        for (int b0 = 0; b0 < b_full; b0 += 8) transpose8(src + b0, e, st + (e - e_lo) * W + b0, W);
      for (int b = 0; b < b_full; ++b)
        for (int64_t f = e; f < e_hi; ++f) st[(f - e_lo) * W + b] = to_float(src[b][f]);
      b_done = b_full;
    }
  }
#endif
  for (int b = b_done; b < nsrc; ++b) {
    const In* sb = src[b];
    if (order == nullptr)
      for (int64_t f = e_lo; f < e_hi; ++f) st[(f - e_lo) * W + b] = to_float(sb[f]);
    else
      for (int64_t f = e_lo; f < e_hi; ++f) st[(f - e_lo) * W + b] = to_float(sb[order[f]]);
  }
}

/// dst[b][i] = buf[i * W + b] for i < n, b < rows: lane vectors back to matrix rows.
template <int W, typename In, typename Acc>
inline void scatter_lanes(const Acc* buf, int rows, In* const* dst, int64_t n) {
  int b_done = 0;
#ifdef FROD_X86_TRANSPOSE
  if constexpr (W >= 8 && std::is_same_v<In, float> && std::is_same_v<Acc, float>) {
    const int b_full = rows / 8 * 8;
    const float* lanes[8];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      for (int b0 = 0; b0 < b_full; b0 += 8) {
        // transpose8 reads lanes[q] + b0 .. (8 consecutive lanes of row i + q of buf)
        for (int q = 0; q < 8; ++q) lanes[q] = buf + (i + q) * W + b0;
        float tmp[64];
        transpose8(lanes, 0, tmp, 8);
        for (int b = 0; b < 8; ++b) std::memcpy(dst[b0 + b] + i, tmp + b * 8, 8 * sizeof(float));
      }
    }
    for (int b = 0; b < b_full; ++b)
      for (int64_t j = i; j < n; ++j) dst[b][j] = buf[j * W + b];
    b_done = b_full;
  }
#endif
  for (int b = b_done; b < rows; ++b) {
    In* o = dst[b];
    for (int64_t i = 0; i < n; ++i) o[i] = Scalar<In>::store(buf[i * W + b]);
  }
}

/// buf (n x W) = transpose of the given matrix rows (row b at rows[b]); lanes >= nrows are 0.
template <int W, typename In, typename Acc>
inline void load_rows(const In* const* rows, int nrows, int64_t n, Acc* buf) {
  if (nrows < W) std::fill(buf, buf + n * W, Acc(0));
  constexpr int64_t kBlock = 256;  // keeps the written part of buf in L1
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const In* shifted[W];
    for (int b = 0; b < nrows; ++b) shifted[b] = rows[b] + i0;
    gather_lanes<W>(shifted, nrows, 0, std::min(kBlock, n - i0), nullptr, buf + i0 * W);
  }
}

/// Row pointers x + (t0 + b) * ld for b < rows.
template <int W, typename T>
inline void row_pointers(T* x, int64_t ld, int64_t t0, int rows, T** out) {
  for (int b = 0; b < rows; ++b) out[b] = x + (t0 + b) * ld;
}

/// One tile of the forward. The accumulator of each output row r is W lanes held in
/// registers (fixed trip counts), written once to the transposed buffer ht.
template <int W, typename In, bool kIdentity>
void forward_rows(const Args<In>& a, const Tile& t, const CsrView& csr,
                  const typename Args<In>::Acc* zt, typename Args<In>::Acc* ht) {
  using Acc = typename Args<In>::Acc;
  const In* dl = a.dl + t.adapter * a.n;
  const In* s = a.s + t.adapter * a.k;
  const int32_t* rp = csr.row_ptr;
  const int32_t* cols = csr.cols;
  using Ln = Lanes<Acc, W>;
  using V = typename Ln::V;
  for (int64_t r = 0; r < a.n; ++r) {
    V acc[Ln::NV];
    const Acc d = to_float(dl[r]);
    const V* zr = Ln::at(zt + r * W);
    for (int i = 0; i < Ln::NV; ++i) acc[i] = d * zr[i];
    for (int32_t e = rp[r], e1 = rp[r + 1]; e < e1; ++e) {
      const Acc v = to_float(s[kIdentity ? e : csr.order[e]]);
      const V* zc = Ln::at(zt + static_cast<int64_t>(cols[e]) * W);
      for (int i = 0; i < Ln::NV; ++i) acc[i] += v * zc[i];
    }
    V* hr = Ln::at(ht + r * W);
    for (int i = 0; i < Ln::NV; ++i) hr[i] = acc[i];
  }
}

template <int W, typename In>
void forward_tile(const Args<In>& a, const Tile& t, const CsrView& csr,
                  typename Args<In>::Acc* zt, typename Args<In>::Acc* ht) {
  const In* zrows[W];
  row_pointers<W>(a.z, a.ldz, t.t0, t.rows, zrows);
  load_rows<W>(zrows, t.rows, a.n, zt);
  if (csr.order == nullptr)
    forward_rows<W, In, true>(a, t, csr, zt, ht);
  else
    forward_rows<W, In, false>(a, t, csr, zt, ht);
  In* orows[W];
  row_pointers<W>(a.out, a.ldout, t.t0, t.rows, orows);
  scatter_lanes<W>(ht, t.rows, orows, a.n);
}

/// The rows of a mixed tile's FMA loop: Ht (and Ht2, the lanes' second rows, when kTwo)
/// = dl * Zt + S Zt over the pattern rows [r0, r1), the lanes' s values transposed in st
/// (entries from e_lo). dlt may alias ht: dlt[r] is read before ht[r] is written.
template <int W, typename Acc, bool kTwo>
__attribute__((always_inline)) inline void mixed_rows(const CsrView& csr, int64_t r0, int64_t r1,
                                                      int32_t e_lo, const Acc* st, const Acc* dlt,
                                                      const Acc* zt, const Acc* zt2, Acc* ht,
                                                      Acc* ht2) {
  using Ln = Lanes<Acc, W>;
  using V = typename Ln::V;
  for (int64_t r = r0; r < r1; ++r) {
    const V* dv = Ln::at(dlt + r * W);
    V acc[Ln::NV], acc2[Ln::NV];
    {
      const V* zr = Ln::at(zt + r * W);
      for (int i = 0; i < Ln::NV; ++i) acc[i] = dv[i] * zr[i];
      if constexpr (kTwo) {
        const V* zr2 = Ln::at(zt2 + r * W);
        for (int i = 0; i < Ln::NV; ++i) acc2[i] = dv[i] * zr2[i];
      }
    }
    for (int32_t e = csr.row_ptr[r], e1 = csr.row_ptr[r + 1]; e < e1; ++e) {
      const V* sv = Ln::at(st + static_cast<int64_t>(e - e_lo) * W);
      const int64_t c = static_cast<int64_t>(csr.cols[e]) * W;
      const V* zc = Ln::at(zt + c);
      for (int i = 0; i < Ln::NV; ++i) acc[i] += sv[i] * zc[i];
      if constexpr (kTwo) {
        const V* zc2 = Ln::at(zt2 + c);
        for (int i = 0; i < Ln::NV; ++i) acc2[i] += sv[i] * zc2[i];
      }
    }
    V* hr = Ln::at(ht + r * W);
    for (int i = 0; i < Ln::NV; ++i) hr[i] = acc[i];
    if constexpr (kTwo) {
      V* hr2 = Ln::at(ht2 + r * W);
      for (int i = 0; i < Ln::NV; ++i) hr2[i] = acc2[i];
    }
  }
}

/// Scratch buffers of one mixed tile (n x kMaxTileRows each; W <= kMaxMixedLanes used).
template <typename Acc> struct MixedBuffers {
  Acc* zt;   ///< lanes' first rows, transposed
  Acc* ht;   ///< their outputs (doubles as the per-lane dl table)
  Acc* zt2;  ///< lanes' second rows (a one-row lane repeats its first; result dropped)
  Acc* ht2;  ///< their outputs
};

/// A mixed tile: lane b is one short segment of slot lane_adapter[b], rows lane_row[b] and
/// lane_row2[b] (-1: none), all lanes' slots on one pattern. Per-lane values dl[a_b, r] and
/// s[a_b, e] are transposed into W-wide vectors once per tile, block by block (64 output
/// rows at a time, so the s buffer stays in L1), and each serves both rows of its lane: a
/// row's arithmetic is that of the uniform kernel (dl * z, then the row's entries in CSR
/// order), so its result does not depend on its batch mates.
template <int W, typename In>
void forward_mixed_tile(const Args<In>& a, const RotatePlan& plan, const Tile& t,
                        const CsrView& csr, const MixedBuffers<typename Args<In>::Acc>& buf) {
  using Acc = typename Args<In>::Acc;
  const int64_t n = a.n;
  const int64_t* lrow = plan.lane_row.data() + t.lane0;
  const int64_t* lrow2 = plan.lane_row2.data() + t.lane0;
  const int32_t* lad = plan.lane_adapter.data() + t.lane0;
  const bool two = t.depth > 1;
  const In* rows_in[W];
  for (int b = 0; b < t.rows; ++b) rows_in[b] = a.z + lrow[b] * a.ldz;
  load_rows<W>(rows_in, t.rows, n, buf.zt);
  if (two) {
    // a lane without a second row repeats its first (finite, and that lane's second
    // result is thrown away)
    for (int b = 0; b < t.rows; ++b)
      rows_in[b] = a.z + (lrow2[b] >= 0 ? lrow2[b] : lrow[b]) * a.ldz;
    load_rows<W>(rows_in, t.rows, n, buf.zt2);
  }
  const In* srow[W];
  const In* dlrow[W];
  for (int b = 0; b < W; ++b) {  // padding lanes reuse lane 0's tables (their z is 0)
    const int64_t ad = lad[b < t.rows ? b : 0];
    srow[b] = a.s + ad * a.k;
    dlrow[b] = a.dl + ad * n;
  }
  Acc* dlt = buf.ht;
  load_rows<W>(dlrow, W, n, dlt);
  constexpr int64_t kRowBlock = 64;
  for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
    const int64_t r1 = std::min(n, r0 + kRowBlock);
    const int32_t e_lo = csr.row_ptr[r0], e_hi = csr.row_ptr[r1];
    Acc* st = scratch<Acc>(4, static_cast<size_t>(e_hi - e_lo + 1) * W);
    gather_lanes<W>(srow, W, e_lo, e_hi, csr.order, st);
    if (two)
      mixed_rows<W, Acc, true>(csr, r0, r1, e_lo, st, dlt, buf.zt, buf.zt2, buf.ht, buf.ht2);
    else
      mixed_rows<W, Acc, false>(csr, r0, r1, e_lo, st, dlt, buf.zt, nullptr, buf.ht, nullptr);
  }
  In* rows_out[W];
  for (int b = 0; b < t.rows; ++b) rows_out[b] = a.out + lrow[b] * a.ldout;
  scatter_lanes<W>(buf.ht, t.rows, rows_out, n);
  if (two) {
    // lanes with one row write their second-row result into a throw-away row
    In* spare = reinterpret_cast<In*>(scratch<Acc>(5, static_cast<size_t>(n)));
    for (int b = 0; b < t.rows; ++b)
      rows_out[b] = lrow2[b] >= 0 ? a.out + lrow2[b] * a.ldout : spare;
    scatter_lanes<W>(buf.ht2, t.rows, rows_out, n);
  }
}

/// One tile of the backward: writes dZ rows (if a.out) and adds into acc_dl / acc_s (if set).
template <int W, typename In>
void backward_tile(const Args<In>& a, const Tile& t, const CsrView& csr,
                   typename Args<In>::Acc* zt, typename Args<In>::Acc* ht,
                   typename Args<In>::Acc* dzt, typename Args<In>::Acc* acc_dl,
                   typename Args<In>::Acc* acc_s) {
  using Acc = typename Args<In>::Acc;
  const int64_t n = a.n;
  const bool want_z = acc_dl != nullptr || acc_s != nullptr;
  const In* rows_in[W];
  if (want_z) {
    row_pointers<W>(a.z, a.ldz, t.t0, t.rows, rows_in);
    load_rows<W>(rows_in, t.rows, n, zt);
  }
  row_pointers<W>(a.dh, a.lddh, t.t0, t.rows, rows_in);
  load_rows<W>(rows_in, t.rows, n, ht);
  const In* dl = a.dl + t.adapter * n;
  const In* s = a.s + t.adapter * a.k;
  using Ln = Lanes<Acc, W>;
  using V = typename Ln::V;
  constexpr int NV = Ln::NV;
  if (a.out) {
    for (int64_t i = 0; i < n; ++i) {
      const Acc d = to_float(dl[i]);
      const V* hi = Ln::at(ht + i * W);
      V* di = Ln::at(dzt + i * W);
      for (int q = 0; q < NV; ++q) di[q] = d * hi[q];
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    const V* hr = Ln::at(ht + r * W);
    if (acc_dl) {
      const V* zr = Ln::at(zt + r * W);
      V dot = hr[0] * zr[0];
      for (int q = 1; q < NV; ++q) dot += hr[q] * zr[q];
      acc_dl[r] += Ln::hsum(dot);
    }
    const int32_t e0 = csr.row_ptr[r], e1 = csr.row_ptr[r + 1];
    for (int32_t e = e0; e < e1; ++e) {
      const int32_t j = csr.order ? csr.order[e] : e;
      const int64_t c = csr.cols[e];
      if (acc_s) {
        const V* zc = Ln::at(zt + c * W);
        V dot = hr[0] * zc[0];
        for (int q = 1; q < NV; ++q) dot += hr[q] * zc[q];
        acc_s[j] += Ln::hsum(dot);
      }
      if (a.out) {
        const Acc v = to_float(s[j]);
        V* dc = Ln::at(dzt + c * W);
        for (int q = 0; q < NV; ++q) dc[q] += v * hr[q];
      }
    }
  }
  if (a.out) {
    In* rows_out[W];
    row_pointers<W>(a.out, a.ldout, t.t0, t.rows, rows_out);
    scatter_lanes<W>(dzt, t.rows, rows_out, n);
  }
}

#define FROD_DISPATCH_WIDTH(width, CALL)          \
  switch (width) {                                \
    case 1: { constexpr int W = 1; CALL; break; } \
    case 2: { constexpr int W = 2; CALL; break; } \
    case 4: { constexpr int W = 4; CALL; break; } \
    case 8: { constexpr int W = 8; CALL; break; } \
    case 16: { constexpr int W = 16; CALL; break; } \
    default: { constexpr int W = 32; CALL; break; } \
  }

template <typename In>
void zero_rows(In* x, int64_t ld, int64_t n, const std::vector<int64_t>& ranges) {
  for (size_t i = 0; i < ranges.size(); i += 2)
    for (int64_t t = ranges[i]; t < ranges[i + 1]; ++t) std::memset(x + t * ld, 0, n * sizeof(In));
}

template <typename In>
void forward_impl(const RotateProblem& p, const RotatePlan& plan, const Args<In>& a) {
  using Acc = typename Args<In>::Acc;
  zero_rows(a.out, a.ldout, a.n, plan.base_rows);
  const int64_t ntiles = static_cast<int64_t>(plan.tiles.size());
  const double work = static_cast<double>(plan.adapted_rows) * static_cast<double>(a.n + a.k);
  const int nt = effective_threads(p.num_threads, ntiles, work);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t i = 0; i < ntiles; ++i) {
    const Tile& t = plan.tiles[i];
    const size_t tile_elems = static_cast<size_t>(a.n) * kMaxTileRows;
    Acc* zt = scratch<Acc>(0, tile_elems);
    Acc* ht = scratch<Acc>(1, tile_elems);
    const CsrView csr = plan.pattern(p, t.plan);
    if (t.adapter == kMixedTile) {
      const MixedBuffers<Acc> buf{zt, ht, scratch<Acc>(2, tile_elems),
                                  scratch<Acc>(3, tile_elems)};
      FROD_DISPATCH_WIDTH(t.width, (forward_mixed_tile<W, In>(a, plan, t, csr, buf)));
    } else {
      FROD_DISPATCH_WIDTH(t.width, (forward_tile<W, In>(a, t, csr, zt, ht)));
    }
  }
}

template <typename In>
void backward_impl(const RotateProblem& p, const RotatePlan& plan, const Args<In>& a) {
  using Acc = typename Args<In>::Acc;
  const int64_t n = a.n, k = a.k;
  if (a.out) zero_rows(a.out, a.ldout, n, plan.base_rows);
  const int64_t ntiles = static_cast<int64_t>(plan.tiles.size());
  if (ntiles == 0) return;
  const bool want_grads = a.d_dl != nullptr || a.d_s != nullptr;
  // Tiles ordered by adapter (stable): each adapter's tiles form one contiguous run.
  // The calling thread's buffers, reused so a warm call does not allocate. Bound to plain
  // references: inside the OpenMP region a thread_local name would mean each worker's own.
  thread_local std::vector<int32_t> tl_order, tl_slot_adapter, tl_cut;
  thread_local std::vector<int64_t> tl_bounds;
  thread_local std::vector<Acc> tl_slots;
  std::vector<int32_t>& order = tl_order;
  std::vector<int64_t>& bounds = tl_bounds;
  std::vector<Acc>& slots = tl_slots;
  std::vector<int32_t>& slot_adapter = tl_slot_adapter;
  std::vector<int32_t>& cut = tl_cut;
  order.resize(static_cast<size_t>(ntiles));
  for (int64_t i = 0; i < ntiles; ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
    return plan.tiles[x].adapter < plan.tiles[y].adapter;
  });
  const double work = static_cast<double>(plan.adapted_rows) * static_cast<double>(n + k);
  const int nt = effective_threads(p.num_threads, ntiles, work);
  // Contiguous chunks of the ordered tiles, balanced by padded rows.
  bounds.assign(static_cast<size_t>(nt) + 1, ntiles);
  {
    int64_t total = 0;
    for (const Tile& t : plan.tiles) total += t.width;
    int64_t acc = 0, chunk = 0;
    bounds[0] = 0;
    for (int64_t i = 0; i < ntiles && chunk + 1 < nt; ++i) {
      acc += plan.tiles[order[i]].width;
      if (acc * nt >= total * (chunk + 1)) bounds[++chunk] = i + 1;
    }
    for (int64_t c = chunk + 1; c <= nt; ++c) bounds[c] = ntiles;
  }
  // Partial sums of adapters cut by a chunk boundary: slot (chunk, 0 = first / 1 = last).
  const int64_t width = n + k;
  slot_adapter.assign(static_cast<size_t>(nt) * 2, -1);
  if (want_grads && nt > 1) slots.assign(static_cast<size_t>(nt) * 2 * width, Acc(0));

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int c = nt > 1 ? omp_get_thread_num() : 0;
    const int64_t lo = bounds[c], hi = bounds[c + 1];
    const size_t tile_elems = static_cast<size_t>(n) * kMaxTileRows;
    Acc* zt = scratch<Acc>(0, tile_elems);
    Acc* ht = scratch<Acc>(1, tile_elems);
    Acc* dzt = scratch<Acc>(2, tile_elems);
    Acc* local = want_grads ? scratch<Acc>(3, static_cast<size_t>(width)) : nullptr;
    int32_t cur = -1;
    auto flush = [&](int64_t first, int64_t last) {  // tiles [first, last) hold adapter cur
      if (!want_grads || cur < 0) return;
      const bool cut_before = first == lo && lo > 0 && plan.tiles[order[lo - 1]].adapter == cur;
      const bool cut_after = last == hi && hi < ntiles && plan.tiles[order[hi]].adapter == cur;
      if (!cut_before && !cut_after) {
        if (a.d_dl) std::memcpy(a.d_dl + cur * n, local, n * sizeof(Acc));
        if (a.d_s) std::memcpy(a.d_s + cur * k, local + n, k * sizeof(Acc));
      } else {
        const int which = cut_before ? 0 : 1;
        std::memcpy(slots.data() + (static_cast<int64_t>(c) * 2 + which) * width, local,
                    width * sizeof(Acc));
        slot_adapter[c * 2 + which] = cur;
      }
    };
    int64_t run_start = lo;
    for (int64_t i = lo; i < hi; ++i) {
      const Tile& t = plan.tiles[order[i]];
      if (t.adapter != cur) {
        flush(run_start, i);
        cur = t.adapter;
        run_start = i;
        if (want_grads) std::fill(local, local + width, Acc(0));
      }
      const CsrView csr = plan.pattern(p, t.plan);
      Acc* acc_dl = a.d_dl ? local : nullptr;
      Acc* acc_s = a.d_s ? local + n : nullptr;
      FROD_DISPATCH_WIDTH(t.width,
                          (backward_tile<W, In>(a, t, csr, zt, ht, dzt, acc_dl, acc_s)));
    }
    flush(run_start, hi);
  }
  if (!want_grads || nt <= 1) return;
  // Adapters cut by chunk boundaries: sum their slots in chunk order (deterministic).
  cut.clear();
  for (int32_t x : slot_adapter)
    if (x >= 0 && std::find(cut.begin(), cut.end(), x) == cut.end()) cut.push_back(x);
  for (int32_t adapter : cut) {
    const int64_t nblocks = (width + 4095) / 4096;
#pragma omp parallel for num_threads(nt) if (width > 65536)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t j0 = blk * 4096, j1 = std::min(width, j0 + 4096);
      for (int64_t j = j0; j < j1; ++j) {
        Acc sum = 0;
        for (int s2 = 0; s2 < nt * 2; ++s2)
          if (slot_adapter[s2] == adapter) sum += slots[s2 * width + j];
        if (j < n) {
          if (a.d_dl) a.d_dl[adapter * n + j] = sum;
        } else if (a.d_s) {
          a.d_s[adapter * k + (j - n)] = sum;
        }
      }
    }
  }
}

template <typename In>
Args<In> make_args(const RotateProblem& p, const void* z, int64_t ldz, const void* dh,
                   int64_t lddh, const void* dl, const void* s, void* out, int64_t ldout,
                   void* d_dl, void* d_s) {
  using Acc = typename Scalar<In>::acc;
  return Args<In>{p.n, p.kcap, static_cast<const In*>(z), ldz, static_cast<const In*>(dh),
                  lddh, static_cast<const In*>(dl), static_cast<const In*>(s),
                  static_cast<In*>(out), ldout, static_cast<Acc*>(d_dl),
                  static_cast<Acc*>(d_s)};
}

#define FROD_DISPATCH_DTYPE(dtype, CALL)                          \
  switch (dtype) {                                                \
    case DType::f32: { using In = float; CALL; break; }           \
    case DType::f64: { using In = double; CALL; break; }          \
    case DType::bf16: { using In = bf16_t; CALL; break; }         \
    case DType::f16: { using In = f16_t; CALL; break; }           \
    default: throw TypeError(concat("rotate: unsupported dtype ", dtype_name(dtype))); \
  }

}  // namespace

void forward(const RotateProblem& p, const RotatePlan& plan, const void* z, int64_t ldz,
             const void* dl, const void* s, void* h, int64_t ldh) {
  FROD_DISPATCH_DTYPE(p.dtype, (forward_impl<In>(p, plan, make_args<In>(p, z, ldz, nullptr, 0, dl, s, h, ldh, nullptr, nullptr))));
}

void backward(const RotateProblem& p, const RotatePlan& plan, const void* z, int64_t ldz,
              const void* dh, int64_t lddh, const void* dl, const void* s, void* dz,
              int64_t lddz, void* d_dl, void* d_s) {
  FROD_DISPATCH_DTYPE(p.dtype, (backward_impl<In>(p, plan, make_args<In>(p, z, ldz, dh, lddh, dl, s, dz, lddz, d_dl, d_s))));
}

}  // namespace frod::cpu::FROD_ISA_NS
