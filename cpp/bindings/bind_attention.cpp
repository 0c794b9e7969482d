// Python binding of the paged decode attention (CPU; frod/paged_attention.h).
#include <pybind11/pybind11.h>

#include "frod/paged_attention.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace frod::bind {

void bind_attention(py::module_& m) {
  m.def(
      "paged_decode_attention",
      [](const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
         const TensorView& block_tables, const TensorView& ctx_lens, const TensorView& out,
         double scale, int num_threads) {
        py::gil_scoped_release nogil;
        paged_decode_attention_cpu(q, k_cache, v_cache, block_tables, ctx_lens, out, scale,
                                   num_threads);
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("block_tables"),
      py::arg("ctx_lens"), py::arg("out"), py::arg("scale"), py::arg("num_threads"),
      "Decode attention of one query token per sequence straight from a paged KV cache "
      "(frod/paged_attention.h). q, out (B, Hq, D); k_cache, v_cache (NB, bs, Hkv, D); "
      "block_tables (B, MB) and ctx_lens (B,) int64. CPU only.");
}

}  // namespace frod::bind
