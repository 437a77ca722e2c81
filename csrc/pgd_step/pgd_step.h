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
  int device = 0;               // CUDA device ordinal of the tensors (ignored on the CPU)
};

// The tiny floor of both L2 norms (same value in the reference).
constexpr double kL2Tiny = 1e-12;

template <typename T>
FASTPGD_HD T sign_of(T g) {
  // sign(0) = 0 and, as torch.sign does on the CPU, sign(NaN) = 0. Branch-free so it vectorizes.
  return T(g > T(0)) - T(g < T(0));
}

// min/max as PyTorch's clamp_min/clamp_max with a scalar bound: NaN in `x` propagates (the
// comparison is false, so `x` itself is returned). Plain selects, so loops vectorize.
template <typename T>
FASTPGD_HD T max_nan(T x, T bound) {
  return x < bound ? bound : x;
}
template <typename T>
FASTPGD_HD T min_nan(T x, T bound) {
  return x > bound ? bound : x;
}

// One Linf element, in opmath T.
template <typename T>
FASTPGD_HD T linf_update(T xa, T g, T x0, T alpha, T eps, bool has_clamp, T lo, T hi) {
  T x = xa + alpha * sign_of(g);
  const T below = x0 - eps, above = x0 + eps;
  x = min_nan(max_nan(x, below), above);
  // torch.maximum/minimum also propagate a NaN bound (x0 NaN, or x0 and eps both infinite);
  // one unordered test of both bounds does it for less than two NaN-aware selects.
  if ((below != below) | (above != above)) x = below + above;
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
  // clamp_min/clamp_max as the reference writes them: a NaN norm gives a NaN factor.
  return min_nan(eps / max_nan(dnorm, tiny), T(1));
}

// L2, last pass per element: back into the ball, then into [lo, hi].
template <typename T>
FASTPGD_HD T l2_project(T d, T x0, T factor, bool has_clamp, T lo, T hi) {
  T x = x0 + d * factor;
  if (has_clamp) x = min_nan(max_nan(x, lo), hi);
  return x;
}

// float16 / bfloat16 storage, as raw bits: widening is exact, narrowing rounds to nearest even
// (NaN stays NaN with its sign, overflow becomes inf, subnormals are kept).
FASTPGD_HD float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
FASTPGD_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}

FASTPGD_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return bits_to_float(sign | float_to_bits(mag));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

FASTPGD_HD uint16_t float_to_half_bits(float f) {
  uint32_t x = float_to_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN: quiet, like torch
  if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (x < 0x38800000u) {
    // Below the smallest normal half (2^-14): adding 0.5 makes the float's ulp 2^-24, the
    // half subnormal step, so the hardware add rounds to nearest even for us.
    const float shifted = bits_to_float(x) + 0.5f;
    return uint16_t(sign | (float_to_bits(shifted) - 0x3f000000u));
  }
  // Rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a carry
  // out of the mantissa correctly bumps the exponent.
  x += 0xc8000fffu + ((x >> 13) & 1u);
  return uint16_t(sign | (x >> 13));
}

FASTPGD_HD float bf16_bits_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

FASTPGD_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x0040u);  // quiet NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Host entry points (defined in cpu/pgd_step_kernel.cpp and cuda/pgd_step_kernel.cu).
void pgd_step_cpu(const StepParams& p);
// Element-wise cast between float32 and float16/bfloat16 with the conversions above (tests use it
// to compare them with torch over every bit pattern). One side must be kFloat32.
void cast_cpu(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);
#ifdef FASTPGD_WITH_CUDA
// `stream` is the caller's current cudaStream_t (never the legacy default stream).
void pgd_step_cuda(const StepParams& p, void* stream);
#endif

}  // namespace fastpgd
