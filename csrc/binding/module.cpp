// fastpgd._C: the compiled core. This file binds; the work lives in the cores it includes.
#include <pybind11/pybind11.h>

#include "binding/bindings.h"
#ifdef FASTPGD_WITH_CUDA
#include "device_info.h"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastpgd compiled core: the lap stopwatch and the fused PGD step";
  m.attr("__version__") = FASTPGD_VERSION;

  // What this build contains; fastpgd.extension_info() adds what is usable now.
  py::dict info;
  info["cpu"] = true;
#ifdef FASTPGD_WITH_CUDA
  info["cuda"] = true;
  info["cuda_arches"] = py::str(FASTPGD_CUDA_ARCHES).attr("split")(",");
#else
  info["cuda"] = false;
  info["cuda_arches"] = py::list();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#if defined(__SANITIZE_ADDRESS__)
  info["sanitizers"] = true;
#else
  info["sanitizers"] = false;
#endif
  m.attr("build_info") = info;

  m.def(
      "cuda_device_count",
      []() {
#ifdef FASTPGD_WITH_CUDA
        return fastpgd::cuda_device_count();
#else
        return 0;
#endif
      },
      "Number of CUDA devices the extension's own runtime sees (0 without CUDA kernels).");

  fastpgd::bind_stopwatch(m);
  fastpgd::bind_pgd_step(m);
  fastpgd::bind_timers(m);
}
