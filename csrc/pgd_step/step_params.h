// What the host entry point hands the kernels: one checked step, and the kernels' own entry
// points (cpu/pgd_step_kernel.cpp, cuda/pgd_step_kernel.cu).
#pragma once

#include <cstdint>

namespace fastpgd {

enum class Norm : int { kLinf = 0, kL2 = 1 };
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One step over a contiguous batch: `batch` samples of `sample_numel` elements each.
// check_step() (pgd_step_entry.h) has validated the pointers: same device, dtype and shape,
// contiguous, x_adv writable and not overlapping grad, x0 or eps_per_sample.
struct StepParams {
  void* x_adv = nullptr;        // updated in place
  const void* grad = nullptr;   // same shape and dtype as x_adv
  const void* x0 = nullptr;     // same shape and dtype as x_adv
  int64_t batch = 0;            // size of dim 0 (1 for a 0-d tensor)
  int64_t sample_numel = 0;     // elements per sample (product of the non-batch dims)
  DType dtype = DType::kFloat32;
  Norm norm = Norm::kLinf;
  double alpha = 0.0;
  double eps = 0.0;             // used when eps_per_sample is null
  const void* eps_per_sample = nullptr;  // `batch` values in `dtype`, on the tensors' device
  bool has_clamp = true;
  double lo = 0.0;
  double hi = 1.0;
  bool cuda = false;            // the tensors are on a CUDA device (else on the CPU)
  int device = 0;               // CUDA device ordinal of the tensors (ignored on the CPU)
};

void pgd_step_cpu(const StepParams& p);
// Element-wise cast between float32 and float16/bfloat16 with the conversions of pgd_step.h
// (tests compare them with torch over every bit pattern). One side must be kFloat32.
void cast_cpu(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);
// The target_clones levels the CPU kernels carry, best first ("default" last; only "default"
// where the compiler makes no clones), and the one this CPU runs, as the loader picked it.
struct CpuKernelInfo {
  const char* const* clones;
  int clone_count;
  const char* clone_in_use;
};
CpuKernelInfo pgd_step_cpu_info();
#ifdef FASTPGD_WITH_CUDA
// `stream` is the caller's current cudaStream_t as PyTorch names it: the legacy default stream
// (0) only when that is the caller's current stream.
void pgd_step_cuda(const StepParams& p, void* stream);
#endif

}  // namespace fastpgd
