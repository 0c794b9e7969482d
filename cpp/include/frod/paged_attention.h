// Decode attention over a paged KV cache (one new query token per sequence), torch-free.
//
// The engine keeps K and V of every layer in blocks of `bs` tokens: k_cache, v_cache
// (NB, bs, Hkv, D). Sequence b owns the blocks block_tables[b, 0..] in order, so its
// position j sits in block block_tables[b, j / bs] at offset j % bs. For each sequence b with
// L = ctx_lens[b] cached positions (its new token's K/V already written) and each query head
// h (kv head g = h / (Hq / Hkv), grouped-query attention when Hq > Hkv):
//
//     p_j       = softmax_j( scale * <q[b, h, :], K_b[j, g, :]> ),   j = 0 .. L-1
//     out[b, h] = sum_j p_j * V_b[j, g, :]
//
// read straight from the blocks: no gathered copy of the context and no padding, so a row's
// result depends only on its own sequence (batch invariance) and the cost is one pass over
// each sequence's own K/V.
//
// Data types: q, k_cache, v_cache and out share one dtype (float64, float32, bfloat16 or
// float16); arithmetic is float32 (float64 for float64). block_tables and ctx_lens are int64.
#pragma once

#include <cstdint>

#include "frod/tensor_view.h"

namespace frod {

/// Validates the views (shapes, dtypes, devices, layouts) and every block id a sequence
/// reads, then computes `out` as described above with `num_threads` CPU threads.
///   q (B, Hq, D), out (B, Hq, D): last dim unit-stride; k_cache, v_cache (NB, bs, Hkv, D):
///   last dim unit-stride (other strides free); block_tables (B, MB) int64 with unit inner
///   stride; ctx_lens (B,) int64 in [1, MB * bs]; Hq a multiple of Hkv.
/// Throws InvalidArgument / TypeError naming the offending argument.
void paged_decode_attention_cpu(const TensorView& q, const TensorView& k_cache,
                                const TensorView& v_cache, const TensorView& block_tables,
                                const TensorView& ctx_lens, const TensorView& out, double scale,
                                int num_threads);

}  // namespace frod
