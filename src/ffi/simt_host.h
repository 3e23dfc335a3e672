// A small SIMT emulator: runs CUDA kernel source compiled as host C++ on the CPU, so that the fused
// activations' CUDA kernels (polycom.cu) are checked numerically on machines without a GPU.
//
// Each CUDA thread is a fiber (its own stack, switched cooperatively on one OS thread); the
// blocks of a launch run one after another. The sync points the kernels use are modelled with
// their CUDA semantics and checked:
// - __syncthreads(): every live thread of the block waits, at the same call; threads that have
//   exited count as arrived (as on Volta and later); threads at different calls are an error.
// - __shfl_xor_sync(0xffffffff, v, o): the 32 lanes of the warp meet and exchange; a lane that
//   has exited, or a lane waiting at a different sync point, is a kernel bug: the launch fails
//   with an error naming the block and warp instead of returning whatever a GPU would.
// Vector loads and stores must be aligned to their size, as on a GPU.
// Only the device functions polycom.cu uses are provided. Not a performance model: a correctness
// one (index arithmetic, reductions, rounding to bf16/fp16, boundary handling).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

namespace rt_simt {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

// The running fiber's coordinates (set by the scheduler before each switch into a fiber).
extern thread_local Dim3 thread_idx, block_idx, block_dim, grid_dim;

// Sync points (called from kernel code, i.e. from inside a fiber).
void syncthreads();
uint64_t shfl_xor(uint64_t bits, int lane_mask);

// Runs kernel() as grid x block threads (1-d); throws std::runtime_error on a sync error.
void launch(unsigned grid, unsigned block, const std::function<void()> &kernel);

template <typename T>
T shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  if (mask != 0xffffffffu) throw std::logic_error("simt emulator: only full-warp shuffles are modelled");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shfl_xor(bits, lane_mask);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// A GPU faults on a misaligned vector access; the emulator throws instead.
inline void check_aligned(const void *p, size_t alignment) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0)
    throw std::runtime_error("misaligned address: a " + std::to_string(alignment) + "-byte vector access at " +
                             std::to_string(reinterpret_cast<uintptr_t>(p) % alignment) + " bytes past a boundary");
}

inline float uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}

// IEEE binary16 <-> binary32, round to nearest even (cvt.f32.f16 / cvt.rn.f16.f32).
float half_bits_to_float(unsigned short h);
unsigned short float_to_half_bits(float f);

}  // namespace rt_simt

// The CUDA spellings polycom.cu uses, mapped onto the emulator.
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
// A block's shared memory: blocks run one after another on an OS thread, so one static array
// serves them all; thread_local, as emulators on several OS threads (parallel tests) run at once.
#define __shared__ static thread_local
#define threadIdx (::rt_simt::thread_idx)
#define blockIdx (::rt_simt::block_idx)
#define blockDim (::rt_simt::block_dim)
#define gridDim (::rt_simt::grid_dim)
#define __syncthreads() ::rt_simt::syncthreads()
#define __shfl_xor_sync(mask, v, o) ::rt_simt::shfl_xor_sync(mask, v, o)
#define __uint_as_float(u) ::rt_simt::uint_as_float(u)
#define __float_as_uint(f) ::rt_simt::float_as_uint(f)
