// CUDA block semantics on the CPU, for the block twin of the row kernel.
//
// The kernel text of xsoftmax/_engines/_cuda_source.py (ROW_SOURCE) is
// compiled by g++ after this header. A launch runs the grid's blocks one
// after another; each block runs one OS thread per CUDA thread, so:
//   * threadIdx / blockIdx are per-thread (thread_local), blockDim / gridDim
//     per launch;
//   * __syncthreads() is a std::barrier over every thread of the block: a
//     thread that skips it (divergent barrier) deadlocks the twin, as it
//     would hang or corrupt a GPU block;
//   * __shfl_xor_sync / __shfl_down_sync exchange values through a per-warp
//     slot array between two std::barrier waits of the warp's 32 threads,
//     with CUDA's lane rules (a lane outside the caller's `width` segment
//     gives the caller its own value); every lane of the mask must call;
//   * `extern __shared__` memory is one region, reused by each block in turn
//     (blocks never run at once), filled with a NaN pattern before each
//     block so reads of unwritten shared memory show up;
//   * __half / __nv_bfloat16 are 16-bit storage types with round-to-nearest-
//     even conversions (__float2half_rn, __float2bfloat16_rn).
// The row kernel uses no atomics, so none are provided: a kernel that used
// one would fail to compile here.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <stdexcept>
#include <thread>
#include <vector>

#define XSOFTMAX_BLOCK_TWIN 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace twin {

constexpr std::size_t kSharedBytes = 1 << 18;  // above any on-chip limit a test uses

struct Warp {
  std::barrier<> sync{32};
  alignas(8) unsigned char slot[32][8];
};

struct Block {
  std::barrier<>* sync = nullptr;
  std::vector<Warp>* warps = nullptr;
};

inline Block block;  // the running block (blocks run one at a time)

template <typename V>
inline V shfl(V v, int src_lane) {
  static_assert(sizeof(V) <= 8, "shuffles move at most 8 bytes");
  const unsigned lane = threadIdx.x % 32;
  Warp& w = (*block.warps)[threadIdx.x / 32];
  std::memcpy(w.slot[lane], &v, sizeof(V));
  w.sync.arrive_and_wait();  // every lane has published its value
  V out;
  std::memcpy(&out, w.slot[src_lane], sizeof(V));
  w.sync.arrive_and_wait();  // every lane has read before any slot is reused
  return out;
}

}  // namespace twin

alignas(16) unsigned char xsoftmax_smem[twin::kSharedBytes];

inline void __syncthreads() { twin::block.sync->arrive_and_wait(); }

template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  if (mask != 0xffffffffu) throw std::logic_error("the twin supports full-warp masks only");
  const int lane = threadIdx.x % 32;
  int src = lane ^ lane_mask;
  if (src >= (lane / width + 1) * width) src = lane;  // a later segment: own value
  return twin::shfl(v, src);
}

template <typename V>
inline V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  if (mask != 0xffffffffu) throw std::logic_error("the twin supports full-warp masks only");
  const int lane = threadIdx.x % 32;
  const int src = (lane % width) + (int)delta < width ? lane + (int)delta : lane;
  return twin::shfl(v, src);
}

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}

struct __half {
  std::uint16_t bits;
};
struct __nv_bfloat16 {
  std::uint16_t bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return (float)f;
}
inline __half __float2half_rn(float x) {
  const _Float16 f = (_Float16)x;  // IEEE binary16, round to nearest even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const std::uint32_t u = (std::uint32_t)b.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  __nv_bfloat16 b;
  if (x != x) {
    b.bits = 0x7fc0;  // a quiet NaN, as CUDA's conversion gives
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    b.bits = (std::uint16_t)(u >> 16);
  }
  return b;
}

namespace twin {

// Runs `kernel` (a callable running one CUDA thread) on grid × block threads.
template <typename K>
void launch(unsigned grid, unsigned threads, std::size_t shared_bytes, K kernel) {
  if (threads == 0 || threads > 1024 || threads % 32)
    throw std::invalid_argument("block size must be a multiple of 32 in [32, 1024]");
  if (shared_bytes > kSharedBytes) throw std::invalid_argument("too much dynamic shared memory");
  blockDim = dim3{threads, 1, 1};
  gridDim = dim3{grid, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> sync((std::ptrdiff_t)threads);
    std::vector<Warp> warps(threads / 32);
    block = Block{&sync, &warps};
    const std::uint32_t nan_bits = 0x7fc00001u;  // stale shared memory reads as NaN
    for (std::size_t i = 0; i + 4 <= kSharedBytes; i += 4) std::memcpy(xsoftmax_smem + i, &nan_bits, 4);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([=] {
        threadIdx = dim3{t, 1, 1};
        blockIdx = dim3{b, 1, 1};
        kernel();
      });
    }
    for (auto& th : pool) th.join();
  }
}

}  // namespace twin
