// fastpgd._C.pgd_step_ and _cast: Python objects in, the step's host entry point
// (pgd_step/pgd_step_entry.h) called.
//
// pgd_step_ is a METH_FASTCALL function rather than a pybind11 binding: pybind11's dispatch of
// its seven arguments measured 3-5x (taken as py::handle) to 8-10x (converted to double and
// str) the cost of this calling convention, in one process on the 2-core CI machine. That is
// 0.1-0.3 us more on every step: a fifth to a half more on a small tensor (the whole call takes
// about 0.6 us), a few percent on an MNIST batch (about 8 us on one thread). _cast is a test
// hook and goes through pybind11.
#include <Python.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding/bindings.h"
#include "binding/dlpack_import.h"
#include "binding/guard.h"
#include "dlpack.h"
#include "pgd_step/pgd_step_entry.h"

namespace fastpgd {
namespace {

// A Python real number (not bool, not a tensor) as a double; TypeError naming `name` otherwise.
double to_double(PyObject* obj, const char* name) {
  if (PyFloat_CheckExact(obj)) return PyFloat_AS_DOUBLE(obj);
  if (PyBool_Check(obj) || PyObject_HasAttrString(obj, "__dlpack__") || PyComplex_Check(obj) ||
      (!PyFloat_Check(obj) && !PyLong_Check(obj) && !PyIndex_Check(obj) &&
       Py_TYPE(obj)->tp_as_number == nullptr)) {
    throw_type_error(std::string(name) + " must be a real number, got " + type_name(obj));
  }
  const double v = PyFloat_AsDouble(obj);
  if (v == -1.0 && PyErr_Occurred()) {
    const bool overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
    PyErr_Clear();
    if (overflow) throw_value_error(std::string(name) + " is too large for a float");
    throw_type_error(std::string(name) + " must be a real number, got " + type_name(obj));
  }
  return v;
}

// True when eps is a tensor (one value per sample) rather than a Python number.
bool is_tensor_like(PyObject* obj) {
  if (PyFloat_CheckExact(obj)) return false;  // the common case, without two attribute misses
  return PyObject_HasAttrString(obj, "__dlpack__") ||
         PyObject_HasAttrString(reinterpret_cast<PyObject*>(Py_TYPE(obj)),
                                "__dlpack_c_exchange_api__");
}

// Below this many elements the step is over before another thread could use the GIL.
constexpr int64_t kReleaseGilNumel = int64_t(1) << 16;

// pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp, stream=None) -> None
PyObject* pgd_step_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 7 && nargs != 8) {
    throw_type_error("pgd_step_ takes 7 or 8 positional arguments (x_adv, grad, x0, eps, alpha, "
                     "norm, clamp[, stream]), got " + std::to_string(nargs));
  }
  PyObject *x_obj = args[0], *g_obj = args[1], *x0_obj = args[2], *eps_obj = args[3],
           *alpha_obj = args[4], *norm_obj = args[5], *clamp_obj = args[6];
  uintptr_t stream_arg = 0;
  if (nargs == 8 && args[7] != Py_None) {
    if (!PyLong_Check(args[7])) throw_type_error("stream must be an int or None");
    stream_arg = uintptr_t(PyLong_AsUnsignedLongLong(args[7]));
    if (PyErr_Occurred()) {
      PyErr_Clear();
      throw_value_error("stream must be a non-negative int");
    }
  }

  // Scalars first, each checked as soon as it is converted: they are cheap and need no tensor.
  StepParams scalars;
  if (!PyUnicode_Check(norm_obj)) {
    throw_type_error("norm must be a str ('linf' or 'l2'), got " + type_name(norm_obj));
  }
  if (PyUnicode_CompareWithASCIIString(norm_obj, "linf") == 0) {
    scalars.norm = Norm::kLinf;
  } else if (PyUnicode_CompareWithASCIIString(norm_obj, "l2") == 0) {
    scalars.norm = Norm::kL2;
  } else {
    const char* s = PyUnicode_AsUTF8(norm_obj);
    if (s == nullptr) PyErr_Clear();
    throw_value_error(std::string("norm must be 'linf' or 'l2', got '") + (s ? s : "?") + "'");
  }
  scalars.alpha = to_double(alpha_obj, "alpha");
  check_alpha(scalars.alpha);
  if (clamp_obj == Py_None) {
    scalars.has_clamp = false;
  } else {
    if (!(PyTuple_Check(clamp_obj) || PyList_Check(clamp_obj)) ||
        PySequence_Fast_GET_SIZE(clamp_obj) != 2) {
      throw_type_error("clamp must be None or a pair (lo, hi), got " + type_name(clamp_obj));
    }
    PyObject** items = PySequence_Fast_ITEMS(clamp_obj);
    scalars.lo = to_double(items[0], "clamp lo");
    scalars.hi = to_double(items[1], "clamp hi");
    check_clamp(scalars.lo, scalars.hi);
  }
  const bool eps_is_tensor = is_tensor_like(eps_obj);
  if (!eps_is_tensor) {
    scalars.eps = to_double(eps_obj, "eps");
    check_eps(scalars.eps);
  }

  ImportedTensor xi, gi, x0i, ei;
  xi.import(x_obj, "x_adv", stream_arg);
  gi.import(g_obj, "grad", stream_arg);
  x0i.import(x0_obj, "x0", stream_arg);
  if (eps_is_tensor) ei.import(eps_obj, "eps", stream_arg);
  StepTensors tensors;
  tensors.x_adv = &xi.dl();
  tensors.x_adv_read_only = xi.read_only();
  tensors.grad = &gi.dl();
  tensors.x0 = &x0i.dl();
  tensors.eps = eps_is_tensor ? &ei.dl() : nullptr;
  const StepParams p = check_step(tensors, scalars);
  if (p.batch == 0 || p.sample_numel == 0) Py_RETURN_NONE;

  if (!p.cuda) {
    if (p.batch * p.sample_numel >= kReleaseGilNumel) {
      // Other Python threads run meanwhile; the GIL comes back on every way out.
      pybind11::gil_scoped_release released;
      run_step(p, nullptr);
    } else {
      run_step(p, nullptr);
    }
    Py_RETURN_NONE;
  }
  // The caller's current stream: named by the producer's exchange API where it has one, else
  // the stream argument (the Python wrapper passes torch.cuda.current_stream()).
  void* stream = reinterpret_cast<void*>(stream_arg);
  const DLPackExchangeAPI* api = xi.api();
  if (api != nullptr && api->current_work_stream != nullptr &&
      api->current_work_stream(kDLCUDA, p.device, &stream) != 0) {
    rethrow_python_error("the current CUDA stream of x_adv could not be queried");
  }
  run_step(p, stream);
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    guarded_method<pgd_step_entry>(
        "pgd_step_", METH_FASTCALL,
        "pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp, stream=None) -> None\n\n"
        "The fused PGD step, in place on x_adv. Use fastpgd.pgd_step_ instead."),
};

}  // namespace

void bind_pgd_step(pybind11::module_& m) {
  add_functions(m, kMethods);
  m.def(
      "_cast",
      [](pybind11::handle src, pybind11::handle dst) {
        ImportedTensor si, di;
        si.import(src.ptr(), "src", 0);
        di.import(dst.ptr(), "dst", 0);
        cast(si.dl(), di.dl(), di.read_only());
      },
      pybind11::arg("src"), pybind11::arg("dst"), pybind11::pos_only(),
      "_cast(src, dst): float32 <-> float16/bfloat16 conversion (for tests).");
}

}  // namespace fastpgd
