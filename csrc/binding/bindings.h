// What each binding file adds to the module fastpgd._C.
#pragma once

#include <pybind11/pybind11.h>

namespace fastpgd {

void bind_stopwatch(pybind11::module_& m);  // binding/stopwatch.cpp
void bind_pgd_step(pybind11::module_& m);   // binding/pgd_step.cpp
void bind_timers(pybind11::module_& m);     // binding/timers.cpp

}  // namespace fastpgd
