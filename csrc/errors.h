// The errors a core throws for bad arguments. They are plain C++ exceptions; the binding turns
// them into Python's TypeError and ValueError, so every message names the argument.
#pragma once

#include <stdexcept>
#include <string>

namespace fastpgd {

// An argument of the wrong kind (a dtype, a Python type): Python's TypeError.
struct ArgumentTypeError : std::invalid_argument {
  explicit ArgumentTypeError(const std::string& message) : std::invalid_argument(message) {}
};

// An argument of the right kind with a bad value (a shape, a device, NaN): Python's ValueError.
struct ArgumentValueError : std::invalid_argument {
  explicit ArgumentValueError(const std::string& message) : std::invalid_argument(message) {}
};

[[noreturn]] inline void throw_type_error(const std::string& message) {
  throw ArgumentTypeError(message);
}
[[noreturn]] inline void throw_value_error(const std::string& message) {
  throw ArgumentValueError(message);
}

}  // namespace fastpgd
