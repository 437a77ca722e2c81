// What each binding file adds to the module fastpgd._C, and how hand-written functions join it.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <cstddef>

namespace fastpgd {

void bind_stopwatch(pybind11::module_& m);  // binding/stopwatch.cpp
void bind_timers(pybind11::module_& m);     // binding/timers.cpp
void bind_pgd_step(pybind11::module_& m);   // binding/pgd_step.cpp

// Adds CPython functions (entries made by guarded_method(), binding/guard.h) to the module. The
// table must outlive the module: the functions keep pointers into it.
template <std::size_t N>
void add_functions(pybind11::module_& m, PyMethodDef (&table)[N]) {
  const pybind11::object module_name = m.attr("__name__");
  for (PyMethodDef& def : table) {
    // As PyModule_AddFunctions makes them: bound to the module, __module__ its name.
    PyObject* fn = PyCFunction_NewEx(&def, m.ptr(), module_name.ptr());
    if (fn == nullptr) throw pybind11::error_already_set();
    m.add_object(def.ml_name, pybind11::reinterpret_steal<pybind11::object>(fn));
  }
}

}  // namespace fastpgd
