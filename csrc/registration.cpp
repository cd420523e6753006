// The one TORCH_LIBRARY of alter_kernels: every op file adds its schema with
// TORCH_LIBRARY_FRAGMENT(alter_kernels, m) and its kernels with TORCH_LIBRARY_IMPL, so that
// one op lives in one file per backend (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu).
#include <torch/library.h>

#ifdef ALTER_WITH_PYTHON
#include <Python.h>
#endif

#include "alter_kernels.h"

namespace alter_kernels {

int64_t build_info_flags() {
  int64_t flags = 0;
#ifdef ALTER_WITH_CUDA
  flags |= 1;
#endif
#ifdef _OPENMP
  flags |= 2;
#endif
  return flags;
}

}  // namespace alter_kernels

TORCH_LIBRARY(alter_kernels, m) {
  // bit 0: built with CUDA kernels, bit 1: built with OpenMP
  m.def("build_info() -> int", &alter_kernels::build_info_flags);
}

#ifdef ALTER_WITH_PYTHON
// A Python module with no functions: importing alter_kernels.kernels._C loads the library, whose static
// initialisers register the ops under torch.ops.alter_kernels.
static struct PyModuleDef alter_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&alter_module); }
#endif
