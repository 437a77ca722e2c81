// The fused PGD step on the CPU: one pass for Linf, three for L2 (two per-sample reductions and
// the store), OpenMP across chunks of a large tensor, plain loops for small ones.
//
// Floating-point contraction must stay off here (-ffp-contract=off): the reference chain is
// separate ops, each rounded, so an FMA would change the last bit.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "pgd_step/pgd_step.h"
#include "pgd_step/step_params.h"

namespace fastpgd {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = int64_t(1) << 16;
// Work unit of the parallel loop: large enough to amortize scheduling, small enough to balance.
constexpr int64_t kChunk = int64_t(1) << 14;

// Clones of the innermost loops for x86-64-v4 (AVX-512) and AVX2 next to the baseline x86-64
// one; the loader's resolver runs the best one the CPU supports. The loops are plain selects
// and arithmetic, which the wider vector units of each level run in fewer instructions.
// FASTPGD_CLONE_LEVELS is also what pgd_step_cpu_info() reports, so the two cannot disagree.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTPGD_CLONE_LEVELS "arch=x86-64-v4", "avx2", "default"
#define FASTPGD_CLONES __attribute__((target_clones(FASTPGD_CLONE_LEVELS)))
#else
#define FASTPGD_CLONE_LEVELS "default"
#define FASTPGD_CLONES
#endif

// Storage <-> opmath. float/double are their own opmath; float16/bfloat16 compute in float.
struct F32 {
  using S = float;
  using T = float;
  static T load(S v) { return v; }
  static S store(T v) { return v; }
};
struct F64 {
  using S = double;
  using T = double;
  static T load(S v) { return v; }
  static S store(T v) { return v; }
};
struct F16 {
  using S = uint16_t;
  using T = float;
  static T load(S v) { return half_bits_to_float(v); }
  static S store(T v) { return float_to_half_bits(v); }
};
struct BF16 {
  using S = uint16_t;
  using T = float;
  static T load(S v) { return bf16_bits_to_float(v); }
  static S store(T v) { return float_to_bf16_bits(v); }
};

// Independent partial sums of the L2 norms: one AVX-512 vector of doubles, two AVX2 ones.
constexpr int kLanes = 8;

inline double sum_lanes(const double (&part)[kLanes]) {
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Calls fn(sample, begin, end) over [0, batch * n) split at sample boundaries, in parallel
// chunks when the tensor is large. Each call covers one sample's contiguous part of one chunk.
template <typename Fn>
void for_each_segment(int64_t batch, int64_t n, Fn fn) {
  const int64_t total = batch * n;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t i = c * kChunk;
    const int64_t end = std::min(total, i + kChunk);
    while (i < end) {
      const int64_t sample = i / n;
      const int64_t seg_end = std::min(end, (sample + 1) * n);
      fn(sample, i, seg_end);
      i = seg_end;
    }
  }
}

// The innermost loop, a function of its own so that target_clones gives it a body per level (a
// lambda's body is a separate function that the clones would not cover).
template <typename D, bool kClamp>
FASTPGD_CLONES void linf_segment(typename D::S* __restrict x, const typename D::S* __restrict g,
                                 const typename D::S* __restrict x0, int64_t begin, int64_t end,
                                 typename D::T alpha, typename D::T eps, typename D::T lo,
                                 typename D::T hi) {
  using T = typename D::T;
  for (int64_t i = begin; i < end; ++i) {
    x[i] = D::store(linf_update<T>(D::load(x[i]), D::load(g[i]), D::load(x0[i]), alpha, eps,
                                   kClamp, lo, hi));
  }
}

template <typename D, bool kClamp>
void linf_impl(const StepParams& p) {
  using S = typename D::S;
  using T = typename D::T;
  S* x = static_cast<S*>(p.x_adv);
  const S* g = static_cast<const S*>(p.grad);
  const S* x0 = static_cast<const S*>(p.x0);
  const S* eps_ps = static_cast<const S*>(p.eps_per_sample);
  const T alpha = T(p.alpha), lo = T(p.lo), hi = T(p.hi), eps_scalar = T(p.eps);
  // A 1-D tensor has one element per sample; treating it as one sample keeps the loop long.
  const bool flat = eps_ps == nullptr;
  const int64_t batch = flat ? 1 : p.batch;
  const int64_t n = flat ? p.batch * p.sample_numel : p.sample_numel;
  for_each_segment(batch, n, [&](int64_t sample, int64_t begin, int64_t end) {
    const T eps = flat ? eps_scalar : D::load(eps_ps[sample]);
    linf_segment<D, kClamp>(x, g, x0, begin, end, alpha, eps, lo, hi);
  });
}

template <typename D>
FASTPGD_CLONES void l2_impl(const StepParams& p) {
  using S = typename D::S;
  using T = typename D::T;
  S* __restrict x = static_cast<S*>(p.x_adv);
  const S* __restrict g = static_cast<const S*>(p.grad);
  const S* __restrict x0 = static_cast<const S*>(p.x0);
  const S* eps_ps = static_cast<const S*>(p.eps_per_sample);
  const T alpha = T(p.alpha), lo = T(p.lo), hi = T(p.hi), tiny = T(kL2Tiny);
  const int64_t n = p.sample_numel;
  // Samples are independent; the reductions inside one sample run in order (double accumulators).
#pragma omp parallel for schedule(static) if (p.batch * n >= kParallelMin && p.batch > 1)
  for (int64_t s = 0; s < p.batch; ++s) {
    S* __restrict xs = x + s * n;
    const S* __restrict gs = g + s * n;
    const S* __restrict x0s = x0 + s * n;
    // Both norms sum in double over kLanes independent partial sums, so the loops vectorize (a
    // single running sum is one long dependency chain); the order only moves the last bits.
    double part[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        const double v = double(D::load(gs[i + k]));
        part[k] += v * v;
      }
    }
    for (; i < n; ++i) {
      const double v = double(D::load(gs[i]));
      part[0] += v * v;
    }
    const double gg = sum_lanes(part);
    const T gnorm = max_nan(T(std::sqrt(gg)), tiny);
    // The displacement is recomputed in the last pass rather than stored: same traffic, and no
    // rounding of it to a 16-bit dtype in between.
    for (int k = 0; k < kLanes; ++k) part[k] = 0.0;
    for (i = 0; i + kLanes <= n; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        const int64_t j = i + k;
        const double d =
            double(l2_delta<T>(D::load(xs[j]), D::load(gs[j]), D::load(x0s[j]), alpha, gnorm));
        part[k] += d * d;
      }
    }
    for (; i < n; ++i) {
      const double d =
          double(l2_delta<T>(D::load(xs[i]), D::load(gs[i]), D::load(x0s[i]), alpha, gnorm));
      part[0] += d * d;
    }
    const double dd = sum_lanes(part);
    const T eps = eps_ps ? D::load(eps_ps[s]) : T(p.eps);
    const T factor = l2_factor<T>(eps, T(std::sqrt(dd)), tiny);
    for (int64_t i = 0; i < n; ++i) {
      const T x0v = D::load(x0s[i]);
      const T d = l2_delta<T>(D::load(xs[i]), D::load(gs[i]), x0v, alpha, gnorm);
      xs[i] = D::store(l2_project<T>(d, x0v, factor, p.has_clamp, lo, hi));
    }
  }
}

