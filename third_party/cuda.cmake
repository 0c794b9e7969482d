# Decides whether to build the CUDA kernels (FROD_BUILD_CUDA) and, if so, enables CUDA and
# defines the imported target frod::cutlass with the CUTLASS headers of the nvidia-cutlass
# wheel, located through Python (`import cutlass_library`). No CUTLASS sources are copied.
#
#   FROD_CUDA=OFF   never build CUDA
#   FROD_CUDA=AUTO  build when nvcc and the nvidia-cutlass wheel are found (default)
#   FROD_CUDA=ON    build, fail if either is missing
#   FROD_CUTLASS_DIR=<dir>  use headers from <dir>/include (and <dir>/tools/util/include)
set(FROD_BUILD_CUDA OFF)
if(FROD_CUDA STREQUAL "OFF")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(FROD_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FROD_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
  message(STATUS "frod_rt: nvcc not found, building without CUDA")
  return()
endif()

if(NOT FROD_CUTLASS_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
            "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source'))"
    OUTPUT_VARIABLE _frod_cutlass_src
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _frod_cutlass_rc
    ERROR_QUIET)
  if(_frod_cutlass_rc EQUAL 0 AND EXISTS "${_frod_cutlass_src}/include/cutlass/cutlass.h")
    set(FROD_CUTLASS_DIR "${_frod_cutlass_src}")
  endif()
endif()
if(NOT FROD_CUTLASS_DIR OR NOT EXISTS "${FROD_CUTLASS_DIR}/include/cutlass/cutlass.h")
  if(FROD_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FROD_CUDA=ON but the CUTLASS headers were not found: "
                        "pip install nvidia-cutlass, or set FROD_CUTLASS_DIR")
  endif()
  message(STATUS "frod_rt: CUTLASS headers not found (pip install nvidia-cutlass), building without CUDA")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # Ampere (sm_80) and Hopper (sm_90a: wgmma / TMA kernels) as cubins, plus compute_90 PTX
  # for the portable kernels (rotation, grouped GEMM) so newer GPUs JIT them.
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90a-real;90-virtual")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

add_library(frod_cutlass INTERFACE)
target_include_directories(frod_cutlass SYSTEM INTERFACE
  "${FROD_CUTLASS_DIR}/include" "${FROD_CUTLASS_DIR}/tools/util/include")
add_library(frod::cutlass ALIAS frod_cutlass)
message(STATUS "frod_rt: CUTLASS headers from ${FROD_CUTLASS_DIR}")
set(FROD_BUILD_CUDA ON)
