// The fused PGD step on CUDA: one launch per step, for both norms.
//
// Linf is elementwise: a grid-stride loop over chunks of 16 bytes (4 float, 2 double, 8 half or
// bfloat16). When x_adv, grad and x0 are all 16-byte aligned a chunk moves with one wide load
// or store per tensor; otherwise (a view at an odd storage offset) the same chunks move element
// by element. The last numel % N elements form a scalar tail. With one eps per sample, the
// sample of a chunk takes one 64-bit division per chunk; inside the chunk a running sample
// boundary finds the (rare) chunks that straddle two samples.
//
// L2 needs two reductions per sample, the second (||d_i||) over values that depend on the
// result of the first (||g_i||), and then the update. All three passes run in ONE launch: each
// thread block owns whole samples (a grid-stride loop over samples when the batch exceeds the
// grid) and reduces them with warp shuffles and shared memory, accumulating squares in double.
// Pass 3 recomputes d exactly as pass 2 did rather than storing it, so the step reads the
// inputs three times and writes x_adv once, needs no scratch memory, and can be captured in a
// CUDA graph. The limit: one block streams one sample, so a small batch of very large samples
// (fewer samples than SMs) leaves SMs idle; a cluster of blocks per sample (sm_90 distributed
// shared memory) would lift it.
//
// Arithmetic is the shared element math of pgd_step.h, in float for float16/bfloat16 and in the
// dtype itself otherwise, rounded once on the store. This file must be compiled with
// --fmad=false: an FMA would round a*b + c once where the reference chain of separate ops rounds
// twice, and float32/float64 results must match it bit for bit.
#include <atomic>
#include <cmath>
#include <cstdint>

#include "pgd_step/cuda/helpers.h"
#include "pgd_step/pgd_step.h"
#include "pgd_step/step_params.h"

