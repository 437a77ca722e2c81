#include "binding/bindings.h"

namespace fastpgd {
void bind_stopwatch(pybind11::module_&) {}
}  // namespace fastpgd
