// Python bindings of the rotation op family: build_pattern_plan, rotate_forward,
// rotate_backward, segments_from_ids. Dispatches on the device of `z` (CPU kernels, or CUDA
// when built; a device guard makes z's GPU current for the call).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "frod/pattern_plan.h"
#include "frod/rotate.h"
#include "frod/rotate_cuda.h"
#include "rotate_args.h"
#include "tensor_arg.h"
#ifdef FROD_WITH_CUDA
#include "device_guard.h"
#endif

namespace py = pybind11;

namespace frod::bind {
namespace {

DType acc_type(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

void check_grad_table(const std::optional<TensorView>& t, const char* name, DType dtype,
                      int64_t rows, int64_t cols, DeviceType dev, int32_t di) {
  if (!t) return;
  check_device(*t, name, dev, di);
  check_dtype(*t, name, dtype);
  check_shape(*t, name, {rows, cols});
  check_contiguous(*t, name);
}

void check_optional_vector(const std::optional<TensorView>& t, const char* name, DType dtype,
                           int64_t len, DeviceType dev, int32_t di) {
  if (!t) return;
  check_device(*t, name, dev, di);
  check_dtype(*t, name, dtype);
  check_shape(*t, name, {len});
  check_contiguous(*t, name);
}

#ifndef FROD_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw TypeError("z: frod_rt was built without CUDA support; pass CPU tensors");
}
#endif

bool build_pattern_plan_py(const TensorView& rows, const TensorView& cols, int64_t n,
                           int64_t adapter, const TensorView& ptr, const TensorView& idx) {
  for (auto [t, name] : {std::pair{&rows, "rows"}, {&cols, "cols"}, {&ptr, "plan_ptr"},
                         {&idx, "plan_idx"}}) {
    check_device(*t, name, DeviceType::cpu, 0);
    check_dtype(*t, name, DType::i32);
    check_contiguous(*t, name);
  }
  check_shape(rows, "rows", {-1});
  const int64_t k = rows.shape[0];
  check_shape(cols, "cols", {k});
  check_shape(ptr, "plan_ptr", {2, n + 1});
  check_shape(idx, "plan_idx", {4, k});
  py::gil_scoped_release nogil;
  return build_pattern_plan(rows.ptr<const int32_t>(), cols.ptr<const int32_t>(), k, n, adapter,
                            ptr.ptr<int32_t>(), idx.ptr<int32_t>());
}

void rotate_forward(const TensorView& z, const TensorView& seg_indptr,
                    const TensorView& seg_adapter, const TensorView& dl, const TensorView& s,
                    const TensorView& slot_plan, const TensorView& plan_meta,
                    const TensorView& plan_ptr, const TensorView& plan_idx, const TensorView& h,
                    int num_threads, uintptr_t stream, const std::optional<TensorView>& base_scale,
                    const std::optional<TensorView>& error_flags) {
  const RotateViews v{z, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx};
  const RotateProblem p = make_problem(v, z.device, num_threads);
  const int32_t di = z.device_index;
  check_rows_like(h, "h", p, z.device, di);
  check_optional_vector(base_scale, "base_scale", p.dtype, p.n, z.device, di);
  check_optional_vector(error_flags, "error_flags", DType::i32, 1, z.device, di);
  const void* base = base_scale ? base_scale->data : nullptr;
  if (z.device == DeviceType::cuda) {
#ifdef FROD_WITH_CUDA
    DeviceGuard guard(di);
    py::gil_scoped_release nogil;
    rotate_forward_cuda(p, z.data, z.stride[0], dl.data, s.data, h.data, h.stride[0],
                        reinterpret_cast<void*>(stream), base,
                        error_flags ? error_flags->ptr<int32_t>() : nullptr);
#else
    no_cuda();
#endif
  } else {
    FROD_CHECK_ARG(base == nullptr, "base_scale: only supported by the CUDA kernels");
    py::gil_scoped_release nogil;
    rotate_forward_cpu(p, z.data, z.stride[0], dl.data, s.data, h.data, h.stride[0]);
  }
}

void rotate_backward(const TensorView& z, const TensorView& dh, const TensorView& seg_indptr,
                     const TensorView& seg_adapter, const TensorView& dl, const TensorView& s,
                     const TensorView& slot_plan, const TensorView& plan_meta,
                     const TensorView& plan_ptr, const TensorView& plan_idx,
                     const std::optional<TensorView>& dz, const std::optional<TensorView>& d_dl,
                     const std::optional<TensorView>& d_s, int num_threads, uintptr_t stream,
                     const std::optional<TensorView>& error_flags) {
  const RotateViews v{z, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx};
  const RotateProblem p = make_problem(v, z.device, num_threads);
  const int32_t di = z.device_index;
  check_rows_like(dh, "grad_h", p, z.device, di);
  if (dz) check_rows_like(*dz, "grad_z", p, z.device, di);
  check_grad_table(d_dl, "grad_dl", acc_type(p.dtype), p.A, p.n, z.device, di);
  check_grad_table(d_s, "grad_s", acc_type(p.dtype), p.A, p.kcap, z.device, di);
  check_optional_vector(error_flags, "error_flags", DType::i32, 1, z.device, di);
  void* dz_ptr = dz ? dz->data : nullptr;
  const int64_t lddz = dz ? dz->stride[0] : p.n;
  void* ddl_ptr = d_dl ? d_dl->data : nullptr;
  void* ds_ptr = d_s ? d_s->data : nullptr;
  if (z.device == DeviceType::cuda) {
#ifdef FROD_WITH_CUDA
    DeviceGuard guard(di);
    py::gil_scoped_release nogil;
    rotate_backward_cuda(p, z.data, z.stride[0], dh.data, dh.stride[0], dl.data, s.data, dz_ptr,
                         lddz, ddl_ptr, ds_ptr, reinterpret_cast<void*>(stream),
                         error_flags ? error_flags->ptr<int32_t>() : nullptr);
#else
    no_cuda();
#endif
  } else {
    py::gil_scoped_release nogil;
    rotate_backward_cpu(p, z.data, z.stride[0], dh.data, dh.stride[0], dl.data, s.data, dz_ptr,
                        lddz, ddl_ptr, ds_ptr);
  }
}

int64_t segments_from_ids(const TensorView& ids, int64_t num_adapters, const TensorView& indptr,
                          const TensorView& adapter) {
  for (auto [t, name] : {std::pair{&ids, "adapter_ids"}, {&indptr, "seg_indptr"},
                         {&adapter, "seg_adapter"}}) {
    check_device(*t, name, DeviceType::cpu, 0);
    check_dtype(*t, name, DType::i32);
    check_contiguous(*t, name);
  }
  check_shape(ids, "adapter_ids", {-1});
  const int64_t T = ids.shape[0];
  check_shape(indptr, "seg_indptr", {T + 1});
  check_shape(adapter, "seg_adapter", {T});
  return segments_from_ids_cpu(ids.ptr<const int32_t>(), T, num_adapters,
                               indptr.ptr<int32_t>(), adapter.ptr<int32_t>());
}

void validate_segments(const TensorView& seg_indptr, const TensorView& seg_adapter, int64_t T,
                       int64_t A) {
  for (auto [t, name] : {std::pair{&seg_indptr, "seg_indptr"}, {&seg_adapter, "seg_adapter"}}) {
    check_device(*t, name, DeviceType::cpu, 0);
    check_dtype(*t, name, DType::i32);
    check_contiguous(*t, name);
  }
  check_shape(seg_adapter, "seg_adapter", {-1});
  const int64_t G = seg_adapter.shape[0];
  check_shape(seg_indptr, "seg_indptr", {G + 1});
  validate_segments_cpu(Segments{seg_indptr.ptr<const int32_t>(), seg_adapter.ptr<const int32_t>(), G},
                        T, A);
}

}  // namespace

void bind_rotate(py::module_& m) {
  m.def("build_pattern_plan", &build_pattern_plan_py, py::arg("rows"), py::arg("cols"),
        py::arg("n"), py::arg("adapter"), py::arg("plan_ptr"), py::arg("plan_idx"),
        "Validates a pattern (k,) and writes its rotation plan: plan_ptr (2, n+1) CSR/CSC "
        "pointers, plan_idx (4, k) [csr cols, csr j, csc rows, csc j]. Returns True when the "
        "pattern was sorted by row. See frod/pattern_plan.h.");
  m.def("rotate_forward", &rotate_forward, py::arg("z"), py::arg("seg_indptr"),
        py::arg("seg_adapter"), py::arg("dl"), py::arg("s"), py::arg("slot_plan"),
        py::arg("plan_meta"), py::arg("plan_ptr"), py::arg("plan_idx"), py::arg("h"),
        py::arg("num_threads") = 1, py::arg("stream") = 0, py::arg("base_scale") = py::none(),
        py::arg("error_flags") = py::none(),
        "h[t] = (diag(base + dl[a]) + S_a) z[t] for each row t of a segment with adapter a, "
        "S_a from slot a's plan; 0 for rows without adapter. Writes h. See frod/rotate.h.");
  m.def("rotate_backward", &rotate_backward, py::arg("z"), py::arg("grad_h"),
        py::arg("seg_indptr"), py::arg("seg_adapter"), py::arg("dl"), py::arg("s"),
        py::arg("slot_plan"), py::arg("plan_meta"), py::arg("plan_ptr"), py::arg("plan_idx"),
        py::arg("grad_z") = py::none(), py::arg("grad_dl") = py::none(),
        py::arg("grad_s") = py::none(), py::arg("num_threads") = 1, py::arg("stream") = 0,
        py::arg("error_flags") = py::none(),
        "Backward of rotate_forward: writes grad_z, and the rows of grad_dl / grad_s of the "
        "adapters present in the batch (CUDA: adds into them; pass zeros). See frod/rotate.h.");
  m.def("validate_segments", &validate_segments, py::arg("seg_indptr"), py::arg("seg_adapter"),
        py::arg("T"), py::arg("A"),
        "Raises ValueError unless seg_indptr (G+1,) runs monotonically from 0 to T and "
        "seg_adapter (G,) lies in [-1, A) (CPU tensors).");
  m.def("segments_from_ids", &segments_from_ids, py::arg("adapter_ids"),
        py::arg("num_adapters"), py::arg("seg_indptr"), py::arg("seg_adapter"),
        "Writes the runs of equal consecutive ids into seg_indptr / seg_adapter; returns the "
        "number of runs G.");
}

}  // namespace frod::bind
