// The host entry point of the fused PGD step: it takes the arguments as plain values and
// already-imported DLPack tensors, checks them, and runs the CPU or CUDA kernel. Every bad
// argument throws ArgumentTypeError or ArgumentValueError (errors.h) with a message naming it.
// No Python in here: the binding (binding/pgd_step.cpp) converts Python objects into these
// arguments and runs the checks in the order the arguments come.
#pragma once

#include <cstdint>

#include "dlpack.h"
#include "pgd_step/step_params.h"

namespace fastpgd {

// The tensors of one step, borrowed from the caller.
struct StepTensors {
  const DLTensor* x_adv = nullptr;
  bool x_adv_read_only = false;  // the producer marked it read-only (it is updated in place)
  const DLTensor* grad = nullptr;
  const DLTensor* x0 = nullptr;
  const DLTensor* eps = nullptr;  // one eps per sample; nullptr when eps is a scalar
};

// The scalars, each checked as soon as the binding has converted it.
void check_alpha(double alpha);          // finite
void check_clamp(double lo, double hi);  // not NaN, lo <= hi
void check_eps(double eps);              // >= 0, not NaN

// Checks the tensors against each other (dtype, device, shape, contiguity, writability,
// overlaps; per-sample eps values on the CPU, where reading them is free) and returns the
// kernel parameters; `scalars` carries the already checked norm, alpha, eps, and clamp.
StepParams check_step(const StepTensors& tensors, const StepParams& scalars);

// Runs a checked step: the CPU kernel, or the CUDA kernel on `cuda_stream`.
void run_step(const StepParams& p, void* cuda_stream);

// The test hook behind _C._cast: float32 <-> float16/bfloat16 on CPU tensors.
void cast(const DLTensor& src, const DLTensor& dst, bool dst_read_only);

}  // namespace fastpgd
