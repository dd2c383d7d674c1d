// The Python module `patchscaler._C`. It exports nothing itself: importing it runs
// the static TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL registrations of every op
// compiled into the extension (schemas in csrc/*.cpp, kernels in csrc/cpu and
// csrc/cuda), after which the ops are reachable as torch.ops.patchscaler.*.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Registers the patchscaler C++/CUDA ops with the PyTorch dispatcher.",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
