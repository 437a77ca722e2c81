// fastpgd._C: the module. It registers what the binding files bind and says what this build
// contains; the work lives in the components (stopwatch/, timers/, pgd_step/).
#include <Python.h>
#include <pybind11/pybind11.h>

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "binding/bindings.h"
#include "binding/guard.h"
#include "errors.h"
#include "pgd_step/step_params.h"
#ifdef FASTPGD_WITH_CUDA
#include "device_info.h"
#endif

namespace py = pybind11;

namespace fastpgd {
namespace {

// _raise_from_cxx(kind): throws a C++ exception through guarded<>, as any entry point could,
// so that tests can check what Python sees.
PyObject* raise_from_cxx(PyObject*, PyObject* kind) {
  const char* k = PyUnicode_Check(kind) ? PyUnicode_AsUTF8(kind) : nullptr;
  if (k == nullptr) {
    PyErr_Clear();
    throw ArgumentTypeError("kind must be a str");
  }
  const std::string s = k;
  if (s == "bad_alloc") throw std::bad_alloc();
  if (s == "runtime_error") throw std::runtime_error("fastpgd: runtime_error from C++");
  if (s == "type_error") throw ArgumentTypeError("x must be a tensor");
  if (s == "value_error") throw ArgumentValueError("x must be contiguous");
  if (s == "unknown") throw 42;  // not a std::exception
  throw ArgumentValueError("kind must be one of bad_alloc, runtime_error, type_error, "
                           "value_error, unknown; got '" + s + "'");
}

PyMethodDef kMethods[] = {
    guarded_method<raise_from_cxx>(
        "_raise_from_cxx", METH_O,
        "_raise_from_cxx(kind) -> NoReturn\n\nTest hook: throw the C++ exception `kind` "
        "(bad_alloc, runtime_error, type_error, value_error, unknown) through the boundary "
        "every hand-written entry point uses."),
};

py::dict build_info() {
  py::dict info;
  // Reported by the CPU kernels' own translation unit, so present only when it is linked.
  const CpuKernelInfo cpu = pgd_step_cpu_info();
  py::list clones;
  for (int i = 0; i < cpu.clone_count; ++i) clones.append(cpu.clones[i]);
  info["cpu"] = cpu.clone_count > 0;
  info["cpu_clones"] = clones;
  info["cpu_clone_in_use"] = cpu.clone_in_use;
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
  return info;
}

}  // namespace
}  // namespace fastpgd

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "fastpgd compiled core: the lap stopwatch (Stopwatch), the timer sections behind "
      "fastpgd.Timers (_Section, _TimersBase) and the fused PGD step (pgd_step_)";
  m.attr("__version__") = FASTPGD_VERSION;
  // What this build contains; fastpgd.extension_info() adds what is usable now.
  m.attr("build_info") = fastpgd::build_info();

  // The functions pybind11 binds raise what the hand-written entry points raise (guard.h).
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const fastpgd::ArgumentTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const fastpgd::ArgumentValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const fastpgd::PythonErrorAlreadySet&) {
    }
  });

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
  fastpgd::add_functions(m, fastpgd::kMethods);

  fastpgd::bind_stopwatch(m);
  fastpgd::bind_timers(m);
  fastpgd::bind_pgd_step(m);
}