namespace fastpgd {
namespace {

using cuda::block_sum;
using cuda::ceil_div;
using cuda::load_vec;
using cuda::OpMath;
using cuda::store_vec;
using cuda::Vec;

constexpr int kLinfBlock = 256;
constexpr int kL2SmallBlock = 256;
constexpr int kL2LargeBlock = 512;
// Samples up to this many elements take the small L2 block (MNIST 784, CIFAR 3072 elements);
// larger ones (ImageNet's 150528) take the large one.
constexpr int64_t kL2SmallSample = 8192;
// Resident threads per SM on sm_80/sm_90; the grid is capped at one full wave of blocks and
// grid-stride loops cover the rest.
constexpr int kThreadsPerSM = 2048;

static_assert(ceil_div<int64_t>(39200, kLinfBlock * 4) == 39, "MNIST batch: one launch, 39 blocks");
static_assert(ceil_div<int64_t>(0, 7) == 0 && ceil_div<int64_t>(7, 7) == 1 &&
                  ceil_div<int64_t>(8, 7) == 2,
              "ceil_div");
static_assert(cuda::vec_size<float>() == 4 && cuda::vec_size<double>() == 2 &&
                  cuda::vec_size<__half>() == 8 && cuda::vec_size<__nv_bfloat16>() == 8,
              "16-byte chunks");
static_assert(sizeof(Vec<__half, 8>) == 16 && alignof(Vec<__half, 8>) == 16, "wide access");

// The scalars of one step, converted once on the host to the arithmetic type.
template <typename M>
struct Scalars {
  M alpha;
  M eps;  // used when there is no per-sample eps
  M lo;
  M hi;
  bool has_clamp;
};

template <typename T, int N, bool kAligned, bool kPerSampleEps>
__global__ void __launch_bounds__(kLinfBlock)
    linf_step_kernel(T* __restrict__ x_adv, const T* __restrict__ grad, const T* __restrict__ x0,
                     const T* __restrict__ eps_per_sample, int64_t numel, int64_t sample_numel,
                     Scalars<typename OpMath<T>::type> s) {
  using Op = OpMath<T>;
  using M = typename Op::type;
  const int64_t nchunks = numel / N;
  FASTPGD_CUDA_KERNEL_LOOP(c, nchunks) {
    const int64_t i = c * N;
    const Vec<T, N> xa = load_vec<kAligned, N>(x_adv + i);
    const Vec<T, N> g = load_vec<kAligned, N>(grad + i);
    const Vec<T, N> o = load_vec<kAligned, N>(x0 + i);
    M eps = s.eps;
    int64_t sample = 0;
    int64_t next_sample_start = 0;
    if constexpr (kPerSampleEps) {
      sample = i / sample_numel;
      next_sample_start = (sample + 1) * sample_numel;
      eps = Op::load(eps_per_sample[sample]);
    }
    Vec<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if constexpr (kPerSampleEps) {
        // Elements advance one at a time and samples hold at least one element, so the
        // boundary is met exactly.
        if (i + k == next_sample_start) {
          ++sample;
          next_sample_start += sample_numel;
          eps = Op::load(eps_per_sample[sample]);
        }
      }
      out.v[k] = Op::store(linf_update<M>(Op::load(xa.v[k]), Op::load(g.v[k]), Op::load(o.v[k]),
                                          s.alpha, eps, s.has_clamp, s.lo, s.hi));
    }
    store_vec<kAligned, N>(x_adv + i, out);
  }
  // The tail of fewer than N elements.
  const int64_t tail_start = nchunks * N;
  FASTPGD_CUDA_KERNEL_LOOP(t, numel - tail_start) {
    const int64_t i = tail_start + t;
    const M eps = kPerSampleEps ? Op::load(eps_per_sample[i / sample_numel]) : s.eps;
    x_adv[i] = Op::store(linf_update<M>(Op::load(x_adv[i]), Op::load(grad[i]), Op::load(x0[i]),
                                        s.alpha, eps, s.has_clamp, s.lo, s.hi));
  }
}

// One block per sample (grid-stride over samples); see the file comment. Within a sample,
// thread t handles chunks t, t + kBlock, ... and then the scalar tail, in all three passes.
template <typename T, int N, bool kAligned, bool kPerSampleEps, int kBlock>
__global__ void __launch_bounds__(kBlock)
    l2_step_kernel(T* __restrict__ x_adv, const T* __restrict__ grad, const T* __restrict__ x0,
                   const T* __restrict__ eps_per_sample, int64_t batch, int64_t sample_numel,
                   Scalars<typename OpMath<T>::type> s) {
  using Op = OpMath<T>;
  using M = typename Op::type;
  __shared__ double smem[kBlock / cuda::kWarpSize + 1];
  const M tiny = static_cast<M>(kL2Tiny);
  const int64_t nchunks = sample_numel / N;
  const int64_t tail_start = nchunks * N;

  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const int64_t offset = b * sample_numel;
    T* xa = x_adv + offset;
    const T* g = grad + offset;
    const T* o = x0 + offset;

    // Pass 1: gnorm = max(||g_b||, tiny), squares summed in double, the root rounded to M.
    double acc = 0.0;
#pragma unroll 4
    for (int64_t c = threadIdx.x; c < nchunks; c += kBlock) {
      const Vec<T, N> gv = load_vec<kAligned, N>(g + c * N);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const double v = static_cast<double>(Op::load(gv.v[k]));
        acc += v * v;
      }
    }
    for (int64_t i = tail_start + threadIdx.x; i < sample_numel; i += kBlock) {
      const double v = static_cast<double>(Op::load(g[i]));
      acc += v * v;
    }
    // max_nan, like the reference's clamp_min: a NaN gradient makes the whole sample NaN.
    const M gnorm = max_nan(static_cast<M>(sqrt(block_sum<kBlock>(acc, smem))), tiny);

