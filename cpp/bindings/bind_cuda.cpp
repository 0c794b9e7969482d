// Python bindings of the CUDA-only ops: dense CUTLASS GEMM, the fused / replace FRoD linear
// forms and the segment-grouped GEMM of merged hot adapters.
// (rotate_forward / rotate_backward dispatch to CUDA in bind_rotate.cpp.)
// Every op checks devices, dtypes, shapes and strides here and names the Python argument.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>

#include "frod/gemm_cuda.h"
#include "frod/grouped_gemm_cuda.h"
#include "frod/linear_cuda.h"
#include "frod/rotate_cuda.h"
#include "device_guard.h"
#include "rotate_args.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace frod::bind {
namespace {

void* as_stream(uintptr_t s) { return reinterpret_cast<void*>(s); }

/// A 2-D CUDA matrix of `dtype` on `di` with unit inner stride (rows may be padded).
void check_matrix(const TensorView& t, const char* name, DType dtype, int32_t di, int64_t rows,
                  int64_t cols) {
  check_device(t, name, DeviceType::cuda, di);
  check_dtype(t, name, dtype);
  check_shape(t, name, {rows, cols});
  check_rows_contiguous(t, name);
}

void check_vector(const std::optional<TensorView>& t, const char* name, DType dtype, int32_t di,
                  int64_t len) {
  if (!t) return;
  check_device(*t, name, DeviceType::cuda, di);
  check_dtype(*t, name, dtype);
  check_shape(*t, name, {len});
  check_contiguous(*t, name);
}

void check_error_word(const std::optional<TensorView>& t, int32_t di) {
  if (!t) return;
  check_device(*t, "error_flags", DeviceType::cuda, di);
  check_dtype(*t, "error_flags", DType::i32);
  check_shape(*t, "error_flags", {1});
}

int32_t* error_ptr(const std::optional<TensorView>& t) {
  return t ? t->ptr<int32_t>() : nullptr;
}

int64_t ld(const TensorView& t) { return t.shape[0] <= 1 ? t.shape[1] : t.stride[0]; }

/// D = A @ B^T (+ bias). a (M, K), b (N, K), bias (N,), d (M, N).
void gemm(const TensorView& a, const TensorView& b, const std::optional<TensorView>& bias,
          const TensorView& d, uintptr_t stream) {
  FROD_CHECK_ARG(a.ndim == 2, "a: expected a 2-D tensor (M, K), got shape ", shape_str(a));
  FROD_CHECK_ARG(b.ndim == 2, "b: expected a 2-D tensor (N, K), got shape ", shape_str(b));
  check_device(a, "a", DeviceType::cuda, a.device_index);
  const int32_t di = a.device_index;
  const int64_t M = a.shape[0], K = a.shape[1], N = b.shape[0];
  check_matrix(a, "a", a.dtype, di, M, K);
  check_matrix(b, "b", a.dtype, di, N, K);
  check_matrix(d, "d", a.dtype, di, M, N);
  check_vector(bias, "bias", a.dtype, di, N);
  GemmProblem p;
  p.M = M; p.N = N; p.K = K; p.dtype = a.dtype;
  p.a = a.data; p.lda = ld(a); p.b = b.data; p.ldb = ld(b);
  p.bias = bias ? bias->data : nullptr; p.d = d.data; p.ldd = ld(d);
  DeviceGuard guard(di);
  py::gil_scoped_release nogil;
  gemm_tn_cuda(p, as_stream(stream));
}

/// The rotation arguments of the fused / replace forms: segments, tables and plan table.
struct RotationArgs {
  TensorView seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx;
};

RotateProblem rotation(const TensorView& z, const RotationArgs& r) {
  const RotateViews v{z, r.seg_indptr, r.seg_adapter, r.dl, r.s, r.slot_plan, r.plan_meta,
                      r.plan_ptr, r.plan_idx};
  return make_problem(v, DeviceType::cuda, 1);
}

void linear_fused(const TensorView& xh, const TensorView& vt, const TensorView& wu,
                  const std::optional<TensorView>& bias, const TensorView& seg_indptr,
                  const TensorView& seg_adapter, const TensorView& dl, const TensorView& s,
                  const TensorView& slot_plan, const TensorView& plan_meta,
                  const TensorView& plan_ptr, const TensorView& plan_idx, const TensorView& z,
                  const TensorView& y, const std::optional<TensorView>& error_flags,
                  uintptr_t stream) {
  const RotateProblem r = rotation(
      z, {seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx});
  const int32_t di = z.device_index;
  const int64_t T = r.T, n = r.n;
  FROD_CHECK_ARG(wu.ndim == 2, "wu: expected (out, 2n), got shape ", shape_str(wu));
  const int64_t out = wu.shape[0];
  check_matrix(xh, "xh", r.dtype, di, T, 2 * n);
  check_matrix(vt, "vt", r.dtype, di, n, n);
  check_contiguous(vt, "vt");
  check_matrix(wu, "wu", r.dtype, di, out, 2 * n);
  check_matrix(y, "y", r.dtype, di, T, out);
  check_contiguous(z, "z");
  check_vector(bias, "bias", r.dtype, di, out);
  check_error_word(error_flags, di);
  FusedLinearArgs a;
  a.rot = r; a.out = out; a.xh = xh.data; a.ldxh = ld(xh); a.vt = vt.data; a.wu = wu.data;
  a.ldwu = ld(wu); a.bias = bias ? bias->data : nullptr; a.dl = dl.data; a.s = s.data;
  a.z = z.data; a.y = y.data; a.ldy = ld(y);
  DeviceGuard guard(di);
  py::gil_scoped_release nogil;
  frod_linear_fused_cuda(a, as_stream(stream), error_ptr(error_flags));
}

void linear_replace(const TensorView& x, const TensorView& vt, const TensorView& u,
                    const TensorView& l, const std::optional<TensorView>& bias,
                    const TensorView& seg_indptr, const TensorView& seg_adapter,
                    const TensorView& dl, const TensorView& s, const TensorView& slot_plan,
                    const TensorView& plan_meta, const TensorView& plan_ptr,
                    const TensorView& plan_idx, const TensorView& z, const TensorView& h,
                    const TensorView& y, const std::optional<TensorView>& error_flags,
                    uintptr_t stream) {
  const RotateProblem r = rotation(
      z, {seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx});
  const int32_t di = z.device_index;
  const int64_t T = r.T, n = r.n;
  FROD_CHECK_ARG(u.ndim == 2, "u: expected (out, n), got shape ", shape_str(u));
  const int64_t out = u.shape[0];
  check_matrix(x, "x", r.dtype, di, T, n);
  check_matrix(vt, "vt", r.dtype, di, n, n);
  check_contiguous(vt, "vt");
  check_matrix(u, "u", r.dtype, di, out, n);
  check_contiguous(u, "u");
  check_vector(l, "l", r.dtype, di, n);
  check_contiguous(z, "z");
  check_matrix(h, "h", r.dtype, di, T, n);
  check_contiguous(h, "h");
  check_matrix(y, "y", r.dtype, di, T, out);
  check_vector(bias, "bias", r.dtype, di, out);
  check_error_word(error_flags, di);
  ReplaceLinearArgs a;
  a.rot = r; a.out = out; a.x = x.data; a.ldx = ld(x); a.vt = vt.data; a.u = u.data;
  a.l = l.data; a.bias = bias ? bias->data : nullptr; a.dl = dl.data; a.s = s.data;
  a.z = z.data; a.h = h.data; a.y = y.data; a.ldy = ld(y);
  DeviceGuard guard(di);
  py::gil_scoped_release nogil;
  frod_linear_replace_cuda(a, as_stream(stream), error_ptr(error_flags));
}

void segment_gemm(const TensorView& x, const TensorView& weight,
                  const std::optional<TensorView>& bias, const TensorView& seg_indptr,
                  const TensorView& seg_slot, const TensorView& y,
                  const std::optional<TensorView>& error_flags, uintptr_t stream) {
  FROD_CHECK_ARG(x.ndim == 2, "x: expected a 2-D tensor (T, K), got shape ", shape_str(x));
  FROD_CHECK_ARG(weight.ndim == 3, "weight: expected a 3-D tensor (num_weights, N, K), got shape ",
                 shape_str(weight));
  check_device(x, "x", DeviceType::cuda, x.device_index);
  const int32_t di = x.device_index;
  const int64_t T = x.shape[0], K = x.shape[1], W = weight.shape[0], N = weight.shape[1];
  check_matrix(x, "x", x.dtype, di, T, K);
  check_device(weight, "weight", DeviceType::cuda, di);
  check_dtype(weight, "weight", x.dtype);
  check_shape(weight, "weight", {W, N, K});
  check_contiguous(weight, "weight");
  check_matrix(y, "y", x.dtype, di, T, N);
  check_vector(bias, "bias", x.dtype, di, N);
  for (auto [t, name] : {std::pair{&seg_indptr, "seg_indptr"}, {&seg_slot, "seg_slot"}}) {
    check_device(*t, name, DeviceType::cuda, di);
    check_dtype(*t, name, DType::i32);
    check_contiguous(*t, name);
  }
  check_shape(seg_slot, "seg_slot", {-1});
  const int64_t G = seg_slot.shape[0];
  check_shape(seg_indptr, "seg_indptr", {G + 1});
  check_error_word(error_flags, di);
  SegmentGemmArgs a;
  a.T = T; a.K = K; a.N = N; a.num_weights = W; a.num_segments = G; a.dtype = x.dtype;
  a.indptr = seg_indptr.ptr<const int32_t>(); a.slot = seg_slot.ptr<const int32_t>();
  a.x = x.data; a.ldx = ld(x); a.weight = weight.data; a.bias = bias ? bias->data : nullptr;
  a.y = y.data; a.ldy = ld(y);
  DeviceGuard guard(di);
  py::gil_scoped_release nogil;
  segment_gemm_cuda(a, as_stream(stream), error_ptr(error_flags));
}

}  // namespace

