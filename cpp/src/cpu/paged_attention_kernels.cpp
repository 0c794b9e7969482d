// CPU kernel of the paged decode attention (semantics in frod/paged_attention.h).
//
// Compiled once per ISA with FROD_ISA_NS naming the namespace (paged_attention_kernels.h).
// One task per sequence (or per (sequence, kv head) when there are few sequences): each cached
// key row is loaded once (converted to the accumulation type for 16-bit caches) and scored
// against the G = Hq / Hkv query heads of its kv head, the scores (heads x L) are softmaxed, then
// the value rows are accumulated into heads x D sums. Work and memory traffic are one pass over
// the sequence's own K and V, reading each block front to back.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "paged_attention_kernels.h"
#include "scalar_types.h"

#ifndef FROD_ISA_NS
#error "FROD_ISA_NS must name the ISA namespace"
#endif

namespace frod::cpu::FROD_ISA_NS {
namespace {

/// Grow-only per-thread scratch, reused across calls.
template <typename Acc> Acc* scratch(size_t slot, size_t count) {
  thread_local std::vector<Acc> bufs[3];
  std::vector<Acc>& b = bufs[slot];
  if (b.size() < count) b.resize(count);
  return b.data();
}

/// <a, b> over D values with two independent vector accumulators (a single accumulator
/// chain is latency-bound at decode sizes, D = 64..128).
template <typename Acc> inline Acc dot(const Acc* __restrict a, const Acc* __restrict b,
                                       int64_t D) {
  constexpr int W = 32 / static_cast<int>(sizeof(Acc));
  typedef Acc V __attribute__((vector_size(32), aligned(sizeof(Acc)), may_alias));
  int64_t d = 0;
  Acc s = 0;
  if (D >= 2 * W) {
    V s0 = {}, s1 = {};
    for (; d + 2 * W <= D; d += 2 * W) {
      s0 += *reinterpret_cast<const V*>(a + d) * *reinterpret_cast<const V*>(b + d);
      s1 += *reinterpret_cast<const V*>(a + d + W) * *reinterpret_cast<const V*>(b + d + W);
    }
    s0 += s1;
    for (int w = 0; w < W; ++w) s += s0[w];
  }
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

/// Row `p` (D values of one kv head at one position) as Acc values: the pointer itself when
/// the cache already holds Acc, else converted into `buf`.
template <typename T, typename Acc> inline const Acc* as_acc(const T* p, int64_t D, Acc* buf) {
  if constexpr (std::is_same_v<T, Acc>) {
    (void)D; (void)buf;
    return p;
  } else {
    for (int64_t d = 0; d < D; ++d) buf[d] = to_float(p[d]);
    return buf;
  }
}

template <typename T> void run(const PagedAttentionArgs& a) {
  using Acc = typename Scalar<T>::acc;
  const int64_t G = a.Hq / a.Hkv, D = a.D, bs = a.bs;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* out = static_cast<T*>(a.out);
  // A task is one sequence with all its kv heads, so each block is read front to back; with
  // fewer sequences than 2x the threads, one (sequence, kv head) instead.
  const int64_t hpt = a.B >= 2 * a.num_threads ? a.Hkv : 1;
  const int64_t per_seq = a.Hkv / hpt;
  const int64_t tasks = a.B * per_seq;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, tasks)));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / per_seq, g0 = (task % per_seq) * hpt;
    const int64_t QH = hpt * G;                      // query heads of this task
    const int64_t L = a.ctx_lens[b];
    const int64_t* bt = a.block_tables + b * a.bt_sb;
    Acc* qs = scratch<Acc>(0, static_cast<size_t>(2 * QH * D + D + QH));
    Acc* acc = qs + QH * D;
    Acc* buf = acc + QH * D;
    Acc* inv = buf + D;
    Acc* sc = scratch<Acc>(1, static_cast<size_t>(QH * L));
    for (int64_t h = 0; h < QH; ++h) {
      const T* qh = q + b * a.q_sb + (g0 * G + h) * a.q_sh;
      for (int64_t d = 0; d < D; ++d) qs[h * D + d] = static_cast<Acc>(a.scale) * to_float(qh[d]);
    }
    // scores, block by block (position j = i * bs + o), query head h of kv head h / G
    for (int64_t i = 0, j = 0; j < L; ++i) {
      const T* kb = k + bt[i] * a.k_sn + g0 * a.k_sh;
      for (int64_t o = 0; o < bs && j < L; ++o, ++j) {
        for (int64_t g = 0; g < hpt; ++g) {
          const Acc* kr = as_acc<T, Acc>(kb + o * a.k_ss + g * a.k_sh, D, buf);
          for (int64_t h = g * G; h < (g + 1) * G; ++h) sc[h * L + j] = dot(qs + h * D, kr, D);
        }
      }
    }
    // softmax per query head (max-subtracted; L >= 1 so the sum is >= 1)
    for (int64_t h = 0; h < QH; ++h) {
      Acc* s = sc + h * L;
      Acc m = s[0];
      for (int64_t j = 1; j < L; ++j) m = std::max(m, s[j]);
      Acc sum = 0;
      for (int64_t j = 0; j < L; ++j) { s[j] = std::exp(s[j] - m); sum += s[j]; }
      inv[h] = Acc(1) / sum;
    }
    // weighted sum of values
    std::fill(acc, acc + QH * D, Acc(0));
    for (int64_t i = 0, j = 0; j < L; ++i) {
      const T* vb = v + bt[i] * a.v_sn + g0 * a.v_sh;
      for (int64_t o = 0; o < bs && j < L; ++o, ++j) {
        for (int64_t g = 0; g < hpt; ++g) {
          const Acc* vr = as_acc<T, Acc>(vb + o * a.v_ss + g * a.v_sh, D, buf);
          for (int64_t h = g * G; h < (g + 1) * G; ++h) {
            const Acc p = sc[h * L + j];
            Acc* __restrict ah = acc + h * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) ah[d] += p * vr[d];
          }
        }
      }
    }
    for (int64_t h = 0; h < QH; ++h) {
      T* oh = out + b * a.o_sb + (g0 * G + h) * a.o_sh;
      for (int64_t d = 0; d < D; ++d) oh[d] = Scalar<T>::store(acc[h * D + d] * inv[h]);
    }
  }
}

}  // namespace

void paged_decode_attention(const PagedAttentionArgs& a) {
  switch (a.dtype) {
    case DType::f32: return run<float>(a);
    case DType::f64: return run<double>(a);
    case DType::bf16: return run<bf16_t>(a);
    case DType::f16: return run<f16_t>(a);
    default: throw TypeError("paged_decode_attention: unsupported dtype");
  }
}

}  // namespace frod::cpu::FROD_ISA_NS
