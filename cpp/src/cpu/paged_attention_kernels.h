// ISA-specific CPU kernels of the paged decode attention (semantics in
// frod/paged_attention.h). paged_attention_kernels.cpp is compiled once per ISA into the
// namespaces declared here; paged_attention_cpu.cpp validates and picks one at run time.
#pragma once

#include <cstdint>

#include "frod/tensor_view.h"

namespace frod::cpu {

/// Typed pointers and sizes of one validated call (strides in elements).
struct PagedAttentionArgs {
  const void* q; int64_t q_sb, q_sh;               // (B, Hq, D), unit stride in D
  const void* k; int64_t k_sn, k_ss, k_sh;         // (NB, bs, Hkv, D)
  const void* v; int64_t v_sn, v_ss, v_sh;
  const int64_t* block_tables; int64_t bt_sb;      // (B, MB)
  const int64_t* ctx_lens;                         // (B,)
  void* out; int64_t o_sb, o_sh;                   // (B, Hq, D)
  int64_t B, Hq, Hkv, D, bs;
  double scale;
  DType dtype;
  int num_threads;
};

#define FROD_DECLARE_PAGED_ATTENTION(NS) \
  namespace NS { void paged_decode_attention(const PagedAttentionArgs& a); }

FROD_DECLARE_PAGED_ATTENTION(generic)
FROD_DECLARE_PAGED_ATTENTION(avx2)

}  // namespace frod::cpu
