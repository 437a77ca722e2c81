// Borrowing a Python tensor as a DLTensor, without libtorch.
//
// Order of preference:
//   1. the C exchange API (`type(obj).__dlpack_c_exchange_api__`, cached per type): a borrowed
//      view with no Python calls, or an owning export where the table has no view function;
//   2. `obj.__dlpack__(max_version=(1, 0))`: a "dltensor_versioned" capsule (READ_ONLY honoured);
//   3. `obj.__dlpack__()`: a legacy "dltensor" capsule.
// Capsules are consumed as the protocol says (renamed "used_*"), and their deleter is called
// when the import goes out of scope. Every failure becomes an ArgumentTypeError or
// ArgumentValueError (errors.h) naming the argument.
//
// DLPack has no bit for a lazily negated or conjugated view (torch._neg_view(t), t.conj()): such
// a tensor would arrive as the data before the negation. On the __dlpack__ path, which already
// makes Python calls, the object's is_neg()/is_conj() are asked and such views refused.
#pragma once

#include <Python.h>

#include <cstdint>
#include <string>
#include <utility>

#include "binding/guard.h"
#include "dlpack.h"
#include "errors.h"

namespace fastpgd {

inline std::string type_name(PyObject* obj) { return Py_TYPE(obj)->tp_name; }

// Turns the pending Python exception into an argument error naming `what`: BufferError (a
// producer that cannot export) and ValueError become ValueError, anything else TypeError.
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

// A strong reference, released on every way out of the scope.
class Owned {
 public:
  explicit Owned(PyObject* p) : p_(p) {}
  Owned(Owned&& other) noexcept : p_(other.p_) { other.p_ = nullptr; }
  Owned& operator=(Owned&& other) noexcept {
    std::swap(p_, other.p_);
    return *this;
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() { Py_XDECREF(p_); }
  PyObject* get() const { return p_; }

 private:
  PyObject* p_;
};

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
    const Owned method(PyObject_GetAttrString(obj, "__dlpack__"));
    if (method.get() == nullptr) {
      PyErr_Clear();
      throw_type_error(std::string(name_) +
                       " must be a tensor (an object supporting DLPack), got " + type_name(obj));
    }
    if (lazy_bit_set(obj, "is_neg")) {
      throw_value_error(std::string(name_) +
                        " is a negated view (its negative bit is set), which DLPack cannot carry; "
                        "call .resolve_neg() first");
    }
    if (lazy_bit_set(obj, "is_conj")) {
      throw_value_error(std::string(name_) +
                        " is a conjugated view (its conjugate bit is set), which DLPack cannot "
                        "carry; call .resolve_conj() first");
    }
    // The stream argument says on which stream the consumer will use the data; only CUDA needs
    // it, and 0 is not allowed by the protocol (1 is the legacy default stream).
    const Owned kwargs(PyDict_New());
    if (kwargs.get() == nullptr) throw PythonErrorAlreadySet();
    bool cuda = false;
    if (const Owned dev{PyObject_CallMethod(obj, "__dlpack_device__", nullptr)}; dev.get()) {
      if (PyTuple_Check(dev.get()) && PyTuple_GET_SIZE(dev.get()) == 2) {
        const long kind = PyLong_AsLong(PyTuple_GET_ITEM(dev.get(), 0));
        cuda = kind == kDLCUDA || kind == kDLCUDAManaged;
      }
    }
    PyErr_Clear();
    if (cuda) {
      const Owned stream(PyLong_FromUnsignedLongLong(cuda_stream == 0 ? 1 : cuda_stream));
      if (stream.get() == nullptr || PyDict_SetItemString(kwargs.get(), "stream", stream.get())) {
        throw PythonErrorAlreadySet();
      }
    }
    const Owned version(Py_BuildValue("(ii)", 1, 0));
    if (version.get() == nullptr ||
        PyDict_SetItemString(kwargs.get(), "max_version", version.get()) != 0) {
      throw PythonErrorAlreadySet();
    }
    const Owned empty(PyTuple_New(0));
    if (empty.get() == nullptr) throw PythonErrorAlreadySet();
    Owned cap(PyObject_Call(method.get(), empty.get(), kwargs.get()));
    if (cap.get() == nullptr && PyErr_ExceptionMatches(PyExc_TypeError)) {
      // A producer older than DLPack 1.0 does not know max_version.
      PyErr_Clear();
      PyDict_DelItemString(kwargs.get(), "max_version");
      cap = Owned(PyObject_Call(method.get(), empty.get(), kwargs.get()));
    }
    if (cap.get() == nullptr) {
      rethrow_python_error(std::string(name_) + " could not be exported through DLPack");
    }
    if (PyCapsule_IsValid(cap.get(), "dltensor_versioned")) {
      versioned_ = static_cast<DLManagedTensorVersioned*>(
          PyCapsule_GetPointer(cap.get(), "dltensor_versioned"));
      PyCapsule_SetName(cap.get(), "used_dltensor_versioned");
      take_versioned();
    } else if (PyCapsule_IsValid(cap.get(), "dltensor")) {
      legacy_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.get(), "dltensor"));
      PyCapsule_SetName(cap.get(), "used_dltensor");
      view_ = legacy_->dl_tensor;
    } else {
      PyErr_Clear();
      throw_type_error(std::string(name_) + ".__dlpack__() did not return a DLPack capsule, got " +
                       type_name(cap.get()));
    }
  }

  // True when obj.<method>() returns True: torch's is_neg()/is_conj(). Objects without the
  // method (numpy arrays), or whose method raises, have no such bit.
  static bool lazy_bit_set(PyObject* obj, const char* method) {
    PyObject* result = PyObject_CallMethod(obj, method, nullptr);
    if (result == nullptr) {
      PyErr_Clear();
      return false;
    }
    const bool set = result == Py_True;
    Py_DECREF(result);
    return set;
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
