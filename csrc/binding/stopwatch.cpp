// fastpgd._C.Stopwatch: the lap stopwatch (stopwatch/stopwatch.h) as a CPython type.
//
// Written against CPython's own protocol (a static PyTypeObject, METH_NOARGS methods, getset
// properties) rather than as a pybind11 class: lap() is meant to be cheap enough to call around
// every phase of a training step, and this way it costs about one bare time.perf_counter_ns().
// A pybind11 method doing the same work (a clock read and a push_back) measured 3-4x slower, in
// one process on the 2-core CI machine: its call dispatch, not the work, would set the cost.
// pybind11 only registers the type into the module. Every slot and method is registered as
// guarded<> (binding/guard.h).
//
// Thread safety: with the GIL, a C method that calls no Python code is atomic. Every method
// therefore reads the clock first (a user clock is Python code and may switch threads) and
// then updates the state without calling back into Python. On a free-threaded build
// (Py_GIL_DISABLED) the update runs inside a per-object critical section instead. While a
// user clock is read, other threads may update the stopwatch with later readings; applied
// after them, the earlier reading would move the mark back and count time twice, so it is
// applied as the latest of theirs (with_now).
#include <Python.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>

#include "binding/bindings.h"
#include "binding/guard.h"
#include "binding/user_clock.h"
#include "clock.h"
#include "stopwatch/stopwatch.h"

#ifdef Py_GIL_DISABLED
#define FASTPGD_LOCK(obj) Py_BEGIN_CRITICAL_SECTION(reinterpret_cast<PyObject*>(obj))
#define FASTPGD_UNLOCK() Py_END_CRITICAL_SECTION()
#else
#define FASTPGD_LOCK(obj) {
#define FASTPGD_UNLOCK() }
#endif

namespace fastpgd {
namespace {

using Result = LapStopwatch::Result;

struct StopwatchObject {
  PyObject_HEAD
  LapStopwatch core;
  PyObject* clock;  // a user callable returning int nanoseconds; nullptr: steady_clock
  // With a user clock: how many readings were applied to the core, and the last of them.
  std::uint64_t applied;
  std::int64_t last_applied;
  bool strict;
};

StopwatchObject* as_sw(PyObject* op) { return reinterpret_cast<StopwatchObject*>(op); }

// fastpgd.StopwatchError, defined in Python (fastpgd/stopwatch.py) and handed over with
// _set_stopwatch_error() when that module is imported, so that both backends raise one class.
PyObject* g_stopwatch_error = nullptr;

PyObject* stopwatch_error() {
  if (g_stopwatch_error == nullptr) {
    // Used without fastpgd.stopwatch imported yet: importing it registers the class.
    PyObject* mod = PyImport_ImportModule("fastpgd.stopwatch");
    if (mod == nullptr) {
      PyErr_Clear();
    } else {
      Py_DECREF(mod);
    }
  }
  return g_stopwatch_error != nullptr ? g_stopwatch_error : PyExc_RuntimeError;
}

// Strict mode: say what went wrong and what to call instead.
PyObject* raise_misuse(LapStopwatch::Call call, Result r) {
  PyErr_SetString(stopwatch_error(), LapStopwatch::misuse_message(call, r));
  return nullptr;
}

// Reads the current time and applies op(now) to the core as one atomic step (see the top of
// the file). Returns false with a Python error set when the user clock failed.
//
// A user clock may let other calls apply their readings while it is read. Then this reading
// is raised to the last of theirs, as if it had been read right after it: the readings reach
// the core in order, so the laps tile the time from start() to the last reading exactly (as
// PyStopwatch's, which reads under its lock). The laps of a single thread, whose calls never
// overlap, see the clock's readings unchanged, even a clock that goes backwards.
template <typename Op>
bool with_now(StopwatchObject* self, Op&& op) {
  if (self->clock != nullptr) {
    std::uint64_t seen = 0;
    FASTPGD_LOCK(self);
    seen = self->applied;
    FASTPGD_UNLOCK();
    std::int64_t now = 0;
    if (!read_user_clock(self->clock, &now)) return false;
    FASTPGD_LOCK(self);
    if (self->applied != seen && now < self->last_applied) now = self->last_applied;
    op(now);
    ++self->applied;
    self->last_applied = now;
    FASTPGD_UNLOCK();
  } else {
    FASTPGD_LOCK(self);
    op(steady_now_ns());
    FASTPGD_UNLOCK();
  }
  return true;
}

// ---- type slots ---------------------------------------------------------------------------

PyObject* sw_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"strict", "clock", nullptr};
  PyObject* strict = Py_False;
  PyObject* clock = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:Stopwatch", const_cast<char**>(kwlist),
                                   &strict, &clock)) {
    return nullptr;
  }
  if (!PyBool_Check(strict)) {
    PyErr_Format(PyExc_TypeError, "strict must be a bool, got %.200s", Py_TYPE(strict)->tp_name);
    return nullptr;
  }
  if (clock != Py_None && !PyCallable_Check(clock)) {
    PyErr_Format(PyExc_TypeError,
                 "clock must be None or a zero-argument callable returning int nanoseconds "
                 "(like time.perf_counter_ns), got %.200s",
                 Py_TYPE(clock)->tp_name);
    return nullptr;
  }
  PyObject* op = type->tp_alloc(type, 0);
  if (op == nullptr) return nullptr;
  StopwatchObject* self = as_sw(op);
  new (&self->core) LapStopwatch();
  self->strict = strict == Py_True;
  self->clock = clock == Py_None ? nullptr : Py_NewRef(clock);
  self->applied = 0;
  self->last_applied = 0;
  return op;
}