void bind_cuda(py::module_& m) {
  m.attr("cuda_architectures") = FROD_CUDA_ARCHS;  // CMAKE_CUDA_ARCHITECTURES, comma-separated, e.g. "80-real,90a-real"
  m.def("cuda_device_available", &cuda_available,
        "True when this build has CUDA kernels and the CUDA runtime sees a device.");
  m.def("cutlass_gemm_families", &cutlass_gemm_families,
        "Dense GEMM families compiled in: 'sm80_cutlass2x', 'sm90a_cutlass3x'.");
  m.def("gemm_backend", [] { return std::string(gemm_backend_name()); },
        "CUTLASS kernel family used on the current device.");
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("bias"), py::arg("d"),
        py::arg("stream") = 0, "d (M, N) = a (M, K) @ b (N, K)^T + bias (N,). See frod/gemm_cuda.h.");
  m.def("frod_linear_fused", &linear_fused, py::arg("xh"), py::arg("vt"), py::arg("wu"),
        py::arg("bias"), py::arg("seg_indptr"), py::arg("seg_adapter"), py::arg("dl"),
        py::arg("s"), py::arg("slot_plan"), py::arg("plan_meta"), py::arg("plan_ptr"),
        py::arg("plan_idx"), py::arg("z"), py::arg("y"),
        py::arg("error_flags") = py::none(), py::arg("stream") = 0,
        "Z = X V; xh[:, n:] = rotate(Z); y = xh @ wu^T + bias, with X = xh[:, :n]. "
        "See frod/linear_cuda.h.");
  m.def("frod_linear_replace", &linear_replace, py::arg("x"), py::arg("vt"), py::arg("u"),
        py::arg("l"), py::arg("bias"), py::arg("seg_indptr"), py::arg("seg_adapter"),
        py::arg("dl"), py::arg("s"), py::arg("slot_plan"), py::arg("plan_meta"),
        py::arg("plan_ptr"), py::arg("plan_idx"), py::arg("z"), py::arg("h"), py::arg("y"),
        py::arg("error_flags") = py::none(), py::arg("stream") = 0,
        "Z = X V; H = Z diag(l + dl_a) + S_a Z; y = H U^T + bias. See frod/linear_cuda.h.");
  m.def("segment_gemm", &segment_gemm, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("seg_indptr"), py::arg("seg_slot"), py::arg("y"),
        py::arg("error_flags") = py::none(), py::arg("stream") = 0,
        "y[seg g] = x[seg g] @ weight[slot[g]]^T + bias for slot >= 0. "
        "See frod/grouped_gemm_cuda.h.");
}

}  // namespace frod::bind
