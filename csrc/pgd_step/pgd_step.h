// The fused PGD update step: what the CPU and CUDA kernels share.
//
// Semantics (every backend must match fastpgd.reference_pgd_step; see DESIGN.md):
//   Linf: x = x_adv + a*sign(g); x = min(max(x, x0 - e), x0 + e); x = min(max(x, lo), hi)
//   L2:   x = x_adv + a*g / max(||g_i||, tiny); d = x - x0;
//         d = d * min(1, e / max(||d_i||, tiny)); x = min(max(x0 + d, lo), hi)
// Arithmetic happens in `opmath` (float for float16/bfloat16, else the dtype itself), in the
// same order as the reference chain, and is rounded once on the store. Files that include this
// header compile with floating-point contraction off, so `a*b + c` never becomes an FMA that the
// reference chain (separate ops) cannot produce.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTPGD_HD __host__ __device__ __forceinline__
#else
#define FASTPGD_HD inline
#endif

namespace fastpgd {

enum class Norm : int { kLinf = 0, kL2 = 1 };
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One step over a contiguous batch: `batch` samples of `sample_numel` elements each.
// Pointers are already validated by the binding (same device, dtype, shape, contiguous,
// x_adv writable and not overlapping grad/x0).
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
};

// The tiny floor of both L2 norms (same value in the reference).
constexpr double kL2Tiny = 1e-12;

template <typename T>
FASTPGD_HD T sign_of(T g) {
  // sign(0) = 0; NaN propagates (both comparisons are false, so g*0 -> NaN... return g itself).
  return g > T(0) ? T(1) : (g < T(0) ? T(-1) : (g == T(0) ? T(0) : g));
}

// min/max as PyTorch's clamp_min/clamp_max write them: NaN in `x` propagates.
template <typename T>
FASTPGD_HD T max_nan(T x, T bound) {
  return (x != x) ? x : (x < bound ? bound : x);
}
template <typename T>
FASTPGD_HD T min_nan(T x, T bound) {
  return (x != x) ? x : (x > bound ? bound : x);
}

// One Linf element, in opmath T.
template <typename T>
FASTPGD_HD T linf_update(T xa, T g, T x0, T alpha, T eps, bool has_clamp, T lo, T hi) {
  T x = xa + alpha * sign_of(g);
  x = min_nan(max_nan(x, x0 - eps), x0 + eps);
  if (has_clamp) x = min_nan(max_nan(x, lo), hi);
  return x;
}

// L2, first pass per sample: the displacement from x0 after the ascent step, in opmath T.
// `gnorm` is max(||g_i||, tiny), computed by the caller (accumulated in double, rounded to T).
template <typename T>
FASTPGD_HD T l2_delta(T xa, T g, T x0, T alpha, T gnorm) {
  T x = xa + alpha * g / gnorm;
  return x - x0;
}

// L2 projection factor min(1, e / max(||d_i||, tiny)).
template <typename T>
FASTPGD_HD T l2_factor(T eps, T dnorm, T tiny) {
  T f = eps / (dnorm > tiny ? dnorm : tiny);
  return f < T(1) ? f : T(1);
}

// L2, last pass per element: back into the ball, then into [lo, hi].
template <typename T>
FASTPGD_HD T l2_project(T d, T x0, T factor, bool has_clamp, T lo, T hi) {
  T x = x0 + d * factor;
  if (has_clamp) x = min_nan(max_nan(x, lo), hi);
  return x;
}

// Host entry points (defined in cpu/pgd_step_kernel.cpp and cuda/pgd_step_kernel.cu).
void pgd_step_cpu(const StepParams& p);
#ifdef FASTPGD_WITH_CUDA
// `stream` is the caller's current cudaStream_t (never the legacy default stream).
void pgd_step_cuda(const StepParams& p, void* stream);
#endif

}  // namespace fastpgd