// The GC and deallocation slots call only the C API and destructors: they cannot throw.
int sw_traverse(PyObject* op, visitproc visit, void* arg) noexcept {
  Py_VISIT(as_sw(op)->clock);
  return 0;
}

int sw_clear(PyObject* op) noexcept {
  Py_CLEAR(as_sw(op)->clock);
  return 0;
}

void sw_dealloc(PyObject* op) noexcept {
  PyObject_GC_UnTrack(op);
  sw_clear(op);
  as_sw(op)->core.~LapStopwatch();
  Py_TYPE(op)->tp_free(op);
}

// ---- methods ------------------------------------------------------------------------------

PyObject* sw_start(PyObject* op, PyObject*) {
  StopwatchObject* self = as_sw(op);
  Result r = Result::kOk;
  if (!with_now(self, [&](std::int64_t now) { r = self->core.start(now); })) return nullptr;
  if (r != Result::kOk && self->strict) return raise_misuse(LapStopwatch::Call::kStart, r);
  Py_RETURN_NONE;
}

PyObject* sw_stop(PyObject* op, PyObject*) {
  StopwatchObject* self = as_sw(op);
  Result r = Result::kOk;
  if (!with_now(self, [&](std::int64_t now) { r = self->core.stop(now); })) return nullptr;
  if (r != Result::kOk && self->strict) return raise_misuse(LapStopwatch::Call::kStop, r);
  Py_RETURN_NONE;
}

PyObject* sw_lap(PyObject* op, PyObject*) {
  StopwatchObject* self = as_sw(op);
  Result r = Result::kOk;
  std::int64_t ns = 0;
  bool no_memory = false;
  // Caught inside: unwinding must not skip the end of a free-threaded build's critical section.
  if (!with_now(self, [&](std::int64_t now) {
        try {
          r = self->core.lap(now, &ns);
        } catch (const std::bad_alloc&) {
          no_memory = true;
        }
      })) {
    return nullptr;
  }
  if (no_memory) return PyErr_NoMemory();
  if (r == Result::kOk) return PyFloat_FromDouble(LapStopwatch::to_seconds(ns));
  if (self->strict) return raise_misuse(LapStopwatch::Call::kLap, r);
  Py_RETURN_NONE;
}

PyObject* sw_reset(PyObject* op, PyObject*) {
  FASTPGD_LOCK(op);
  as_sw(op)->core.reset();
  FASTPGD_UNLOCK();
  Py_RETURN_NONE;
}

PyObject* sw_lap_times(PyObject* op, PyObject*) {
  StopwatchObject* self = as_sw(op);
  // PyList_New may run the garbage collector, hence arbitrary Python code and other threads,
  // so the size is checked again once the list exists. Filling it is then atomic: floats are
  // not tracked by the collector, so creating them runs no Python code.
  for (;;) {
    Py_ssize_t n = 0;
    FASTPGD_LOCK(op);
    n = static_cast<Py_ssize_t>(self->core.size());
    FASTPGD_UNLOCK();
    PyObject* list = PyList_New(n);
    if (list == nullptr) return nullptr;
    bool filled = false;
    bool failed = false;
    FASTPGD_LOCK(op);
    const auto& laps = self->core.laps();
    if (static_cast<Py_ssize_t>(laps.size()) == n) {
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* item = PyFloat_FromDouble(LapStopwatch::to_seconds(laps[i]));
        if (item == nullptr) {
          failed = true;
          break;
        }
        PyList_SET_ITEM(list, i, item);
      }
      filled = true;
    }
    FASTPGD_UNLOCK();
    if (filled && !failed) return list;
    Py_DECREF(list);  // unset items are NULL, which list_dealloc skips
    if (failed) return nullptr;
  }
}

PyObject* sw_capacity_bytes(PyObject* op, PyObject*) {
  std::size_t bytes = 0;
  FASTPGD_LOCK(op);
  bytes = as_sw(op)->core.capacity_bytes();
  FASTPGD_UNLOCK();
  return PyLong_FromSize_t(bytes);
}

