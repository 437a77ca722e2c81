#include "binding/bindings.h"

namespace fastpgd {
void bind_pgd_step(pybind11::module_&) {}
}  // namespace fastpgd
