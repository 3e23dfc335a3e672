// The fused activations' CUDA kernels (polycom.cu) compiled as host C++ and run on the CPU under
// the SIMT emulator (simt_host.h): `check-act --simulate-cuda` and the tests check the kernel
// source itself, through the same host code that launches it on a GPU (polycom_cuda.cpp), on
// machines without one. No libtorch here: pointers and launch arguments only.
#include <math.h>

#include <cstddef>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "polycom_cuda_sim.h"
#include "simt_host.h"

namespace rt_polycom::cuda::sim {
namespace {

using Thunk = std::function<void(void **)>;

std::map<std::string, Thunk> &registry() {
  static std::map<std::string, Thunk> kernels;
  return kernels;
}

// Calls f with its arguments read from the launch's argument array (cuLaunchKernel's convention:
// args[i] points at the i-th argument's value).
template <typename... P, size_t... I>
void call(void (*f)(P...), void **args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_reference_t<P> *>(args[I])...);
}

template <typename... P>
bool add(const char *name, void (*f)(P...)) {
  registry()[name] = [f](void **args) { call(f, args, std::index_sequence_for<P...>{}); };
  return true;
}

#define RT_SIMT_HOST 1
#define RT_KERNEL static void
#define RT_REGISTER(fn) [[maybe_unused]] const bool registered_##fn = add(#fn, &fn);
#include "polycom.cu"

// The emulator's own check (simt_selftest): every thread contributes its index; a warp sums with
// shuffles, the block with shared memory and __syncthreads. mode 1 makes the upper half of each
// warp exit before the shuffles, mode 2 sends half the block to a __syncthreads the rest never
// reaches: both are bugs a GPU would not report, which the emulator must.
static void simt_selftest_kernel(double *out, int mode) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __shared__ double warp_sums[32];
  if (mode == 1 && lane >= 16) return;
  if (mode == 2 && threadIdx.x < blockDim.x / 2) __syncthreads();
  double v = blockIdx.x * blockDim.x + threadIdx.x;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (unsigned w = 0; w < blockDim.x / 32; w++) total += warp_sums[w];
    out[blockIdx.x] = total;
  }
}

}  // namespace

void selftest(int mode, unsigned blocks, unsigned threads, double *out) {
  rt_simt::launch(blocks, threads, [&] { simt_selftest_kernel(out, mode); });
}

void half_conversions(const float *in, unsigned short *bits, float *back, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    bits[i] = rt_simt::float_to_half_bits(in[i]);
    back[i] = rt_simt::half_bits_to_float(bits[i]);
  }
}

std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (const auto &entry : registry()) names.push_back(entry.first);  // a std::map: sorted
  return names;
}

void launch(const std::string &kernel, int64_t blocks, unsigned threads, void **args) {
  auto it = registry().find(kernel);
  if (it == registry().end()) throw std::invalid_argument("simt emulator: no kernel " + kernel);
  if (blocks < 0 || blocks > 0x7fffffff) throw std::invalid_argument("simt emulator: grid too large");
  const Thunk &thunk = it->second;
  rt_simt::launch(static_cast<unsigned>(blocks), threads, [&] { thunk(args); });
}

}  // namespace rt_polycom::cuda::sim