PyObject* sw_enter(PyObject* op, PyObject* unused) {
  PyObject* r = sw_start(op, unused);
  if (r == nullptr) return nullptr;
  Py_DECREF(r);
  return Py_NewRef(op);
}

PyObject* sw_exit(PyObject* op, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_Format(PyExc_TypeError, "__exit__ takes 3 arguments, got %zd", nargs);
    return nullptr;
  }
  StopwatchObject* self = as_sw(op);
  Result r = Result::kOk;
  if (!with_now(self, [&](std::int64_t now) { r = self->core.stop(now); })) return nullptr;
  // Strict mode reports a stop() with nothing running, but never hides the block's own error.
  if (r != Result::kOk && self->strict && args[0] == Py_None) {
    return raise_misuse(LapStopwatch::Call::kStop, r);
  }
  Py_RETURN_FALSE;
}

// ---- properties, len, bool, repr ----------------------------------------------------------

PyObject* sw_get_running(PyObject* op, void*) {
  bool running = false;
  FASTPGD_LOCK(op);
  running = as_sw(op)->core.running();
  FASTPGD_UNLOCK();
  return PyBool_FromLong(running);
}

PyObject* sw_get_elapsed(PyObject* op, void*) {
  StopwatchObject* self = as_sw(op);
  std::int64_t ns = 0;
  if (!with_now(self, [&](std::int64_t now) { ns = self->core.elapsed(now); })) return nullptr;
  return PyFloat_FromDouble(LapStopwatch::to_seconds(ns));
}

PyObject* sw_get_total(PyObject* op, void*) {
  std::int64_t ns = 0;
  FASTPGD_LOCK(op);
  ns = as_sw(op)->core.total();
  FASTPGD_UNLOCK();
  return PyFloat_FromDouble(LapStopwatch::to_seconds(ns));
}

PyObject* sw_get_strict(PyObject* op, void*) { return PyBool_FromLong(as_sw(op)->strict); }

Py_ssize_t sw_len(PyObject* op) {
  std::size_t n = 0;
  FASTPGD_LOCK(op);
  n = as_sw(op)->core.size();
  FASTPGD_UNLOCK();
  return static_cast<Py_ssize_t>(n);
}

// With __len__ alone an empty stopwatch would be falsy, a trap in `sw = sw or Stopwatch()`.
int sw_bool(PyObject*) { return 1; }

PyObject* sw_repr(PyObject* op) {
  StopwatchObject* self = as_sw(op);
  LapStopwatch::State state = LapStopwatch::State::kNeverStarted;
  std::size_t n = 0;
  std::int64_t total = 0;
  FASTPGD_LOCK(op);
  state = self->core.state();
  n = self->core.size();
  total = self->core.total();
  FASTPGD_UNLOCK();
  const char* state_name = LapStopwatch::state_name(state);
  // The same text as PyStopwatch.__repr__ ("%.6g" is Python's format(x, ".6g")).
  char total_text[32];
  std::snprintf(total_text, sizeof total_text, "%.6g", LapStopwatch::to_seconds(total));
  const char* name = std::strrchr(Py_TYPE(op)->tp_name, '.');
  name = name != nullptr ? name + 1 : Py_TYPE(op)->tp_name;
  return PyUnicode_FromFormat("<%s %s, laps=%zu, total=%ss, strict=%s>", name, state_name, n,
                              total_text, self->strict ? "True" : "False");
}

