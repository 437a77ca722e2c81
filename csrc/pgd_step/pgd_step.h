// The element math of the fused PGD step, shared by the CPU and CUDA kernels.
//
// Semantics (every backend must match fastpgd.reference_pgd_step in python/fastpgd/step.py),
// per element, with a = alpha, e = eps, bounds [lo, hi], original input x0, and norms over all
// non-batch dims of sample i:
//   Linf: x = x_adv + a*sign(g); x = min(max(x, x0 - e), x0 + e); x = min(max(x, lo), hi)
//   L2:   x = x_adv + a*g / max(||g_i||, tiny); d = x - x0;
//         d = d * min(1, e / max(||d_i||, tiny)); x = min(max(x0 + d, lo), hi)
// sign(0) = 0, and NaN propagates as PyTorch's ops propagate it. Arithmetic happens in `opmath`
// (float for float16/bfloat16, else the dtype itself), in the same order as the reference
// chain, and is rounded once on the store, so float32/float64 results equal the reference bit
// for bit. That needs floating-point contraction off: `a*b + c` must not become an FMA, which
// the reference chain of separate ops cannot produce. CMakeLists.txt compiles every file that
// includes this header that way (-ffp-contract=off for the C++ files of pgd_step/, --fmad=false
// for the CUDA kernel); a new includer must be added there.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTPGD_HD __host__ __device__ __forceinline__
#else
#define FASTPGD_HD inline
#endif

namespace fastpgd {

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

}  // namespace fastpgd
