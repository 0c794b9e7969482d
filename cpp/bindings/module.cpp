// The frod_rt._C extension module: exception mapping and one bind_* call per op family.
#include <pybind11/pybind11.h>

#include "frod/rotate_cuda.h"
#include "frod/tensor_view.h"

namespace py = pybind11;

namespace frod::bind {
void bind_rotate(py::module_& m);
void bind_attention(py::module_& m);
#ifdef FROD_WITH_CUDA
void bind_cuda(py::module_& m);
#endif
}  // namespace frod::bind

PYBIND11_MODULE(_C, m) {
  m.doc() = "frod_rt compiled core (torch-free): multi-adapter FRoD kernels";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const frod::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const frod::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
  frod::bind::bind_rotate(m);
  frod::bind::bind_attention(m);
  m.attr("cuda_build_mode") = FROD_CUDA_MODE;  // FROD_CUDA at configure time: AUTO, ON or OFF
#ifdef FROD_WITH_CUDA
  m.attr("with_cuda") = true;
  frod::bind::bind_cuda(m);
#else
  m.attr("with_cuda") = false;
#endif
}
