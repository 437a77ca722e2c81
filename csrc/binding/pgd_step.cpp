// fastpgd._C.pgd_step_: the Python entry point of the fused step. It borrows the tensors through
// DLPack, checks every argument (TypeError/ValueError naming it), and runs the CPU or CUDA kernel.
//
// It is a METH_FASTCALL function rather than a pybind11 binding: on a 50x1x28x28 batch the
// kernel takes a few microseconds and argument conversion would dominate.
#include <Python.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "binding/bindings.h"
#include "binding/dlpack_import.h"
#include "dlpack.h"
#include "pgd_step/pgd_step.h"

namespace fastpgd {
namespace {

std::string dtype_name(const DLDataType& t) {
  std::string base;
  switch (t.code) {
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLComplex: base = "complex"; break;
    case kDLBool: return "bool";
    default: base = "dtype_code" + std::to_string(int(t.code)) + "_"; break;
  }
  std::string name = base + std::to_string(int(t.bits));
  if (t.lanes != 1) name += "x" + std::to_string(int(t.lanes));
  return name;
}

std::string device_name(const DLDevice& d) {
  switch (d.device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda:" + std::to_string(d.device_id);
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed:" + std::to_string(d.device_id);
    case kDLROCM: return "rocm:" + std::to_string(d.device_id);
    default:
      return "device_type" + std::to_string(int(d.device_type)) + ":" +
             std::to_string(d.device_id);
  }
}

std::string shape_str(const DLTensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  return s + "]";
}

bool same_dtype(const DLDataType& a, const DLDataType& b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}
bool same_device(const DLDevice& a, const DLDevice& b) {
  return a.device_type == b.device_type && a.device_id == b.device_id;
}

DType to_dtype(const DLDataType& t, const char* name) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 32) return DType::kFloat32;
    if (t.code == kDLFloat && t.bits == 64) return DType::kFloat64;
    if (t.code == kDLFloat && t.bits == 16) return DType::kFloat16;
    if (t.code == kDLBfloat && t.bits == 16) return DType::kBFloat16;
  }
  throw_type_error(std::string(name) +
                   " must be a floating-point tensor (float16, bfloat16, float32 or float64), got " +
                   dtype_name(t));
}

int64_t numel(const DLTensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) n *= t.shape[i];
  return n;
}

// Row-major contiguous (dims of size 1 may have any stride; a storage offset is fine).
bool is_contiguous(const DLTensor& t) {
  if (t.strides == nullptr) return true;
  int64_t expected = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] == 0) return true;
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

std::string strides_str(const DLTensor& t) {
  if (t.strides == nullptr) return "compact";
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.strides[i]);
  }
  return s + ")";
}

const char* begin_ptr(const DLTensor& t) {
  return static_cast<const char*>(t.data) + t.byte_offset;
}

// Contiguous tensors occupy [begin, begin + numel * itemsize).
bool overlaps(const DLTensor& a, const DLTensor& b, int64_t itemsize_a, int64_t itemsize_b) {
  const int64_t na = numel(a) * itemsize_a, nb = numel(b) * itemsize_b;
  if (na == 0 || nb == 0 || !same_device(a.device, b.device)) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(begin_ptr(a));
  const uintptr_t b0 = reinterpret_cast<uintptr_t>(begin_ptr(b));
  return a0 < b0 + uintptr_t(nb) && b0 < a0 + uintptr_t(na);
}

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

size_t itemsize(DType d) { return (d == DType::kFloat64) ? 8 : (d == DType::kFloat32 ? 4 : 2); }

