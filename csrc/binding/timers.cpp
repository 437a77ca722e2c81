// fastpgd._C._Section and fastpgd._C._TimersBase: the hot path of fastpgd.Timers as CPython
// types around the section log (timers/section_log.h).
//
// `with timers("x"): pass` must cost a few hundred nanoseconds. In pure Python it is a method
// call for the lookup and two Python-level methods for the block; here the lookup is the type's
// tp_call and __enter__/__exit__ are METH_NOARGS / METH_FASTCALL methods that read the clock
// and append to the log: the block measured 2.4x faster than the pure-Python one. A pybind11
// class would put its method dispatch (a pybind11 lap() measured 3-4x the hand-written one) on
// each of those three calls. Everything slow (pairing enters with exits, statistics, reports)
// stays in fastpgd/timers.py, which subclasses both types. Every slot and method is registered
// as guarded<> (binding/guard.h).
//
// A section belongs to one thread: the one whose enter last claimed it (the first enter since
// creation or `_first = True`, or an enter that on_claim let another thread make). Every enter
// and exit compares the calling thread's identifier with it (current_thread_ident(): one
// pthread_self() call, about 2 ns; a Timers block measured 1.5-3% slower). Another thread's
// enter goes to on_claim (fastpgd.Timers raises there unless its owner has finished) or,
// without one, raises; another thread's exit logs nothing. Between the check and the append a
// method only reads the clock, so with the built-in clock each enter and exit is atomic under
// the GIL; a user clock is Python code and may let other threads run there (they can
// interleave entries, never corrupt memory).
#include <Python.h>
#include <structmember.h>

#include <cstdint>
#include <new>
#include <vector>
#ifndef _WIN32
#include <pthread.h>
#endif

#include "binding/bindings.h"
#include "binding/guard.h"
#include "binding/user_clock.h"
#include "timers/section_log.h"

namespace fastpgd {
namespace {

// ---- _Section ------------------------------------------------------------------------------

struct SectionObject {
  PyObject_HEAD
  SectionLog log;      // enters and exits not yet drained
  PyObject* clock;     // a user callable returning int nanoseconds; nullptr: steady_clock
  PyObject* on_claim;    // called with the section before a thread claims it; may be nullptr
  unsigned long thread;  // current_thread_ident() of the thread that claimed it, unless first
  bool first;            // no thread has claimed it since creation or _first = True
};

SectionObject* as_sec(PyObject* op) { return reinterpret_cast<SectionObject*>(op); }

// The calling thread's identifier: PyThread_get_thread_ident(), which threading.get_ident()
// returns too. With POSIX threads that is pthread_self() cast to unsigned long (CPython's
// thread_pthread.h); calling pthread_self() directly skips a call into libpython on every
// enter and exit (measured: half of the check's cost).
unsigned long current_thread_ident() {
#ifdef _WIN32
  return PyThread_get_thread_ident();
#else
  return (unsigned long)pthread_self();  // CPython's C cast: pthread_t may be a pointer type
#endif
}

// Any arguments are accepted here and left to __init__, so that a Python subclass can give
// its own constructor signature; an object that was never initialized times with steady_clock.
PyObject* sec_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyObject* op = type->tp_alloc(type, 0);
  if (op == nullptr) return nullptr;
  SectionObject* self = as_sec(op);
  new (&self->log) SectionLog();
  self->clock = nullptr;
  self->on_claim = nullptr;
  self->thread = 0;
  self->first = true;
  return op;
}

int sec_init(PyObject* op, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"clock", "on_claim", nullptr};
  PyObject* clock = Py_None;
  PyObject* on_claim = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:_Section", const_cast<char**>(kwlist),
                                   &clock, &on_claim)) {
    return -1;
  }
  if (clock != Py_None && !PyCallable_Check(clock)) {
    PyErr_Format(PyExc_TypeError,
                 "clock must be None or a zero-argument callable returning int nanoseconds, "
                 "got %.200s",
                 Py_TYPE(clock)->tp_name);
    return -1;
  }
  if (on_claim != Py_None && !PyCallable_Check(on_claim)) {
    PyErr_Format(PyExc_TypeError, "on_claim must be None or a callable, got %.200s",
                 Py_TYPE(on_claim)->tp_name);
    return -1;
  }
  SectionObject* self = as_sec(op);
  Py_XSETREF(self->clock, clock == Py_None ? nullptr : Py_NewRef(clock));
  Py_XSETREF(self->on_claim, on_claim == Py_None ? nullptr : Py_NewRef(on_claim));
  return 0;
}

