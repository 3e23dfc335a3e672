// The CUDA kernels of polycom.cu run on the CPU under the SIMT emulator (polycom_cuda_sim.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rt_polycom::cuda::sim {
// Launches `kernel` (a polycom.cu entry point, e.g. "polynorm_fwd_rows_bf16") as `blocks` blocks
// of `threads` threads, with cuLaunchKernel's argument array, on host memory. Throws on an
// unknown kernel or a synchronisation error in the kernel.
void launch(const std::string &kernel, int64_t blocks, unsigned threads, void **args);

// The names of every kernel polycom.cu defines (its entry points, as this build registers them),
// sorted: what a GPU's image of the same source must hold.
std::vector<std::string> kernel_names();

// The emulator's own check: `blocks` blocks of `threads` (a multiple of 32) threads each write
// out[block] = the sum of their global indices, through warp shuffles and __syncthreads. mode 1
// and 2 misuse them (lanes exit before a full-warp shuffle; a divergent __syncthreads): throws.
void selftest(int mode, unsigned blocks, unsigned threads, double *out);

// The kernels' host fp16 conversions: bits[i] = fp16(in[i]) rounded to nearest even, back[i] =
// fp32(bits[i]) (what cvt.rn.f16.f32 and cvt.f32.f16 do on a GPU).
void half_conversions(const float *in, unsigned short *bits, float *back, int64_t n);
}  // namespace rt_polycom::cuda::sim