    // Pass 2: the projection factor from ||d_b||, d = x_adv + alpha*g/gnorm - x0.
    acc = 0.0;
#pragma unroll 4
    for (int64_t c = threadIdx.x; c < nchunks; c += kBlock) {
      const Vec<T, N> xv = load_vec<kAligned, N>(xa + c * N);
      const Vec<T, N> gv = load_vec<kAligned, N>(g + c * N);
      const Vec<T, N> ov = load_vec<kAligned, N>(o + c * N);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const double d = static_cast<double>(l2_delta<M>(
            Op::load(xv.v[k]), Op::load(gv.v[k]), Op::load(ov.v[k]), s.alpha, gnorm));
        acc += d * d;
      }
    }
    for (int64_t i = tail_start + threadIdx.x; i < sample_numel; i += kBlock) {
      const double d = static_cast<double>(
          l2_delta<M>(Op::load(xa[i]), Op::load(g[i]), Op::load(o[i]), s.alpha, gnorm));
      acc += d * d;
    }
    const M eps = kPerSampleEps ? Op::load(eps_per_sample[b]) : s.eps;
    const M factor = l2_factor<M>(eps, static_cast<M>(sqrt(block_sum<kBlock>(acc, smem))), tiny);

    // Pass 3: recompute d (same inputs, same operations, same bits) and write the update. Each
    // thread writes only the elements it read, and all reads of pass 2 finished at the barrier
    // inside block_sum, so the in-place store races with nothing.
#pragma unroll 4
    for (int64_t c = threadIdx.x; c < nchunks; c += kBlock) {
      const Vec<T, N> xv = load_vec<kAligned, N>(xa + c * N);
      const Vec<T, N> gv = load_vec<kAligned, N>(g + c * N);
      const Vec<T, N> ov = load_vec<kAligned, N>(o + c * N);
      Vec<T, N> out;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const M x0k = Op::load(ov.v[k]);
        const M d = l2_delta<M>(Op::load(xv.v[k]), Op::load(gv.v[k]), x0k, s.alpha, gnorm);
        out.v[k] = Op::store(l2_project<M>(d, x0k, factor, s.has_clamp, s.lo, s.hi));
      }
      store_vec<kAligned, N>(xa + c * N, out);
    }
    for (int64_t i = tail_start + threadIdx.x; i < sample_numel; i += kBlock) {
      const M x0k = Op::load(o[i]);
      const M d = l2_delta<M>(Op::load(xa[i]), Op::load(g[i]), x0k, s.alpha, gnorm);
      xa[i] = Op::store(l2_project<M>(d, x0k, factor, s.has_clamp, s.lo, s.hi));
    }
    // The next sample's first block_sum writes smem only after its own barrier; see block_sum.
  }
}

