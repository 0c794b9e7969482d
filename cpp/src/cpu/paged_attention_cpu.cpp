// Public CPU entry point of the paged decode attention: validate, dispatch to the best ISA.
#include "frod/paged_attention.h"
#include "cpu_features.h"
#include "paged_attention_kernels.h"

namespace frod {

void paged_decode_attention_cpu(const TensorView& q, const TensorView& k_cache,
                                const TensorView& v_cache, const TensorView& block_tables,
                                const TensorView& ctx_lens, const TensorView& out, double scale,
                                int num_threads) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k_cache, "k_cache"}, {&v_cache, "v_cache"},
                         {&block_tables, "block_tables"}, {&ctx_lens, "ctx_lens"},
                         {&out, "out"}})
    check_device(*t, name, DeviceType::cpu, 0);
  FROD_CHECK_TYPE(q.dtype == DType::f32 || q.dtype == DType::f64 || q.dtype == DType::bf16 ||
                      q.dtype == DType::f16,
                  "q: expected float32, float64, bfloat16 or float16, got ", dtype_name(q.dtype));
  check_dtype(k_cache, "k_cache", q.dtype);
  check_dtype(v_cache, "v_cache", q.dtype);
  check_dtype(out, "out", q.dtype);
  check_dtype(block_tables, "block_tables", DType::i64);
  check_dtype(ctx_lens, "ctx_lens", DType::i64);
  check_shape(q, "q", {-1, -1, -1});
  const int64_t B = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  check_shape(k_cache, "k_cache", {-1, -1, -1, D});
  const int64_t NB = k_cache.shape[0], bs = k_cache.shape[1], Hkv = k_cache.shape[2];
  check_shape(v_cache, "v_cache", {NB, bs, Hkv, D});
  check_shape(out, "out", {B, Hq, D});
  check_shape(block_tables, "block_tables", {B, -1});
  check_shape(ctx_lens, "ctx_lens", {B});
  const int64_t MB = block_tables.shape[1];
  FROD_CHECK_ARG(D >= 1 && bs >= 1 && Hkv >= 1, "k_cache: empty dims in ", shape_str(k_cache));
  FROD_CHECK_ARG(Hq % Hkv == 0, "q: ", Hq, " query heads are not a multiple of the cache's ",
                 Hkv, " kv heads");
  for (auto [t, name] : {std::pair{&q, "q"}, {&k_cache, "k_cache"}, {&v_cache, "v_cache"},
                         {&out, "out"}})
    check_rows_contiguous(*t, name);      // (3-D / 4-D: the last dim unit-stride)
  FROD_CHECK_ARG(MB <= 1 || block_tables.stride[1] == 1,
                 "block_tables: rows must be unit-stride");
  check_contiguous(ctx_lens, "ctx_lens");
  const int64_t* bt = block_tables.ptr<const int64_t>();
  const int64_t* cl = ctx_lens.ptr<const int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = cl[b];
    FROD_CHECK_ARG(L >= 1 && L <= MB * bs, "ctx_lens[", b, "] = ", L, " is outside [1, ",
                   MB * bs, "] (block_tables holds ", MB, " blocks of ", bs, ")");
    for (int64_t i = 0; i < (L + bs - 1) / bs; ++i) {
      const int64_t id = bt[b * block_tables.stride[0] + i];
      FROD_CHECK_ARG(id >= 0 && id < NB, "block_tables[", b, ", ", i, "] = ", id,
                     " is not a block of the cache (", NB, " blocks)");
    }
  }
  if (B == 0 || Hq == 0) return;
  cpu::PagedAttentionArgs a{q.data, q.stride[0], q.stride[1],
                            k_cache.data, k_cache.stride[0], k_cache.stride[1], k_cache.stride[2],
                            v_cache.data, v_cache.stride[0], v_cache.stride[1], v_cache.stride[2],
                            bt, block_tables.stride[0], cl,
                            out.data, out.stride[0], out.stride[1],
                            B, Hq, Hkv, D, bs, scale, q.dtype, num_threads < 1 ? 1 : num_threads};
  if (cpu::has_avx2_fma())
    cpu::avx2::paged_decode_attention(a);
  else
    cpu::generic::paged_decode_attention(a);
}

}  // namespace frod
