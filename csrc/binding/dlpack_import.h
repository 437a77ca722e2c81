// Borrowing a Python tensor as a DLTensor, without libtorch.
//
// Order of preference:
//   1. the C exchange API (`type(obj).__dlpack_c_exchange_api__`, cached per type): a borrowed
//      view with no Python calls, or an owning export where the table has no view function;
//   2. `obj.__dlpack__(max_version=(1, 0))`: a "dltensor_versioned" capsule (READ_ONLY honoured);
//   3. `obj.__dlpack__()`: a legacy "dltensor" capsule.
// Capsules are consumed as the protocol says (renamed "used_*"), and their deleter is called
// when the import goes out of scope. Every failure becomes a PyError naming the argument.
#pragma once

#include <Python.h>

#include <cstdint>
#include <string>

#include "dlpack.h"

namespace fastpgd {

// A Python exception to raise at the boundary: thrown through C++ and set by the entry point.
struct PyError {
  PyObject* type;  // borrowed: PyExc_TypeError or PyExc_ValueError
  std::string message;
};

[[noreturn]] inline void throw_type_error(std::string msg) {
  throw PyError{PyExc_TypeError, std::move(msg)};
}
[[noreturn]] inline void throw_value_error(std::string msg) {
  throw PyError{PyExc_ValueError, std::move(msg)};
}

inline std::string type_name(PyObject* obj) { return Py_TYPE(obj)->tp_name; }

// Turns the pending Python exception into a PyError naming `what`: BufferError (a producer
// that cannot export) and ValueError become ValueError, anything else TypeError.
[[noreturn]] inline void rethrow_python_error(const std::string& what) {
  PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  std::string detail = "unknown error";
  if (value != nullptr) {
    if (PyObject* s = PyObject_Str(value)) {
      if (const char* c = PyUnicode_AsUTF8(s)) detail = c;
      Py_DECREF(s);
    }
  }
  PyErr_Clear();
  const bool as_value = type != nullptr && (PyErr_GivenExceptionMatches(type, PyExc_BufferError) ||
                                            PyErr_GivenExceptionMatches(type, PyExc_ValueError));
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  std::string msg = what + ": " + detail;
  if (as_value) throw_value_error(std::move(msg));
  throw_type_error(std::move(msg));
}

// The exchange table of `type`, or null when it has none (or an unsupported major version).
// Cached per type: the lookup is an attribute access, the cache a few pointer compares.
inline const DLPackExchangeAPI* exchange_api_for(PyTypeObject* type) {
  struct Entry {
    PyTypeObject* type;
    const DLPackExchangeAPI* api;
  };
  static Entry cache[8] = {};
  static int used = 0;
  for (int i = 0; i < used; ++i) {
    if (cache[i].type == type) return cache[i].api;
  }
  const DLPackExchangeAPI* api = nullptr;
  PyObject* cap = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type),
                                         "__dlpack_c_exchange_api__");
  if (cap == nullptr) {
    PyErr_Clear();
  } else {
    if (PyCapsule_IsValid(cap, "dlpack_exchange_api")) {
      auto* header = static_cast<DLPackExchangeAPIHeader*>(
          PyCapsule_GetPointer(cap, "dlpack_exchange_api"));
      // A newer major version may chain to an older table we understand.
      while (header != nullptr && header->version.major != kDLPackMajorVersion) {
        header = header->prev_api;
      }
      if (header != nullptr) {
        api = reinterpret_cast<const DLPackExchangeAPI*>(header);
        if (api->dltensor_from_py_object_no_sync == nullptr &&
            api->managed_tensor_from_py_object_no_sync == nullptr) {
          api = nullptr;
        }
      }
    }
    PyErr_Clear();
    // The table outlives the process's use of it (the producer keeps it static); keep the
    // capsule alive anyway, since the cache holds its pointer.
    if (api == nullptr) Py_DECREF(cap);
  }
  if (used < 8) {
    Py_INCREF(type);  // the cache compares by address: keep the type alive
    cache[used++] = Entry{type, api};
  }
  return api;
}

class ImportedTensor {
 public:
  ImportedTensor() = default;
  ImportedTensor(const ImportedTensor&) = delete;
  ImportedTensor& operator=(const ImportedTensor&) = delete;
  ~ImportedTensor() { release(); }

