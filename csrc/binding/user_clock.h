// Reading a user clock: a Python callable returning int nanoseconds, as fastpgd.Stopwatch and
// the timer sections accept for tests (time.perf_counter_ns is the model). Without one they
// read steady_now_ns() (clock.h).
#pragma once

#include <Python.h>

#include <cstdint>

#include "clock.h"

namespace fastpgd {

// Calls clock() and stores its reading in *now. Returns false with a Python error set when the
// call raised, returned a non-int (TypeError) or a value outside int64 (OverflowError).
inline bool read_user_clock(PyObject* clock, std::int64_t* now) {
  PyObject* value = PyObject_CallNoArgs(clock);
  if (value == nullptr) return false;
  if (!PyLong_Check(value)) {
    PyErr_Format(PyExc_TypeError, "clock must return an int (nanoseconds), got %.200s",
                 Py_TYPE(value)->tp_name);
    Py_DECREF(value);
    return false;
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
  Py_DECREF(value);
  if (overflow != 0) {
    PyErr_SetString(PyExc_OverflowError,
                    "clock returned a value outside the int64 range of nanoseconds");
    return false;
  }
  if (v == -1 && PyErr_Occurred()) return false;
  *now = static_cast<std::int64_t>(v);
  return true;
}

// The user clock's reading, or steady_clock's when `clock` is null; false as above.
inline bool read_clock(PyObject* clock, std::int64_t* now) {
  if (clock == nullptr) {
    *now = steady_now_ns();
    return true;
  }
  return read_user_clock(clock, now);
}

}  // namespace fastpgd