// The GC and deallocation slots call only the C API and destructors: they cannot throw.
int sec_traverse(PyObject* op, visitproc visit, void* arg) noexcept {
  Py_VISIT(as_sec(op)->clock);
  Py_VISIT(as_sec(op)->on_claim);
  return 0;
}

int sec_clear(PyObject* op) noexcept {
  Py_CLEAR(as_sec(op)->clock);
  Py_CLEAR(as_sec(op)->on_claim);
  return 0;
}

void sec_dealloc(PyObject* op) noexcept {
  PyObject_GC_UnTrack(op);
  sec_clear(op);
  as_sec(op)->log.~SectionLog();
  Py_TYPE(op)->tp_free(op);
}

// The calling thread `me` claims the section, at its first enter or at an enter from another
// thread than the one that claimed it. With on_claim, the callback decides (it records the
// parent, or raises to refuse the thread); without one, only an unclaimed section can be
// claimed. False, with a Python error set and nothing changed, when the thread is refused.
bool claim(PyObject* op, unsigned long me) {
  SectionObject* self = as_sec(op);
  if (self->on_claim != nullptr) {
    PyObject* callback = Py_NewRef(self->on_claim);  // it may re-initialize the section
    PyObject* r = PyObject_CallOneArg(callback, op);
    Py_DECREF(callback);
    if (r == nullptr) return false;
    Py_DECREF(r);
  } else if (!self->first) {
    PyErr_Format(PyExc_RuntimeError,
                 "a section is for one thread: thread %lu entered a section claimed by thread "
                 "%lu; set _first = True to hand it over",
                 me, self->thread);
    return false;
  }
  self->first = false;
  self->thread = me;
  return true;
}

PyObject* sec_enter(PyObject* op, PyObject*) {
  SectionObject* self = as_sec(op);
  const unsigned long me = current_thread_ident();
  if (self->first || self->thread != me) {
    if (!claim(op, me)) return nullptr;  // refused: nothing is logged
  }
  std::int64_t now = 0;
  if (!read_clock(self->clock, &now)) return nullptr;
  self->log.enter(now);  // std::bad_alloc: MemoryError, through guarded<>
  return Py_NewRef(op);
}

PyObject* sec_exit(PyObject* op, PyObject* const*, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_Format(PyExc_TypeError, "__exit__ takes 3 arguments, got %zd", nargs);
    return nullptr;
  }
  SectionObject* self = as_sec(op);
  // Only the claiming thread's exits are logged. Any other exit ends none of the claimer's
  // blocks, yet logged it would close one: it ends a block that was open when the section was
  // handed over (_first = True, then another thread's enter), or it is a manual __exit__ call
  // from another thread. (A refused enter raised before its block, so it has no exit.)
  if (self->first || self->thread != current_thread_ident()) Py_RETURN_NONE;
  std::int64_t now = 0;
  if (!read_clock(self->clock, &now)) return nullptr;
  // Recorded whether or not the block raised; None lets the exception propagate.
  self->log.exit(now);  // std::bad_alloc: MemoryError, through guarded<>
  Py_RETURN_NONE;
}

PyObject* sec_drain(PyObject* op, PyObject*) {
  // Take the entries first: building the list may run the garbage collector and so any
  // Python code, which may enter this section again; those entries stay for the next drain.
  const std::vector<std::int64_t> taken = as_sec(op)->log.take();
  const Py_ssize_t n = static_cast<Py_ssize_t>(taken.size());
  PyObject* list = PyList_New(n);
  if (list == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyLong_FromLongLong(taken[static_cast<std::size_t>(i)]);
    if (item == nullptr) {
      Py_DECREF(list);  // unset items are NULL, which list_dealloc skips
      return nullptr;
    }
    PyList_SET_ITEM(list, i, item);
  }
  return list;
}

PyObject* sec_discard(PyObject* op, PyObject*) {
  as_sec(op)->log.discard();
  Py_RETURN_NONE;
}