  // Views `obj` as a DLTensor. `name` is the argument's name, for errors. `cuda_stream` is the
  // consumer stream handed to `__dlpack__` for CUDA producers without the exchange API
  // (0 when the caller has none).
  void import(PyObject* obj, const char* name, uintptr_t cuda_stream) {
    name_ = name;
    PyTypeObject* type = Py_TYPE(obj);
    if (const DLPackExchangeAPI* api = exchange_api_for(type)) {
      api_ = api;
      if (api->dltensor_from_py_object_no_sync != nullptr) {
        if (api->dltensor_from_py_object_no_sync(obj, &view_) != 0) {
          rethrow_python_error(std::string(name) + " could not be viewed through DLPack");
        }
        return;
      }
      if (api->managed_tensor_from_py_object_no_sync(obj, &versioned_) != 0) {
        versioned_ = nullptr;
        rethrow_python_error(std::string(name) + " could not be exported through DLPack");
      }
      take_versioned();
      return;
    }
    import_via_dunder(obj, cuda_stream);
  }

  const DLTensor& dl() const { return view_; }
  bool read_only() const { return read_only_; }
  // The exchange table the tensor came through, or null (the `__dlpack__` path).
  const DLPackExchangeAPI* api() const { return api_; }

 private:
  void take_versioned() {
    if (versioned_->version.major != kDLPackMajorVersion) {
      const unsigned major = versioned_->version.major;
      release();
      throw_type_error(std::string(name_) + " was exported with DLPack " +
                       std::to_string(major) + ".x, which fastpgd does not understand (1.x)");
    }
    view_ = versioned_->dl_tensor;
    read_only_ = (versioned_->flags & kDLPackFlagReadOnly) != 0;
  }

  void import_via_dunder(PyObject* obj, uintptr_t cuda_stream) {
    PyObject* method = PyObject_GetAttrString(obj, "__dlpack__");
    if (method == nullptr) {
      PyErr_Clear();
      throw_type_error(std::string(name_) + " must be a tensor (an object supporting DLPack), got " +
                       type_name(obj));
    }
    // The stream argument says on which stream the consumer will use the data; only CUDA needs
    // it, and 0 is not allowed by the protocol (1 is the legacy default stream).
    PyObject* kwargs = PyDict_New();
    bool cuda = false;
    if (PyObject* dev = PyObject_CallMethod(obj, "__dlpack_device__", nullptr)) {
      if (PyTuple_Check(dev) && PyTuple_GET_SIZE(dev) == 2) {
        const long kind = PyLong_AsLong(PyTuple_GET_ITEM(dev, 0));
        cuda = kind == kDLCUDA || kind == kDLCUDAManaged;
      }
      Py_DECREF(dev);
      PyErr_Clear();
    } else {
      PyErr_Clear();
    }
    if (cuda) {
      PyObject* s = PyLong_FromUnsignedLongLong(cuda_stream == 0 ? 1 : cuda_stream);
      PyDict_SetItemString(kwargs, "stream", s);
      Py_DECREF(s);
    }
    PyObject* version = Py_BuildValue("(ii)", 1, 0);
    PyDict_SetItemString(kwargs, "max_version", version);
    Py_DECREF(version);
    PyObject* empty = PyTuple_New(0);
    PyObject* cap = PyObject_Call(method, empty, kwargs);
    if (cap == nullptr && PyErr_ExceptionMatches(PyExc_TypeError)) {
      // A producer older than DLPack 1.0 does not know max_version.
      PyErr_Clear();
      PyDict_DelItemString(kwargs, "max_version");
      cap = PyObject_Call(method, empty, kwargs);
    }
    Py_DECREF(empty);
    Py_DECREF(kwargs);
    Py_DECREF(method);
    if (cap == nullptr) {
      rethrow_python_error(std::string(name_) + " could not be exported through DLPack");
    }
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
      versioned_ = static_cast<DLManagedTensorVersioned*>(
          PyCapsule_GetPointer(cap, "dltensor_versioned"));
      PyCapsule_SetName(cap, "used_dltensor_versioned");
      Py_DECREF(cap);
      take_versioned();
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
      legacy_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      PyCapsule_SetName(cap, "used_dltensor");
      Py_DECREF(cap);
      view_ = legacy_->dl_tensor;
    } else {
      const std::string got = type_name(cap);
      Py_DECREF(cap);
      PyErr_Clear();
      throw_type_error(std::string(name_) + ".__dlpack__() did not return a DLPack capsule, got " +
                       got);
    }
  }

  void release() {
    if (versioned_ != nullptr) {
      if (versioned_->deleter != nullptr) versioned_->deleter(versioned_);
      versioned_ = nullptr;
    }
    if (legacy_ != nullptr) {
      if (legacy_->deleter != nullptr) legacy_->deleter(legacy_);
      legacy_ = nullptr;
    }
  }

  const char* name_ = "";
  DLTensor view_{};
  bool read_only_ = false;
  const DLPackExchangeAPI* api_ = nullptr;
  DLManagedTensorVersioned* versioned_ = nullptr;  // owned: deleter called on release
  DLManagedTensor* legacy_ = nullptr;              // owned: deleter called on release
};

}  // namespace fastpgd
