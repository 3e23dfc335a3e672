// The fused PolyCom kernels' interface between the operator (polycom.cpp) and the kernels: plain
// pointers and sizes, so that the CPU kernels (polycom_cpu.cpp) can be compiled once per
// instruction set and picked at run time, as ATen does with its own CPU kernels.
#pragma once
#include <cstdint>

namespace rt_polycom {

constexpr int kMaxOrder = 8;

// Element types of the kernels' input: x (and dx), or with batch norm on load z (x and dx then of
// z's type, or fp32 with a wide identity: see CpuBatchNorm). The output y and the gradient of y
// are `float` for every type but kDouble, where they are `double` (fp32 arithmetic for fp16/bf16:
// the semantics of `act_fp32 = true`), or with lowp_out x's own type (`act_out_lowp`: y rounded
// once as stored).
// The saved rsqrt values are always the arithmetic type.
enum class Dtype : int { kFloat = 0, kDouble = 1, kBFloat16 = 2, kHalf = 3 };

// A tensor seen as [outer, C, inner] with the channels at stride `inner` (NCHW: outer = N,
// inner = H*W; channels_last and 2-d: outer = N*H*W or N, inner = 1).
struct NormShape {
  int64_t outer, channels, inner;
};

struct Coefs {
  int order;               // k
  double weight[kMaxOrder];  // w_1..w_k
  double bias;             // b
};

// BatchNorm applied on load (bn_act, as the CUDA kernels' `Source`): where the kernels read x
// they read batch norm's input z and compute x = X(T(z * scale + shift) + identity), clamped to
// [-clamp, clamp] when clamp > 0 (and dx masked where x was outside); T = z's type, arithmetic
// in the Acc type, X = T, or with `wide_identity` the Acc type: a bf16/fp16 z with an fp32
// residual (the residual stream of fp32 outputs), where x, y, dy and dx are fp32 as the separate
// operators' type promotion makes them. Null: x is read as is.
struct CpuBatchNorm {
  const void *identity;     // null, or z's layout in X
  const void *scale;        // per channel, the arithmetic type (float; double for fp64)
  const void *shift;
  double clamp;
  bool wide_identity;       // the identity (and x, dx, y, dy) in the arithmetic type
};

struct CpuKernels {
  // PolyNorm forward: y = b + sum_i w_i x^i rsqrt(mean_c(x^2i) + eps); rs[outer, k, inner] = the
  // rsqrt values, saved for backward.
  void (*polynorm_forward)(Dtype dt, bool lowp_out, const void *x, void *y, void *rs, NormShape s, const Coefs &c,
                           double eps, const CpuBatchNorm *bn);
  // PolyNorm backward: dx (x's type), and dw_1..dw_k, db summed into grad_coefs[0..k] (double).
  void (*polynorm_backward)(Dtype dt, bool lowp_out, const void *x, const void *gy, const void *rs, void *dx,
                            NormShape s, const Coefs &c, double *grad_coefs, const CpuBatchNorm *bn);
  // PolyReLU forward over the s.outer * s.channels * s.inner elements: y = b + sum_i w_i relu(x)^i
  // (without bn any dense layout, s only counting them).
  void (*polyrelu_forward)(Dtype dt, bool lowp_out, const void *x, void *y, NormShape s, const Coefs &c,
                           const CpuBatchNorm *bn);
  // PolyReLU backward: dx, and dw_1..dw_k, db into grad_coefs[0..k].
  void (*polyrelu_backward)(Dtype dt, bool lowp_out, const void *x, const void *gy, void *dx, NormShape s,
                            const Coefs &c, double *grad_coefs, const CpuBatchNorm *bn);
};

// One table per instruction set the build compiled (polycom_cpu.cpp built with -DRT_ISA=...).
const CpuKernels &cpu_kernels_default();
#if defined(__x86_64__)
const CpuKernels &cpu_kernels_avx2();
const CpuKernels &cpu_kernels_avx512();
#endif

}  // namespace rt_polycom