PyObject* sec_log_size(PyObject* op, PyObject*) {
  return PyLong_FromSize_t(as_sec(op)->log.size());
}

PyObject* sec_get_first(PyObject* op, void*) { return PyBool_FromLong(as_sec(op)->first); }

int sec_set_first(PyObject* op, PyObject* value, void*) {
  if (value == nullptr || !PyBool_Check(value)) {
    PyErr_SetString(PyExc_TypeError, "_first must be set to a bool");
    return -1;
  }
  if (value == Py_False) {
    // Only an enter claims a section: setting False would have to invent its thread.
    PyErr_SetString(PyExc_ValueError,
                    "_first can only be set to True (the next enter then claims the section)");
    return -1;
  }
  as_sec(op)->first = true;
  return 0;
}

PyMethodDef sec_methods[] = {
    guarded_method<sec_enter>(
        "__enter__", METH_NOARGS,
        "Log ~now and return the section. First, at the first enter (since creation or "
        "_first = True) or from another thread than the one that claimed the section, the "
        "calling thread claims it: on_claim(self) decides, or without on_claim only an "
        "unclaimed section can be claimed (else RuntimeError); a refused enter logs nothing."),
    guarded_method<sec_exit>(
        "__exit__", METH_FASTCALL,
        "From the thread that claimed the section: log now (exceptions propagate). From any "
        "other thread, or before any claim: do nothing."),
    guarded_method<sec_drain>(
        "_drain", METH_NOARGS,
        "_drain() -> list[int]\n\nThe logged entries (~t for an enter, t for an exit, in call "
        "order), removed from the log."),
    guarded_method<sec_discard>(
        "_discard", METH_NOARGS,
        "_discard() -> None\n\nForget the logged entries and free their memory."),
    guarded_method<sec_log_size>(
        "_log_size", METH_NOARGS,
        "_log_size() -> int\n\nNumber of entries logged and not yet drained."),
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef sec_getset[] = {
    {"_first", guarded<sec_get_first>, guarded<sec_set_first>,
     "Whether no thread has claimed the section since creation or _first = True (the next "
     "enter claims it). Can only be set to True.",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

// ---- _TimersBase ---------------------------------------------------------------------------

struct TimersBaseObject {
  PyObject_HEAD
  PyObject* sections;  // dict: name -> section; nullptr only once the collector cleared it
};

TimersBaseObject* as_tb(PyObject* op) { return reinterpret_cast<TimersBaseObject*>(op); }

PyObject* tb_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyObject* sections = PyDict_New();
  if (sections == nullptr) return nullptr;
  PyObject* op = type->tp_alloc(type, 0);
  if (op == nullptr) {
    Py_DECREF(sections);
    return nullptr;
  }
  as_tb(op)->sections = sections;
  return op;
}

int tb_traverse(PyObject* op, visitproc visit, void* arg) noexcept {
  Py_VISIT(as_tb(op)->sections);
  return 0;
}

int tb_clear(PyObject* op) noexcept {
  Py_CLEAR(as_tb(op)->sections);
  return 0;
}

// After the collector cleared a cycle, a finalizer may still call the object.
PyObject* sections_or_raise(PyObject* op) {
  PyObject* sections = as_tb(op)->sections;
  if (sections == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "Timers is being destroyed: its sections are gone");
  }
  return sections;
}

void tb_dealloc(PyObject* op) noexcept {
  PyObject_GC_UnTrack(op);
  Py_CLEAR(as_tb(op)->sections);
  Py_TYPE(op)->tp_free(op);
}

// timers(name): the cached section, or self._new_section(name) on a miss.
PyObject* tb_call(PyObject* op, PyObject* args, PyObject* kwargs) {
  PyObject* name = nullptr;
  if (kwargs == nullptr && PyTuple_GET_SIZE(args) == 1) {
    name = PyTuple_GET_ITEM(args, 0);
  } else {
    static const char* kwlist[] = {"name", nullptr};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:__call__", const_cast<char**>(kwlist),
                                     &name)) {
      return nullptr;
    }
  }
  PyObject* sections = sections_or_raise(op);
  if (sections == nullptr) return nullptr;
  Py_INCREF(sections);  // the lookup may run __eq__ code, which may replace the dict
  PyObject* section = PyDict_GetItemWithError(sections, name);
  Py_XINCREF(section);
  Py_DECREF(sections);
  if (section != nullptr) return section;
  if (PyErr_Occurred()) return nullptr;  // e.g. an unhashable name
  static PyObject* method_name = nullptr;
  if (method_name == nullptr) {
    method_name = PyUnicode_InternFromString("_new_section");
    if (method_name == nullptr) return nullptr;
  }
  return PyObject_CallMethodOneArg(op, method_name, name);
}