// SM count per device, cached: cudaDeviceGetAttribute is cheap but not free, and a training
// loop calls the step thousands of times.
int multiprocessor_count(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // zero-initialized: static storage
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  cuda::check_cuda(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
                   "cudaDeviceGetAttribute(MultiProcessorCount)");
  if (count <= 0) count = 1;
  if (cacheable) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

// Makes `device` current for the scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cuda::check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) {
      cuda::check_cuda(cudaSetDevice(device), "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);  // cannot throw from a destructor; best effort
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

template <typename T, int N, bool kAligned, bool kPerSampleEps>
void launch_linf(const StepParams& p, const Scalars<typename OpMath<T>::type>& s, int sms,
                 cudaStream_t stream) {
  const int64_t numel = p.batch * p.sample_numel;
  const int64_t work = ceil_div<int64_t>(numel, N);  // chunks, counting a partial tail as one
  const int64_t max_blocks = static_cast<int64_t>(sms) * (kThreadsPerSM / kLinfBlock);
  const int64_t wanted = ceil_div<int64_t>(work, kLinfBlock);
  const unsigned grid = static_cast<unsigned>(wanted < max_blocks ? wanted : max_blocks);
  linf_step_kernel<T, N, kAligned, kPerSampleEps><<<grid, kLinfBlock, 0, stream>>>(
      static_cast<T*>(p.x_adv), static_cast<const T*>(p.grad), static_cast<const T*>(p.x0),
      static_cast<const T*>(p.eps_per_sample), numel, p.sample_numel, s);
  cuda::check_launch("linf_step_kernel launch");
}

template <typename T, int N, bool kAligned, bool kPerSampleEps, int kBlock>
void launch_l2(const StepParams& p, const Scalars<typename OpMath<T>::type>& s, int sms,
               cudaStream_t stream) {
  const int64_t max_blocks = static_cast<int64_t>(sms) * (kThreadsPerSM / kBlock);
  const unsigned grid = static_cast<unsigned>(p.batch < max_blocks ? p.batch : max_blocks);
  l2_step_kernel<T, N, kAligned, kPerSampleEps, kBlock><<<grid, kBlock, 0, stream>>>(
      static_cast<T*>(p.x_adv), static_cast<const T*>(p.grad), static_cast<const T*>(p.x0),
      static_cast<const T*>(p.eps_per_sample), p.batch, p.sample_numel, s);
  cuda::check_launch("l2_step_kernel launch");
}

// Picks the kernel instance: norm, per-sample eps, alignment, L2 block size.
template <typename T>
void dispatch(const StepParams& p, int sms, cudaStream_t stream) {
  using M = typename OpMath<T>::type;
  constexpr int N = cuda::vec_size<T>();
  // Conversions as PyTorch makes them: a Python float scalar enters the op as its opmath type.
  const Scalars<M> s{static_cast<M>(p.alpha), static_cast<M>(p.eps), static_cast<M>(p.lo),
                     static_cast<M>(p.hi), p.has_clamp};
  const bool per_sample = p.eps_per_sample != nullptr;
  const bool aligned = cuda::is_aligned16(p.x_adv) && cuda::is_aligned16(p.grad) &&
                       cuda::is_aligned16(p.x0);

  if (p.norm == Norm::kLinf) {
    if (aligned) {
      per_sample ? launch_linf<T, N, true, true>(p, s, sms, stream)
                 : launch_linf<T, N, true, false>(p, s, sms, stream);
    } else {
      per_sample ? launch_linf<T, N, false, true>(p, s, sms, stream)
                 : launch_linf<T, N, false, false>(p, s, sms, stream);
    }
    return;
  }
  // L2 addresses chunks from each sample's start, so wide accesses also need every sample to
  // start on a 16-byte boundary.
  const bool l2_aligned = aligned && p.sample_numel % N == 0;
  const bool small = p.sample_numel <= kL2SmallSample;
#define FASTPGD_LAUNCH_L2(ALIGNED, PER_SAMPLE)                                                 \
  (small ? launch_l2<T, N, ALIGNED, PER_SAMPLE, kL2SmallBlock>(p, s, sms, stream)             \
         : launch_l2<T, N, ALIGNED, PER_SAMPLE, kL2LargeBlock>(p, s, sms, stream))
  if (l2_aligned) {
    per_sample ? FASTPGD_LAUNCH_L2(true, true) : FASTPGD_LAUNCH_L2(true, false);
  } else {
    per_sample ? FASTPGD_LAUNCH_L2(false, true) : FASTPGD_LAUNCH_L2(false, false);
  }
#undef FASTPGD_LAUNCH_L2
}

}  // namespace

void pgd_step_cuda(const StepParams& p, void* stream) {
  if (p.batch <= 0 || p.sample_numel <= 0) return;  // nothing to do, nothing to launch
  const auto s = static_cast<cudaStream_t>(stream);
  // Launch on the tensors' device, whatever device this runtime has current. The stream may be
  // the legacy default stream (PyTorch's default current stream), whose device is not its own.
  DeviceGuard guard(p.device);
  const int sms = multiprocessor_count(p.device);
  switch (p.dtype) {
    case DType::kFloat32:
      dispatch<float>(p, sms, s);
      break;
    case DType::kFloat64:
      dispatch<double>(p, sms, s);
      break;
    case DType::kFloat16:
      dispatch<__half>(p, sms, s);
      break;
    case DType::kBFloat16:
      dispatch<__nv_bfloat16>(p, sms, s);
      break;
    default:
      throw std::invalid_argument("fastpgd: pgd_step_cuda got an unknown dtype");
  }
}

}  // namespace fastpgd
