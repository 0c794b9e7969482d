// Python bindings of the rotation op family: rotate_forward, rotate_backward,
// segments_from_ids. Dispatches on the device of `z` (CPU kernels, or CUDA when built).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "frod/rotate.h"
#include "frod/rotate_cuda.h"
#include "rotate_args.h"
#include "tensor_arg.h"

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

void rotate_forward(const TensorView& z, const TensorView& seg_indptr,
                    const TensorView& seg_adapter, const TensorView& dl, const TensorView& s,
                    const TensorView& rows, const TensorView& cols, const TensorView& h,
                    int num_threads, uintptr_t stream) {
  const RotateViews v{z, seg_indptr, seg_adapter, dl, s, rows, cols};
  const bool cuda = z.device == DeviceType::cuda;
  const RotateProblem p = make_problem(v, z.device, z.device, num_threads);
  check_rows_like(h, "h", p, z.device, z.device_index);
  py::gil_scoped_release nogil;
  if (cuda) {
#ifdef FROD_WITH_CUDA
    rotate_forward_cuda(p, z.data, z.stride[0], dl.data, s.data, h.data, h.stride[0],
                        reinterpret_cast<void*>(stream));
#else
    throw TypeError("z: frod_rt was built without CUDA support; pass CPU tensors");
#endif
  } else {
    rotate_forward_cpu(p, z.data, z.stride[0], dl.data, s.data, h.data, h.stride[0]);
  }
}

void rotate_backward(const TensorView& z, const TensorView& dh, const TensorView& seg_indptr,
                     const TensorView& seg_adapter, const TensorView& dl, const TensorView& s,
                     const TensorView& rows, const TensorView& cols,
                     const std::optional<TensorView>& dz, const std::optional<TensorView>& d_dl,
                     const std::optional<TensorView>& d_s, int num_threads, uintptr_t stream) {
  const RotateViews v{z, seg_indptr, seg_adapter, dl, s, rows, cols};
  const bool cuda = z.device == DeviceType::cuda;
  const RotateProblem p = make_problem(v, z.device, z.device, num_threads);
  const int32_t di = z.device_index;
  check_rows_like(dh, "grad_h", p, z.device, di);
  if (dz) check_rows_like(*dz, "grad_z", p, z.device, di);
  check_grad_table(d_dl, "grad_dl", acc_type(p.dtype), p.A, p.n, z.device, di);
  check_grad_table(d_s, "grad_s", acc_type(p.dtype), p.A, p.pat.k, z.device, di);
  void* dz_ptr = dz ? dz->data : nullptr;
  const int64_t lddz = dz ? dz->stride[0] : p.n;
  void* ddl_ptr = d_dl ? d_dl->data : nullptr;
  void* ds_ptr = d_s ? d_s->data : nullptr;
  py::gil_scoped_release nogil;
  if (cuda) {
#ifdef FROD_WITH_CUDA
    rotate_backward_cuda(p, z.data, z.stride[0], dh.data, dh.stride[0], dl.data, s.data, dz_ptr,
                         lddz, ddl_ptr, ds_ptr, reinterpret_cast<void*>(stream));
#else
    throw TypeError("z: frod_rt was built without CUDA support; pass CPU tensors");
#endif
  } else {
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

}  // namespace

void bind_rotate(py::module_& m) {
  m.def("rotate_forward", &rotate_forward, py::arg("z"), py::arg("seg_indptr"),
        py::arg("seg_adapter"), py::arg("dl"), py::arg("s"), py::arg("rows"), py::arg("cols"),
        py::arg("h"), py::arg("num_threads") = 1, py::arg("stream") = 0,
        "h[t] = (diag(dl[a]) + S_a) z[t] for each row t of a segment with adapter a; 0 for "
        "rows without adapter. Writes h in place. See frod/rotate.h.");
  m.def("rotate_backward", &rotate_backward, py::arg("z"), py::arg("grad_h"),
        py::arg("seg_indptr"), py::arg("seg_adapter"), py::arg("dl"), py::arg("s"),
        py::arg("rows"), py::arg("cols"), py::arg("grad_z") = py::none(),
        py::arg("grad_dl") = py::none(), py::arg("grad_s") = py::none(),
        py::arg("num_threads") = 1, py::arg("stream") = 0,
        "Backward of rotate_forward: writes grad_z, and the rows of grad_dl / grad_s of the "
        "adapters present in the batch. See frod/rotate.h.");
  m.def("segments_from_ids", &segments_from_ids, py::arg("adapter_ids"),
        py::arg("num_adapters"), py::arg("seg_indptr"), py::arg("seg_adapter"),
        "Writes the runs of equal consecutive ids into seg_indptr / seg_adapter; returns the "
        "number of runs G.");
}

}  // namespace frod::bind