PyObject* tb_get_sections(PyObject* op, void*) { return Py_XNewRef(sections_or_raise(op)); }

int tb_set_sections(PyObject* op, PyObject* value, void*) {
  if (value == nullptr || !PyDict_CheckExact(value)) {
    PyErr_SetString(PyExc_TypeError, "_sections must be set to a dict");
    return -1;
  }
  Py_XSETREF(as_tb(op)->sections, Py_NewRef(value));
  return 0;
}

PyGetSetDef tb_getset[] = {
    {"_sections", guarded<tb_get_sections>, guarded<tb_set_sections>, "The sections by name.",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
PyTypeObject SectionType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject TimersBaseType = {PyVarObject_HEAD_INIT(nullptr, 0)};
#pragma GCC diagnostic pop

}  // namespace

void bind_timers(pybind11::module_& m) {
  SectionType.tp_name = "fastpgd._C._Section";
  SectionType.tp_basicsize = sizeof(SectionObject);
  SectionType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
  SectionType.tp_doc =
      "_Section(clock=None, on_claim=None)\n\n"
      "The log of one named timing section; the base of fastpgd.Timers' sections.\n\n"
      "Entering logs ~t and leaving logs t (int64 nanoseconds); _drain() hands the entries "
      "over for pairing.\n\n"
      "A section is for one thread. The first enter (since creation or _first = True) claims "
      "it for the calling thread; an enter from another thread claims it only if on_claim "
      "allows it (without on_claim it raises RuntimeError), and a refused enter logs nothing. "
      "on_claim(self) runs before the clock is read. Exits from a thread other than the "
      "claiming one log nothing.\n\n"
      "Args:\n"
      "    clock (Callable[[], int], optional): zero-argument callable returning int "
      "nanoseconds. Default: None (steady_clock read in C++, the clock of "
      "time.perf_counter_ns).\n"
      "    on_claim (Callable[[_Section], object], optional): called before a thread claims "
      "the section; raising refuses the thread.";
  SectionType.tp_new = guarded<sec_new>;
  SectionType.tp_init = guarded<sec_init>;
  SectionType.tp_dealloc = sec_dealloc;
  SectionType.tp_traverse = sec_traverse;
  SectionType.tp_clear = sec_clear;
  SectionType.tp_methods = sec_methods;
  SectionType.tp_getset = sec_getset;
  if (PyType_Ready(&SectionType) < 0) throw pybind11::error_already_set();
  m.add_object("_Section", pybind11::reinterpret_borrow<pybind11::object>(
                               reinterpret_cast<PyObject*>(&SectionType)));

  TimersBaseType.tp_name = "fastpgd._C._TimersBase";
  TimersBaseType.tp_basicsize = sizeof(TimersBaseObject);
  TimersBaseType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
  TimersBaseType.tp_doc =
      "The base of fastpgd.Timers: calling it with a name returns the cached section from "
      "_sections, or self._new_section(name) when there is none.";
  TimersBaseType.tp_new = guarded<tb_new>;
  TimersBaseType.tp_dealloc = tb_dealloc;
  TimersBaseType.tp_traverse = tb_traverse;
  TimersBaseType.tp_clear = tb_clear;
  TimersBaseType.tp_call = guarded<tb_call>;
  TimersBaseType.tp_getset = tb_getset;
  if (PyType_Ready(&TimersBaseType) < 0) throw pybind11::error_already_set();
  m.add_object("_TimersBase", pybind11::reinterpret_borrow<pybind11::object>(
                                  reinterpret_cast<PyObject*>(&TimersBaseType)));
}

}  // namespace fastpgd