template <typename D>
void dispatch_norm(const StepParams& p) {
  if (p.norm == Norm::kL2) {
    l2_impl<D>(p);
  } else if (p.has_clamp) {
    linf_impl<D, true>(p);
  } else {
    linf_impl<D, false>(p);
  }
}

// Which clone the loader's resolver picked on this CPU, asked of the resolver itself: function
// multiversioning dispatches these three bodies by the same rules as the clones above.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target("arch=x86-64-v4"))) const char* clone_in_use() { return "arch=x86-64-v4"; }
__attribute__((target("avx2"))) const char* clone_in_use() { return "avx2"; }
__attribute__((target("default"))) const char* clone_in_use() { return "default"; }
#else
const char* clone_in_use() { return "default"; }
#endif

constexpr const char* kCloneLevels[] = {FASTPGD_CLONE_LEVELS};

}  // namespace

CpuKernelInfo pgd_step_cpu_info() {
  return {kCloneLevels, int(sizeof kCloneLevels / sizeof kCloneLevels[0]), clone_in_use()};
}

void pgd_step_cpu(const StepParams& p) {
  if (p.batch == 0 || p.sample_numel == 0) return;
  switch (p.dtype) {
    case DType::kFloat32: return dispatch_norm<F32>(p);
    case DType::kFloat64: return dispatch_norm<F64>(p);
    case DType::kFloat16: return dispatch_norm<F16>(p);
    case DType::kBFloat16: return dispatch_norm<BF16>(p);
  }
}

void cast_cpu(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
  if (src_dtype == DType::kFloat32) {
    const float* s = static_cast<const float*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    if (dst_dtype == DType::kFloat16) {
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_half_bits(s[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16_bits(s[i]);
    }
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    float* d = static_cast<float*>(dst);
    if (src_dtype == DType::kFloat16) {
      for (int64_t i = 0; i < n; ++i) d[i] = half_bits_to_float(s[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) d[i] = bf16_bits_to_float(s[i]);
    }
  }
}

}  // namespace fastpgd