double load_as_double(const void* p, DType d, int64_t i) {
  switch (d) {
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kFloat64: return static_cast<const double*>(p)[i];
    case DType::kFloat16: return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  return 0.0;
}

std::string num_str(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// Checks a borrowed x_adv-like tensor against x_adv (dtype, device, shape, contiguity).
void check_like(const DLTensor& t, const DLTensor& x, const char* name) {
  if (!same_dtype(t.dtype, x.dtype)) {
    throw_type_error(std::string(name) + " must have the same dtype as x_adv, got " +
                     dtype_name(t.dtype) + " and " + dtype_name(x.dtype));
  }
  if (!same_device(t.device, x.device)) {
    throw_value_error(std::string(name) + " must be on the same device as x_adv, got " +
                      device_name(t.device) + " and " + device_name(x.device));
  }
  bool same_shape = t.ndim == x.ndim;
  for (int i = 0; same_shape && i < t.ndim; ++i) same_shape = t.shape[i] == x.shape[i];
  if (!same_shape) {
    throw_value_error(std::string(name) + " must have the same shape as x_adv, got " +
                      shape_str(t) + " and " + shape_str(x));
  }
  if (!is_contiguous(t)) {
    throw_value_error(std::string(name) + " must be contiguous, got strides " + strides_str(t) +
                      " for shape " + shape_str(t) + " (call .contiguous())");
  }
}

// pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp, stream=0) -> None
PyObject* pgd_step_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  try {
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

    StepParams p;
    // Scalars first: they are cheap and need no tensor.
    if (!PyUnicode_Check(norm_obj)) {
      throw_type_error("norm must be a str ('linf' or 'l2'), got " + type_name(norm_obj));
    }
    if (PyUnicode_CompareWithASCIIString(norm_obj, "linf") == 0) {
      p.norm = Norm::kLinf;
    } else if (PyUnicode_CompareWithASCIIString(norm_obj, "l2") == 0) {
      p.norm = Norm::kL2;
    } else {
      const char* s = PyUnicode_AsUTF8(norm_obj);
      if (s == nullptr) PyErr_Clear();
      throw_value_error(std::string("norm must be 'linf' or 'l2', got '") + (s ? s : "?") + "'");
    }
    p.alpha = to_double(alpha_obj, "alpha");
    if (!std::isfinite(p.alpha)) {
      throw_value_error("alpha must be finite, got " + num_str(p.alpha));
    }
    if (clamp_obj == Py_None) {
      p.has_clamp = false;
    } else {
      if (!(PyTuple_Check(clamp_obj) || PyList_Check(clamp_obj)) ||
          PySequence_Fast_GET_SIZE(clamp_obj) != 2) {
        throw_type_error("clamp must be None or a pair (lo, hi), got " + type_name(clamp_obj));
      }
      PyObject** items = PySequence_Fast_ITEMS(clamp_obj);
      p.lo = to_double(items[0], "clamp lo");
      p.hi = to_double(items[1], "clamp hi");
      if (std::isnan(p.lo) || std::isnan(p.hi)) {
        throw_value_error("clamp bounds must not be NaN, got (" + num_str(p.lo) + ", " +
                          num_str(p.hi) + ")");
      }
      if (p.lo > p.hi) {
        throw_value_error("clamp must have lo <= hi, got (" + num_str(p.lo) + ", " +
                          num_str(p.hi) + ")");
      }
    }
    const bool eps_is_tensor = PyObject_HasAttrString(eps_obj, "__dlpack__") ||
                               PyObject_HasAttrString(reinterpret_cast<PyObject*>(
                                   Py_TYPE(eps_obj)), "__dlpack_c_exchange_api__");
    if (!eps_is_tensor) {
      p.eps = to_double(eps_obj, "eps");
      if (!(p.eps >= 0.0)) throw_value_error("eps must be >= 0 and not NaN, got " + num_str(p.eps));
    }

    ImportedTensor xi, gi, x0i, ei;
    xi.import(x_obj, "x_adv", stream_arg);
    const DLTensor& x = xi.dl();
    p.dtype = to_dtype(x.dtype, "x_adv");
    gi.import(g_obj, "grad", stream_arg);
    x0i.import(x0_obj, "x0", stream_arg);
    const DLTensor& g = gi.dl();
    const DLTensor& x0 = x0i.dl();
    check_like(g, x, "grad");
    check_like(x0, x, "x0");
    if (!is_contiguous(x)) {
      throw_value_error("x_adv must be contiguous, got strides " + strides_str(x) +
                        " for shape " + shape_str(x) + " (call .contiguous())");
    }
    if (xi.read_only()) throw_value_error("x_adv is read-only, but it is updated in place");
    const DLDevice dev = x.device;
    if (dev.device_type != kDLCPU && dev.device_type != kDLCUDA) {
      throw_value_error("x_adv is on " + device_name(dev) +
                        "; fastpgd supports cpu and cuda tensors");
    }
#ifndef FASTPGD_WITH_CUDA
    if (dev.device_type == kDLCUDA) {
      throw_value_error("x_adv is on " + device_name(dev) +
                        ", but this build of fastpgd has no CUDA kernels; reinstall it where "
                        "nvcc is found (see fastpgd.extension_info())");
    }
#endif
    const int64_t isz = int64_t(itemsize(p.dtype));
    if (overlaps(x, g, isz, isz)) {
      throw_value_error("x_adv must not overlap grad: it is written while grad is read");
    }
    if (overlaps(x, x0, isz, isz)) {
      throw_value_error("x_adv must not overlap x0: it is written while x0 is read");
    }
    p.batch = x.ndim == 0 ? 1 : x.shape[0];
    p.sample_numel = 1;
    for (int i = 1; i < x.ndim; ++i) p.sample_numel *= x.shape[i];

    if (eps_is_tensor) {
      ei.import(eps_obj, "eps", stream_arg);
      const DLTensor& e = ei.dl();
      if (!same_dtype(e.dtype, x.dtype)) {
        throw_type_error("eps must have the same dtype as x_adv, got " + dtype_name(e.dtype) +
                         " and " + dtype_name(x.dtype));
      }
      if (!same_device(e.device, dev)) {
        throw_value_error("eps must be on the same device as x_adv, got " +
                          device_name(e.device) + " and " + device_name(dev));
      }
      if (e.ndim != 1 || e.shape[0] != p.batch) {
        throw_value_error("eps must be a float or a 1-D tensor with one value per sample (" +
                          std::to_string(p.batch) + "), got shape " + shape_str(e));
      }
      if (!is_contiguous(e)) throw_value_error("eps must be contiguous, got strides " +
                                               strides_str(e));
      if (overlaps(x, e, isz, isz)) {
        throw_value_error("x_adv must not overlap eps: it is written while eps is read");
      }
      p.eps_per_sample = begin_ptr(e);
      // On the CPU the values are checked here; on CUDA that would cost a device sync, so a
      // negative or NaN per-sample eps there gives NaN or an inverted ball, as in the reference.
      if (dev.device_type == kDLCPU) {
        for (int64_t i = 0; i < p.batch; ++i) {
          const double v = load_as_double(p.eps_per_sample, p.dtype, i);
          if (!(v >= 0.0)) {
            throw_value_error("eps must be >= 0 and not NaN, got " + num_str(v) +
                              " for sample " + std::to_string(i));
          }
        }
      }
    }
    p.x_adv = const_cast<char*>(begin_ptr(x));
    p.grad = begin_ptr(g);
    p.x0 = begin_ptr(x0);
    if (p.batch == 0 || p.sample_numel == 0) Py_RETURN_NONE;

    if (dev.device_type == kDLCPU) {
      // Let other Python threads run while a large step computes.
      if (p.batch * p.sample_numel >= (int64_t(1) << 16)) {
        Py_BEGIN_ALLOW_THREADS pgd_step_cpu(p);
        Py_END_ALLOW_THREADS
      } else {
        pgd_step_cpu(p);
      }
    }
#ifdef FASTPGD_WITH_CUDA
    else {
      void* stream = reinterpret_cast<void*>(stream_arg);
      if (const DLPackExchangeAPI* api = xi.api()) {
        if (api->current_work_stream(kDLCUDA, dev.device_id, &stream) != 0) {
          rethrow_python_error("the current CUDA stream of x_adv could not be queried");
        }
      }
      p.device = dev.device_id;
      pgd_step_cuda(p, stream);
    }
#endif
    Py_RETURN_NONE;
  } catch (const PyError& e) {
    PyErr_SetString(e.type, e.message.c_str());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// _cast(src, dst): float32 <-> float16/bfloat16 with the kernel's own conversions (for tests).
PyObject* cast_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  try {
    if (nargs != 2) throw_type_error("_cast takes (src, dst)");
    ImportedTensor si, di;
    si.import(args[0], "src", 0);
    di.import(args[1], "dst", 0);
    const DLTensor &s = si.dl(), &d = di.dl();
    const DType sd = to_dtype(s.dtype, "src"), dd = to_dtype(d.dtype, "dst");
    if ((sd == DType::kFloat32) == (dd == DType::kFloat32) || sd == DType::kFloat64 ||
        dd == DType::kFloat64) {
      throw_type_error("_cast converts between float32 and float16/bfloat16");
    }
    if (s.device.device_type != kDLCPU || d.device.device_type != kDLCPU) {
      throw_value_error("_cast works on cpu tensors");
    }
    if (numel(s) != numel(d) || !is_contiguous(s) || !is_contiguous(d) || di.read_only()) {
      throw_value_error("_cast needs contiguous tensors of the same size, dst writable");
    }
    if (overlaps(s, d, int64_t(itemsize(sd)), int64_t(itemsize(dd)))) {
      throw_value_error("_cast needs dst not to overlap src");
    }
    cast_cpu(begin_ptr(s), sd, const_cast<char*>(begin_ptr(d)), dd, numel(s));
    Py_RETURN_NONE;
  } catch (const PyError& e) {
    PyErr_SetString(e.type, e.message.c_str());
    return nullptr;
  }
}

PyMethodDef kMethods[] = {
    {"pgd_step_", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pgd_step_entry)),
     METH_FASTCALL,
     "pgd_step_(x_adv, grad, x0, eps, alpha, norm, clamp, stream=None) -> None\n\n"
     "The fused PGD step, in place on x_adv. Use fastpgd.pgd_step_ instead."},
    {"_cast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(cast_entry)),
     METH_FASTCALL, "_cast(src, dst): float32 <-> float16/bfloat16 conversion (for tests)."},
};

}  // namespace

void bind_pgd_step(pybind11::module_& m) {
  for (PyMethodDef& def : kMethods) {
    PyObject* fn = PyCFunction_NewEx(&def, nullptr, m.ptr());
    if (fn == nullptr) throw pybind11::error_already_set();
    m.add_object(def.ml_name, pybind11::reinterpret_steal<pybind11::object>(fn));
  }
}

}  // namespace fastpgd
