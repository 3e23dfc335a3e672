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

// Batch norm's backward folded into the activation's (training, batch norm on load): the backward
// kernels also sum, per channel, g = dx rounded to z's type (the gradient of batch norm's output,
// as the separate operators hand it over) and g * (z - mean): sums[c] and sums[C + c], in double,
// added up in a fixed order (deterministic for any thread count). bn_backward_elemt then computes
// dz from them, where libtorch's batch norm backward would read dx and z twice more.
struct CpuBnGrad {
  const void *mean;  // per channel, the arithmetic type: the batch mean batch norm normalised with
  double *sums;      // [2 * C], written
};

struct CpuKernels {
  // PolyNorm forward: y = b + sum_i w_i x^i rsqrt(mean_c(x^2i) + eps); rs[outer, k, inner] = the
  // rsqrt values, saved for backward.
  void (*polynorm_forward)(Dtype dt, bool lowp_out, const void *x, void *y, void *rs, NormShape s, const Coefs &c,
                           double eps, const CpuBatchNorm *bn);
  // PolyNorm backward: dx (x's type), and dw_1..dw_k, db summed into grad_coefs[0..k] (double).
  // With fold (bn set, training): also batch norm's per-channel sums (CpuBnGrad).
  void (*polynorm_backward)(Dtype dt, bool lowp_out, const void *x, const void *gy, const void *rs, void *dx,
                            NormShape s, const Coefs &c, double *grad_coefs, const CpuBatchNorm *bn,
                            const CpuBnGrad *fold);
  // PolyReLU forward over the s.outer * s.channels * s.inner elements: y = b + sum_i w_i relu(x)^i
  // (without bn any dense layout, s only counting them).
  void (*polyrelu_forward)(Dtype dt, bool lowp_out, const void *x, void *y, NormShape s, const Coefs &c,
                           const CpuBatchNorm *bn);
  // PolyReLU backward: dx, and dw_1..dw_k, db into grad_coefs[0..k].
  void (*polyrelu_backward)(Dtype dt, bool lowp_out, const void *x, const void *gy, void *dx, NormShape s,
                            const Coefs &c, double *grad_coefs, const CpuBatchNorm *bn, const CpuBnGrad *fold);
  // Batch norm's input gradient in training from the folded sums: per channel c,
  //   dz = (g - mean_g - (z - mean) * k) * a,  g = dx rounded to z's type,
  // with coefs[4][C] in the arithmetic type: mean, mean_g = sum g / M, k = sum g (z - mean) *
  // invstd^2 / M, a = invstd * gamma (M: elements per channel) — libtorch's formula. dx is z's
  // type, or the arithmetic type with `wide` (an fp32 residual); dz (z's type) may be dx itself.
  void (*bn_backward_elemt)(Dtype dt, bool wide, const void *dx, const void *z, void *dz, NormShape s,
                            const void *coefs);
};

// One table per instruction set the build compiled (polycom_cpu.cpp built with -DRT_ISA=...).
const CpuKernels &cpu_kernels_default();
#if defined(__x86_64__)
const CpuKernels &cpu_kernels_avx2();
const CpuKernels &cpu_kernels_avx512();
#endif

}  // namespace rt_polycom
