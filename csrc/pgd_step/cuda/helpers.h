// Small CUDA helpers for the fused PGD step: index arithmetic, launch checks, dtype traits,
// 16-byte vector loads and stores, and a block-wide double sum.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastpgd {
namespace cuda {

constexpr int kWarpSize = 32;
// Every wide access moves 16 bytes: float4, double2, or 8 halves.
constexpr int kVecBytes = 16;

template <typename I>
__host__ __device__ constexpr I ceil_div(I a, I b) {
  return (a + b - 1) / b;
}

// Grid-stride loop with 64-bit indices: the products blockIdx.x * blockDim.x and
// blockDim.x * gridDim.x are formed in int64_t, so tensors past 2^31 elements index correctly.
#define FASTPGD_CUDA_KERNEL_LOOP(i, n)                                                  \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Throws std::runtime_error carrying the CUDA error string; the binding maps it to Python.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastpgd: ") + what + " failed: " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

// After a <<<...>>> launch: configuration errors (bad grid, too many resources) surface here.
// Faults inside the kernel are asynchronous and surface at the caller's next synchronization.
inline void check_launch(const char* kernel) {
  check_cuda(cudaGetLastError(), kernel);
}

// True when `p` can be accessed with 16-byte loads and stores.
inline bool is_aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kVecBytes == 0;
}

// Per-dtype arithmetic type ("opmath": float for the 16-bit types) and the conversions, which
// round once, to nearest even, on the store.
template <typename T>
struct OpMath {
  using type = T;
  __device__ __forceinline__ static T load(T v) { return v; }
  __device__ __forceinline__ static T store(T v) { return v; }
};
template <>
struct OpMath<__half> {
  using type = float;
  __device__ __forceinline__ static float load(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct OpMath<__nv_bfloat16> {
  using type = float;
  __device__ __forceinline__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// Elements per 16-byte vector: 4 float, 2 double, 8 half/bfloat16.
template <typename T>
constexpr int vec_size() {
  return kVecBytes / static_cast<int>(sizeof(T));
}

// N consecutive elements, aligned so that one access of the whole struct is a single 16-byte
// memory instruction (ld.global.v4.u32 / st.global.v4.u32).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Loads N consecutive elements: one wide access when kAligned (the caller checked 16-byte
// alignment), else N scalar accesses (the fallback for views at odd storage offsets).
template <bool kAligned, int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  if constexpr (kAligned) {
    return *reinterpret_cast<const Vec<T, N>*>(p);
  } else {
    Vec<T, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = p[k];
    return r;
  }
}

template <bool kAligned, int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& r) {
  if constexpr (kAligned) {
    *reinterpret_cast<Vec<T, N>*>(p) = r;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = r.v[k];
  }
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum of `v` over the block; every thread gets the result. `smem` holds kBlock/32 + 1 doubles.
// Two barriers: after the first, warp 0 may read the per-warp partials; after the second,
// everyone may read the total. A later call may reuse `smem` at once: its first write to a
// partial slot happens after this call's second barrier, when warp 0 has finished reading, and
// its write of the total happens after its own first barrier, when everyone has read this one.
// The summation order is fixed by the launch shape, so results repeat run to run.
template <int kBlock>
__device__ __forceinline__ double block_sum(double v, double* smem) {
  static_assert(kBlock % kWarpSize == 0 && kBlock / kWarpSize <= kWarpSize,
                "block_sum needs a whole number of warps, at most 32");
  constexpr int kWarps = kBlock / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? smem[lane] : 0.0;
    v = warp_sum(v);
    if (lane == 0) smem[kWarps] = v;
  }
  __syncthreads();
  return smem[kWarps];
}

}  // namespace cuda
}  // namespace fastpgd
