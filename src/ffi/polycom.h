// The fused PolyCom operators (polycom.cpp) and their CUDA back end (polycom_cuda.cpp).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "polycom_kernels.h"

namespace rt_polycom {

// Differentiable (torch::autograd::Function) fused operators; see polycom.cpp for the semantics.
// `lowp_out`: return a bf16/fp16 input's own type instead of fp32.
at::Tensor polynorm(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, double eps, bool lowp_out);
at::Tensor polyrelu(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, bool lowp_out);

// act(batch_norm(z) [+ identity]) as one differentiable node that saves z instead of the
// activation's input (kind 0 = PolyReLU, 1 = PolyNorm; identity may be undefined). Batch norm is
// libtorch's, in training or eval mode, updating the running statistics as `at::batch_norm`.
// clamp > 0: the activation's input is clamped to [-clamp, clamp] first (`act_clamp`).
at::Tensor bn_act(const at::Tensor &z, const at::Tensor &gamma, const at::Tensor &beta, const at::Tensor &identity,
                  const at::Tensor &w, const at::Tensor &b, const at::Tensor &running_mean,
                  const at::Tensor &running_var, bool train, double momentum, double bn_eps, int kind, double eps,
                  bool lowp_out, double clamp);

// (dw, db) of w's and b's types from the k + 1 sums [dw_1..dw_k, db] (any device).
std::pair<at::Tensor, at::Tensor> coef_grads(const at::Tensor &sums, const at::Tensor &w, const at::Tensor &b);

// CPU kernel table: 0 = the best this CPU runs, 1 = the portable build, 2 = AVX2+FMA.
void set_cpu_isa(int isa);
int cpu_isa();

// BatchNorm folded into the operator (bn_act): the kernels read batch norm's input z in place of
// x and recompute x on load (polycom.cu, `Source`): x = z * scale + shift per channel,
// rounded to z's type, + identity (rounded to the identity's type), clamped when clamp > 0.
struct BatchNormOnLoad {
  at::Tensor identity;      // undefined: none; else z's strides, and z's type or (bf16/fp16 z) fp32
  at::Tensor scale, shift;  // per channel, in the arithmetic type, contiguous
  double clamp = 0;
};

namespace cuda {
// Kernels compiled at first use with NVRTC and launched on the current stream. Coefficients stay
// on the device (no synchronisation); dw and db come back as tensors of w's type.
// With `bn`, x is batch norm's input z (see BatchNormOnLoad), here and in the backward functions.
void polynorm_forward(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, double eps, NormShape s,
                      at::Tensor &y, at::Tensor &rs, const BatchNormOnLoad *bn = nullptr);
// Batch norm's backward folded into the activation's (training, bn set): `mean` ([C], the
// arithmetic type) in; the per-block partial sums ([blocks, 2C]) out, when the kernels could take
// them (z channels-last or 2-d, few enough channels per lane, RESNET_TRAIN_CUDA_TUNING's bn_fold
// not 0), else left undefined: the caller then runs batch norm's own backward.
struct BnFold {
  at::Tensor mean;
  at::Tensor partials;
};
std::pair<at::Tensor, at::Tensor> polynorm_backward(const at::Tensor &x, const at::Tensor &gy, const at::Tensor &rs,
                                                    const at::Tensor &w, const at::Tensor &b, NormShape s,
                                                    at::Tensor &dx, const BatchNormOnLoad *bn = nullptr,
                                                    BnFold *fold = nullptr);
// Batch norm's backward from fold's partial sums: dz (z's type; may be dx's memory, when dx has
// z's type), and (dgamma, dbeta) in the arithmetic type; gamma undefined: no affine weight.
// Without `dz` defined only the two sums.
std::pair<at::Tensor, at::Tensor> bn_fold_backward(const at::Tensor &z, const at::Tensor &dx, const BnFold &fold,
                                                   const at::Tensor &invstd, const at::Tensor &gamma, NormShape s,
                                                   at::Tensor &dz);
// How many times the folded batch norm backward ran on the CUDA kernels (this process): tests
// check that a path they cover took it.
int64_t bn_fold_count();
// PolyReLU with `bn`: z dense, contiguous or channels-last.
void polyrelu_forward(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, at::Tensor &y,
                      const BatchNormOnLoad *bn = nullptr);
std::pair<at::Tensor, at::Tensor> polyrelu_backward(const at::Tensor &x, const at::Tensor &gy, const at::Tensor &w,
                                                    const at::Tensor &b, at::Tensor &dx,
                                                    const BatchNormOnLoad *bn = nullptr, BnFold *fold = nullptr);
// Empty when the CUDA kernels can run on `device`; otherwise why not (no libnvrtc, no driver,
// a compile error).
std::string unavailable_reason(int device);
// CUDA device `device` in words: name, compute capability, SMs, memory and driver version, from
// the driver API (throws where there is no driver or no such device).
std::string describe_device(int device);
// Simulation: while on, the operators run these kernels on CPU tensors under the SIMT emulator
// (simt_host.h) instead of the CPU kernels: the CUDA source checked without a GPU.
void set_simulated(bool on);
bool simulated();
// Compiles the kernel source for `arch` (e.g. "compute_90": PTX, "sm_90": a cubin) with no GPU,
// under `tuning` (RESNET_TRAIN_CUDA_TUNING's syntax); empty on success (the PTX or cubin in
// *image, ptxas's per-kernel report of registers and spills in *ptxas_report, when given), else
// NVRTC's log or why the tuning is wrong.
std::string compile_check(const std::string &arch, const std::string &nvrtc_path, std::string *image = nullptr,
                          const std::string &tuning = "", std::string *ptxas_report = nullptr);
// Throws std::invalid_argument when `spec` is not a valid RESNET_TRAIN_CUDA_TUNING value.
void check_tuning(const std::string &spec);
// Where compiled kernels are kept between processes (empty: nowhere; every process compiles).
void set_cache_dir(const std::string &dir);
// As compile_check, through the cache folder `dir`: *from_cache says whether a stored image was
// used, *size is the image's size.
std::string cached_compile_check(const std::string &arch, const std::string &nvrtc_path, const std::string &dir,
                                 const std::string &tuning, bool *from_cache, size_t *size);
}  // namespace cuda

}  // namespace rt_polycom