PyMethodDef sw_methods[] = {
    guarded_method<sw_start>(
        "start", METH_NOARGS,
        "start() -> None\n\nNever started: begin the first lap. Stopped: resume the current lap. "
        "Running: do nothing (strict: raise StopwatchError)."),
    guarded_method<sw_stop>(
        "stop", METH_NOARGS,
        "stop() -> None\n\nRunning: add the time since the last start()/lap() to the current "
        "lap and stop. Otherwise: do nothing (strict: raise StopwatchError)."),
    guarded_method<sw_lap>(
        "lap", METH_NOARGS,
        "lap() -> float | None\n\nRunning: record the current lap (its running total plus the "
        "time since the last start()/lap()), begin the next one, and return the lap in "
        "seconds. Otherwise: do nothing and return None (strict: raise StopwatchError)."),
    guarded_method<sw_reset>(
        "reset", METH_NOARGS,
        "reset() -> None\n\nAny state: back to never started, laps cleared and memory freed."),
    guarded_method<sw_lap_times>(
        "lap_times", METH_NOARGS,
        "lap_times() -> list[float]\n\nA new list of the recorded laps in seconds."),
    guarded_method<sw_capacity_bytes>(
        "_capacity_bytes", METH_NOARGS,
        "_capacity_bytes() -> int\n\nBytes held for laps, spare capacity included."),
    guarded_method<sw_enter>("__enter__", METH_NOARGS, "start(), then return the stopwatch."),
    guarded_method<sw_exit>("__exit__", METH_FASTCALL, "stop(); exceptions propagate."),
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef sw_getset[] = {
    {"running", guarded<sw_get_running>, nullptr, "True between start() and stop().", nullptr},
    {"elapsed", guarded<sw_get_elapsed>, nullptr,
     "Seconds of the current, unfinished lap so far (0.0 before the first start()).", nullptr},
    {"total", guarded<sw_get_total>, nullptr, "Sum of the recorded laps in seconds.", nullptr},
    {"strict", guarded<sw_get_strict>, nullptr, "Whether misuse raises StopwatchError.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PySequenceMethods sw_as_sequence = {};
PyNumberMethods sw_as_number = {};
// The header macro is the portable way to initialize a static type's object header (its
// refcount scheme differs across CPython versions); the slots are set in bind_stopwatch().
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
PyTypeObject StopwatchType = {PyVarObject_HEAD_INIT(nullptr, 0)};
#pragma GCC diagnostic pop

}  // namespace

void bind_stopwatch(pybind11::module_& m) {
  sw_as_sequence.sq_length = guarded<sw_len>;
  sw_as_number.nb_bool = guarded<sw_bool>;

  StopwatchType.tp_name = "fastpgd._C.Stopwatch";
  StopwatchType.tp_basicsize = sizeof(StopwatchObject);
  StopwatchType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
  StopwatchType.tp_doc =
      "Stopwatch(strict=False, clock=None)\n\n"
      "A lap stopwatch on a monotonic wall clock (steady_clock), implemented in C++.\n\n"
      "States: never started, running, stopped. stop() pauses the current lap and start() "
      "resumes it, so start, lap, stop, <pause>, start, lap records a second lap without "
      "the pause. Laps are kept as int64 nanoseconds (8 bytes each, at most 16 with the "
      "vector's spare capacity) and returned as float seconds. A clock going backwards "
      "gives laps of 0, never negative ones. Same API and results as PyStopwatch.\n\n"
      "Args:\n"
      "    strict (bool): raise StopwatchError on misuse (start() while running, "
      "stop()/lap() while not running) instead of doing nothing. Default: False.\n"
      "    clock (Callable[[], int], optional): zero-argument callable returning int "
      "nanoseconds, like time.perf_counter_ns; a reading that is not an int raises "
      "TypeError at the call that reads it. Default: None (steady_clock read in C++).\n\n"
      "Threads: calls from several threads take effect one at a time, each with its own "
      "clock reading. With the built-in clock a call reads and updates in one step. A user "
      "clock is Python code, so other threads may update the stopwatch while it is read; a "
      "reading that their later readings overtook is then applied as the last of those, as if "
      "read just after it. So no time is counted twice: the laps sum to the time from the "
      "start() to the last reading (with lap() alone, exactly), as PyStopwatch's do. A clock "
      "that itself calls this stopwatch overlaps the outer call in the same way; there "
      "PyStopwatch instead applies the outer, earlier reading as a clock going backwards.\n\n"
      "Examples::\n\n"
      "    >>> sw = Stopwatch()\n"
      "    >>> with sw:\n"
      "    ...     pass\n"
      "    >>> sw.start()\n"
      "    >>> seconds = sw.lap()\n"
      "    >>> len(sw)\n"
      "    1";
  StopwatchType.tp_new = guarded<sw_new>;
  StopwatchType.tp_dealloc = sw_dealloc;
  StopwatchType.tp_traverse = sw_traverse;
  StopwatchType.tp_clear = sw_clear;
  StopwatchType.tp_repr = guarded<sw_repr>;
  StopwatchType.tp_methods = sw_methods;
  StopwatchType.tp_getset = sw_getset;
  StopwatchType.tp_as_sequence = &sw_as_sequence;
  StopwatchType.tp_as_number = &sw_as_number;
  if (PyType_Ready(&StopwatchType) < 0) throw pybind11::error_already_set();
  m.add_object("Stopwatch", pybind11::reinterpret_borrow<pybind11::object>(
                                reinterpret_cast<PyObject*>(&StopwatchType)));

  m.def(
      "_set_stopwatch_error",
      [](pybind11::object cls) {
        PyObject* p = cls.ptr();
        if (!PyType_Check(p) ||
            !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(p),
                              reinterpret_cast<PyTypeObject*>(PyExc_RuntimeError))) {
          throw pybind11::type_error("cls must be a subclass of RuntimeError");
        }
        Py_XSETREF(g_stopwatch_error, Py_NewRef(p));
      },
      pybind11::arg("cls"), "Register fastpgd.StopwatchError as the class strict mode raises.");
}

}  // namespace fastpgd
