// The C++/CPython boundary of the hand-written entry points (METH_* functions, type slots,
// getters and setters): no C++ exception may unwind into CPython's C frames, where it would
// terminate the process. Each such entry point is registered as guarded<fn>, which turns any
// exception into the matching Python one and returns the C API's error value. (pybind11 does
// the same for the functions it binds; module.cpp registers the same mapping with it.)
#pragma once

#include <Python.h>

#include <new>
#include <stdexcept>
#include <type_traits>

#include "errors.h"

namespace fastpgd {

// Thrown where a Python exception is already set, so that C++ frames unwind to the entry point,
// which then returns its error value with that exception as it is.
struct PythonErrorAlreadySet {};

// Sets the Python exception for the C++ exception being handled: ArgumentTypeError ->
// TypeError, ArgumentValueError -> ValueError, std::bad_alloc -> MemoryError, anything else ->
// RuntimeError with its what(). Call it only inside a catch block.
inline void set_python_error_from_current_exception() noexcept {
  try {
    throw;
  } catch (const PythonErrorAlreadySet&) {
  } catch (const ArgumentTypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what());
  } catch (const ArgumentValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "fastpgd: unknown C++ exception");
  }
}

template <auto Fn>
struct Guard;

template <typename R, typename... Args, R (*Fn)(Args...)>
struct Guard<Fn> {
  static R call(Args... args) noexcept {
    try {
      return Fn(args...);
    } catch (...) {
      set_python_error_from_current_exception();
      if constexpr (std::is_pointer_v<R>) {
        return nullptr;  // PyObject*: the C API's error value
      } else {
        return R(-1);  // int (tp_init, setters) and Py_ssize_t (sq_length)
      }
    }
  }
};

// `Fn` behind the boundary, with the same signature. A try block costs nothing until it throws.
template <auto Fn>
constexpr auto guarded = &Guard<Fn>::call;

// A method table entry for guarded<Fn>; `flags` is its calling convention (METH_NOARGS, ...).
template <auto Fn>
PyMethodDef guarded_method(const char* name, int flags, const char* doc) {
  // PyCFunction is the table's one pointer type; CPython casts it back according to `flags`.
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(guarded<Fn>)), flags,
          doc};
}

}  // namespace fastpgd
