// The fused PolyNorm / PolyReLU operators: torch::autograd::Functions with their own closed-form
// backward, running the CPU kernels (polycom_cpu.cpp) or the CUDA kernels (polycom_cuda.cpp).
//
// Semantics: those of `src/model/activation.rs` with `act_fp32 = true` (and of polycom.py):
// fp32 arithmetic for fp32/bf16/fp16 inputs (fp64 for fp64), output in fp32 (fp64), or with
// `lowp_out` in a bf16/fp16 input's own type (`act_out_lowp`: rounded once, at the end). Saved for
// backward: x and k rsqrt values per pixel (PolyNorm), x alone (PolyReLU) — where autograd keeps
// x, x^2 .. x^k and every normalised term for the eager expression.
#include "polycom.h"
#include "guarded.h"

#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <stdexcept>
#include <string>

namespace rt_polycom {

namespace {

std::atomic<int> g_cpu_isa{0};  // 0 auto, 1 default, 2 avx2, 3 avx512

bool cpu_supports(int isa) {
#if defined(__x86_64__)
  if (isa == 2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == 3)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
#endif
  return isa == 1;
}

// Auto: the instruction set ATen's own CPU kernels run with (its pick, which honours the
// ATEN_CPU_CAPABILITY environment variable), so the activations and the batch norm and
// convolutions around them use the same vector width.
int auto_isa() {
  static const int isa = [] {
    const std::string aten = at::get_cpu_capability();
    if (aten == "AVX512" && cpu_supports(3)) return 3;
    if ((aten == "AVX512" || aten == "AVX2") && cpu_supports(2)) return 2;
    return 1;
  }();
  return isa;
}

int isa_in_use() {
  const int isa = g_cpu_isa.load();
  return isa == 0 ? auto_isa() : isa;
}

const CpuKernels &cpu_kernels() {
#if defined(__x86_64__)
  switch (isa_in_use()) {
    case 3:
      return cpu_kernels_avx512();
    case 2:
      return cpu_kernels_avx2();
    default:
      break;
  }
#endif
  return cpu_kernels_default();
}

Dtype dtype_of(const at::Tensor &x) {
  switch (x.scalar_type()) {
    case at::kFloat: return Dtype::kFloat;
    case at::kDouble: return Dtype::kDouble;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kHalf: return Dtype::kHalf;
    default: throw std::invalid_argument(std::string("fused PolyCom: unsupported input dtype ") +
                                         c10::toString(x.scalar_type()));
  }
}

// fp32 arithmetic for every input type but fp64.
at::ScalarType acc_type(const at::Tensor &x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

bool is_lowp(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// A wide identity: an fp32 residual on a bf16/fp16 z (the fp32 residual stream of fp32 outputs).
bool wide_identity(const at::Tensor &z, const at::Tensor &identity) {
  return identity.defined() && is_lowp(z.scalar_type()) && identity.scalar_type() == at::kFloat;
}

// The type of the activation's input x: the operator's input's, or with batch norm on load and a
// wide identity fp32, as the separate operators' type promotion makes it.
at::ScalarType x_type(const at::Tensor &x, const BatchNormOnLoad *bn) {
  return bn && wide_identity(x, bn->identity) ? at::kFloat : x.scalar_type();
}

// The output's type: the arithmetic type, or with `lowp_out` a bf16/fp16 input's own type.
at::ScalarType out_type(const at::Tensor &x, bool lowp_out, const BatchNormOnLoad *bn = nullptr) {
  const auto xt = x_type(x, bn);
  return lowp_out && is_lowp(xt) ? xt : acc_type(x);
}

// Whether y and its gradient are in x's low-precision type (the CPU kernels' `lowp_out`).
bool lowp_y(const at::Tensor &x, bool lowp_out, const BatchNormOnLoad *bn) {
  return out_type(x, lowp_out, bn) != acc_type(x);
}

void check_coefs(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b) {
  if (w.dim() != 1 || w.numel() < 1 || w.numel() > kMaxOrder)
    throw std::invalid_argument("fused PolyCom: weight must have 1.." + std::to_string(kMaxOrder) + " entries, got " +
                                std::to_string(w.numel()));
  if (b.numel() != 1) throw std::invalid_argument("fused PolyCom: bias must have one entry");
  if (w.device() != x.device() || b.device() != x.device())
    throw std::invalid_argument("fused PolyCom: input and coefficients are on different devices");
}

// Host copy of the coefficients (CPU tensors only: no device synchronisation).
Coefs host_coefs(const at::Tensor &w, const at::Tensor &b) {
  Coefs c{};
  c.order = static_cast<int>(w.numel());
  auto wd = w.detach().to(at::kDouble).contiguous();
  for (int i = 0; i < c.order; i++) c.weight[i] = wd.data_ptr<double>()[i];
  c.bias = b.detach().to(at::kDouble).item<double>();
  return c;
}

// x as [outer, C, inner] in memory: NCHW-contiguous (inner = H*W) or channels-last / 2-d (inner
// = 1). Other strides are made contiguous first.
struct Layout {
  at::Tensor x;
  NormShape shape;
};

Layout norm_layout(const at::Tensor &x) {
  if (x.dim() < 2) throw std::invalid_argument("fused PolyNorm: input needs a channel axis (dim >= 2)");
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t rest = c == 0 ? 0 : x.numel() / std::max<int64_t>(1, n * c);
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return {x, NormShape{n * rest, c, 1}};
  auto xc = x.contiguous();
  return rest == 1 ? Layout{xc, NormShape{n, c, 1}} : Layout{xc, NormShape{n, c, rest}};
}

// g in exactly x's strides (autograd may hand over any layout).
at::Tensor like(const at::Tensor &g, const at::Tensor &x, at::ScalarType dtype) {
  if (g.scalar_type() == dtype && rt::same_layout(g, x)) return g;
  auto out = at::empty_like(x, x.options().dtype(dtype));
  out.copy_(g);
  return out;
}

// (dw, db) from the CPU kernels' double sums.
std::vector<at::Tensor> cpu_coef_grads(const at::Tensor &dx, double *gc, int k, const at::Tensor &w,
                                       const at::Tensor &b) {
  auto [dw, db] = coef_grads(at::from_blob(gc, {k + 1}, at::kDouble), w, b);
  return {dx, dw, db};
}

// The CUDA kernels serve CUDA tensors, and CPU tensors while they are simulated (cuda::simulated).
bool cuda_kernels(const at::Tensor &x) { return x.is_cuda() || cuda::simulated(); }

struct Forward {
  at::Tensor y, saved_x, rs;
};

// The CPU kernels' view of `bn` for input x (its scale and shift in x's arithmetic type, kept
// alive in `keep`); null without bn.
const CpuBatchNorm *cpu_bn(const at::Tensor &x, const BatchNormOnLoad *bn, int64_t channels, CpuBatchNorm &out,
                           std::pair<at::Tensor, at::Tensor> &keep) {
  if (!bn) return nullptr;
  const auto &id = bn->identity;
  const bool wide = wide_identity(x, id);
  if (id.defined() && ((id.scalar_type() != x.scalar_type() && !wide) || id.strides() != x.strides() ||
                       id.sizes() != x.sizes()))
    throw std::invalid_argument("fused BatchNorm + activation: the residual must have z's layout, and z's type "
                                "or (bf16/fp16 z) fp32");
  keep = {bn->scale.to(acc_type(x)).contiguous(), bn->shift.to(acc_type(x)).contiguous()};
  if (keep.first.numel() != channels || keep.second.numel() != channels)
    throw std::invalid_argument("fused BatchNorm + activation: one scale and shift per channel expected");
  out = {id.defined() ? id.const_data_ptr() : nullptr, keep.first.const_data_ptr(), keep.second.const_data_ptr(),
         bn->clamp, wide};
  return &out;
}

// x's shape for the PolyReLU kernels: with bn, [outer, C, inner] (z contiguous or channels-last);
// without, a flat count.
NormShape relu_shape(const at::Tensor &x, const BatchNormOnLoad *bn) {
  if (bn) return norm_layout(x).shape;
  return NormShape{1, 1, x.numel()};
}

// Batch norm's backward folded into the activation's (training; see
// BnActFunction::folded_backward): the mean batch norm normalised with, in; its per-channel sums,
// out, where the kernels took them (the CPU kernels always; the CUDA kernels with z channels-last
// and few enough channels per lane, see cuda::BnFold).
struct BnGradFold {
  at::Tensor mean;      // [C], the arithmetic type, contiguous
  at::Tensor sums;      // CPU kernels: [2C] double: sum g, then sum g (z - mean)
  at::Tensor partials;  // CUDA kernels: [blocks, 2C], the same sums per block
  bool taken() const { return sums.defined() || partials.defined(); }
};

// The kernels' view of `fold` (its sums allocated here); null without.
const CpuBnGrad *cpu_fold(BnGradFold *fold, int64_t channels, CpuBnGrad &out) {
  if (!fold) return nullptr;
  fold->sums = at::zeros({2 * channels}, at::kDouble);
  out = {fold->mean.const_data_ptr(), fold->sums.data_ptr<double>()};
  return &out;
}

// The kernels write the output in its type (out_type: rounded once as stored) and read the
// gradient of y in that type: no cast passes around them.
// With `bn`, x_in is batch norm's input z and the kernels compute x on load.
Forward polynorm_forward(const at::Tensor &x_in, const at::Tensor &w, const at::Tensor &b, double eps,
                         bool lowp_out, const BatchNormOnLoad *bn = nullptr) {
  check_coefs(x_in, w, b);
  auto [x, shape] = norm_layout(x_in);
  const int k = static_cast<int>(w.numel());
  auto y = at::empty_like(x, x.options().dtype(out_type(x, lowp_out, bn)));
  auto rs = at::empty({shape.outer, k, shape.inner}, x.options().dtype(acc_type(x)));
  if (x.numel() > 0) {
    if (cuda_kernels(x)) {
      cuda::polynorm_forward(x, w, b, eps, shape, y, rs, bn);
    } else {
      CpuBatchNorm cb{};
      std::pair<at::Tensor, at::Tensor> keep;
      cpu_kernels().polynorm_forward(dtype_of(x), lowp_y(x, lowp_out, bn), x.const_data_ptr(), y.data_ptr(),
                                     rs.data_ptr(), shape, host_coefs(w, b), eps,
                                     cpu_bn(x, bn, shape.channels, cb, keep));
    }
  }
  return {y, x, rs};
}

// With `bn`, x is batch norm's input z and the kernels recompute x on load.
// With `fold` (bn set), the kernels also sum batch norm's backward reductions where they can.
std::vector<at::Tensor> polynorm_backward(const at::Tensor &gy_in, const at::Tensor &x, const at::Tensor &w,
                                          const at::Tensor &b, const at::Tensor &rs, bool lowp_out,
                                          const BatchNormOnLoad *bn = nullptr, BnGradFold *fold = nullptr) {
  auto shape = norm_layout(x).shape;  // x was saved in its kernel layout: no copy here
  const int k = static_cast<int>(w.numel());
  auto gy = like(gy_in, x, out_type(x, lowp_out, bn));
  auto dx = at::empty_like(x, x.options().dtype(x_type(x, bn)));
  if (cuda_kernels(x)) {
    cuda::BnFold cf{fold ? fold->mean : at::Tensor(), at::Tensor()};
    auto [dw, db] = cuda::polynorm_backward(x, gy, rs, w, b, shape, dx, bn, fold ? &cf : nullptr);
    if (fold) fold->partials = cf.partials;
    return {dx, dw, db};
  }
  double gc[kMaxOrder + 1] = {0};
  CpuBatchNorm cb{};
  std::pair<at::Tensor, at::Tensor> keep;
  CpuBnGrad cf{};
  const auto *folded = cpu_fold(fold, shape.channels, cf);
  if (x.numel() > 0)
    cpu_kernels().polynorm_backward(dtype_of(x), lowp_y(x, lowp_out, bn), x.const_data_ptr(), gy.const_data_ptr(),
                                    rs.const_data_ptr(), dx.data_ptr(), shape, host_coefs(w, b), gc,
                                    cpu_bn(x, bn, shape.channels, cb, keep), folded);
  return cpu_coef_grads(dx, gc, k, w, b);
}

Forward polyrelu_forward(const at::Tensor &x_in, const at::Tensor &w, const at::Tensor &b, bool lowp_out,
                         const BatchNormOnLoad *bn = nullptr) {
  check_coefs(x_in, w, b);
  // Elementwise: any dense layout will do, as long as x, y, dy and dx share it.
  auto x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  auto y = at::empty_like(x, x.options().dtype(out_type(x, lowp_out, bn)));
  if (x.numel() > 0) {
    if (cuda_kernels(x)) {
      cuda::polyrelu_forward(x, w, b, y, bn);
    } else {
      const auto shape = relu_shape(x, bn);
      CpuBatchNorm cb{};
      std::pair<at::Tensor, at::Tensor> keep;
      cpu_kernels().polyrelu_forward(dtype_of(x), lowp_y(x, lowp_out, bn), x.const_data_ptr(), y.data_ptr(), shape,
                                     host_coefs(w, b), cpu_bn(x, bn, shape.channels, cb, keep));
    }
  }
  return {y, x, at::Tensor()};
}

std::vector<at::Tensor> polyrelu_backward(const at::Tensor &gy_in, const at::Tensor &x, const at::Tensor &w,
                                          const at::Tensor &b, bool lowp_out, const BatchNormOnLoad *bn = nullptr,
                                          BnGradFold *fold = nullptr) {
  const int k = static_cast<int>(w.numel());
  auto gy = like(gy_in, x, out_type(x, lowp_out, bn));
  auto dx = at::empty_like(x, x.options().dtype(x_type(x, bn)));
  if (cuda_kernels(x)) {
    cuda::BnFold cf{fold ? fold->mean : at::Tensor(), at::Tensor()};
    auto [dw, db] = cuda::polyrelu_backward(x, gy, w, b, dx, bn, fold ? &cf : nullptr);
    if (fold) fold->partials = cf.partials;
    return {dx, dw, db};
  }
  double gc[kMaxOrder + 1] = {0};
  const auto shape = relu_shape(x, bn);
  CpuBnGrad cf{};
  const auto *folded = cpu_fold(fold, shape.channels, cf);
  if (x.numel() > 0) {
    CpuBatchNorm cb{};
    std::pair<at::Tensor, at::Tensor> keep;
    cpu_kernels().polyrelu_backward(dtype_of(x), lowp_y(x, lowp_out, bn), x.const_data_ptr(), gy.const_data_ptr(),
                                    dx.data_ptr(), shape, host_coefs(w, b), gc,
                                    cpu_bn(x, bn, shape.channels, cb, keep), folded);
  }
  return cpu_coef_grads(dx, gc, k, w, b);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct PolyNormFunction : public torch::autograd::Function<PolyNormFunction> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w, const at::Tensor &b,
                            double eps, bool lowp_out) {
    auto f = polynorm_forward(x, w, b, eps, lowp_out);
    ctx->save_for_backward({f.saved_x, w, b, f.rs});
    ctx->saved_data["lowp_out"] = lowp_out;
    return f.y;
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto g = polynorm_backward(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data["lowp_out"].toBool());
    return {g[0], g[1], g[2], at::Tensor(), at::Tensor()};
  }
};

struct PolyReluFunction : public torch::autograd::Function<PolyReluFunction> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w, const at::Tensor &b,
                            bool lowp_out) {
    auto f = polyrelu_forward(x, w, b, lowp_out);
    ctx->save_for_backward({f.saved_x, w, b});
    ctx->saved_data["lowp_out"] = lowp_out;
    return f.y;
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto g = polyrelu_backward(grads[0], s[0], s[1], s[2], ctx->saved_data["lowp_out"].toBool());
    return {g[0], g[1], g[2], at::Tensor()};
  }
};

// BatchNorm (+ the residual) and the activation as one autograd node: y = act(bn(z) [+ identity]).
// The forward runs libtorch's own batch norm (the kernel `at::batch_norm` would pick: cuDNN or
// native, same values, same running-statistics update) and the fused activation on its output,
// then drops that output: saved are z (which batch norm keeps anyway), the identity (the block's
// input, which the block's first convolution keeps anyway, or the projection's output), the
// batch statistics and PolyNorm's per-pixel rsqrt values. The backward recomputes x = z * scale
// + shift [+ identity] in one pass (scale = gamma * invstd, shift = beta - mean * scale, fp32),
// runs the activation's backward, and hands dx to batch norm's own backward. Where the separate
// operators keep z, x and y per site, this keeps z and y: ReLU's count (Inductor recomputes the
// same way). The recomputed x is batch norm's output to within a rounding of its last step.
// Where the kernels can apply batch norm as they load z (applies_on_load: z contiguous or
// channels-last, the residual absent or in z's layout, of z's type or fp32 for a bf16/fp16 z), x
// is never written at all: see forward_on_load; the backward kernels then apply the same map as
// they load z. Otherwise libtorch's batch norm runs and the backward recomputes x.
struct BnActFunction : public torch::autograd::Function<BnActFunction> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &z, const at::Tensor &gamma_in,
                            const at::Tensor &beta_in, const at::Tensor &identity_in, const at::Tensor &w,
                            const at::Tensor &b,
                            const at::Tensor &running_mean, const at::Tensor &running_var, bool train,
                            double momentum, double bn_eps, int64_t kind, double eps, bool lowp_out, double clamp) {
    // Empty tensors stand for absent ones (see bn_act).
    auto opt = [](const at::Tensor &t) { return t.numel() == 0 && t.dim() == 1 ? at::Tensor() : t; };
    return forward_impl(ctx, z, opt(gamma_in), opt(beta_in), opt(identity_in), w, b, running_mean, running_var, train,
                        momentum, bn_eps, kind, eps, lowp_out, clamp);
  }

  static at::Tensor forward_impl(AutogradContext *ctx, const at::Tensor &z, const at::Tensor &gamma,
                                 const at::Tensor &beta, const at::Tensor &identity, const at::Tensor &w,
                                 const at::Tensor &b, const at::Tensor &running_mean, const at::Tensor &running_var,
                                 bool train, double momentum, double bn_eps, int64_t kind, double eps, bool lowp_out,
                                 double clamp) {
    if (z.dim() < 2) throw std::invalid_argument("fused BatchNorm + activation: input needs a channel axis");
    if (identity.defined() && identity.sizes() != z.sizes())
      throw std::invalid_argument("fused BatchNorm + activation: residual and input differ in shape");
    {
      const auto zl = norm_layout(z).x;
      if (applies_on_load(zl, identity))
        return forward_on_load(ctx, zl, gamma, beta, identity, w, b, running_mean, running_var, train, momentum,
                               bn_eps, kind, eps, lowp_out, clamp);
    }
    auto bn = at::_batch_norm_impl_index(z, gamma, beta, running_mean, running_var, train, momentum, bn_eps,
                                         at::globalContext().userEnabledCuDNN());
    at::Tensor x = std::get<0>(bn);
    if (identity.defined()) x = x + identity;
    if (clamp > 0) x = x.clamp(-clamp, clamp);  // the stability remedy `act_clamp`
    auto f = kind == 1 ? polynorm_forward(x, w, b, eps, lowp_out) : polyrelu_forward(x, w, b, lowp_out);
    // Eval mode normalises with the running statistics, which the backward then needs; in
    // training they were updated in place above and are not read again.
    ctx->save_for_backward({z, gamma, beta, identity, w, b, train ? at::Tensor() : running_mean,
                            train ? at::Tensor() : running_var, std::get<1>(bn), std::get<2>(bn), std::get<3>(bn),
                            f.rs});
    save_settings(ctx, std::get<4>(bn), train, bn_eps, kind, lowp_out, clamp, x.scalar_type(), /*on_load=*/false);
    return f.y;
  }

  // What the backward needs besides the saved tensors; impl: the batch norm backward to call
  // (`_batch_norm_impl_index`'s: 0 native, 1 cuDNN).
  static void save_settings(AutogradContext *ctx, int64_t impl, bool train, double bn_eps, int64_t kind,
                            bool lowp_out, double clamp, at::ScalarType x_type, bool on_load) {
    ctx->saved_data["impl"] = impl;
    ctx->saved_data["train"] = train;
    ctx->saved_data["bn_eps"] = bn_eps;
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["lowp_out"] = lowp_out;
    ctx->saved_data["clamp"] = clamp;
    ctx->saved_data["x_type"] = static_cast<int64_t>(x_type);
    ctx->saved_data["on_load"] = on_load;
  }

  // The kernels apply batch norm (and the add, and the clamp) as they load z when z is contiguous
  // or channels-last and the identity absent or in z's layout, of z's type (bf16/fp16 with
  // act_out_lowp, or fp32) or of fp32 for a bf16/fp16 z (the fp32 residual stream of fp32
  // outputs: x, y and dx then fp32, the kernels' wide identity). On the CPU this pays in every type since the AVX-512
  // kernels (bench-act, bf16, 96 px, 49 sites: folded PolyNorm 121 ms applied on load against
  // 151 ms through libtorch's batch norm and the recompute; AVX2 kernels 158-164 against 171-173
  // ms; BENCHMARKS.md "AVX-512 kernels").
  static bool applies_on_load(const at::Tensor &z, const at::Tensor &identity) {
    if (identity.defined()) {
      if ((identity.scalar_type() != z.scalar_type() && !wide_identity(z, identity)) ||
          identity.strides() != z.strides())
        return false;
    }
    return z.is_contiguous() || (z.dim() == 4 && z.is_contiguous(at::MemoryFormat::ChannelsLast));
  }

  // x never written: the batch statistics (and the running statistics' update, as batch norm's)
  // in one pass over z, then the activation's kernels apply x = z * scale + shift [+ identity]
  // [clamped] as they load z. Saved for the backward as libtorch's native batch norm saves them
  // (impl 0: mean and invstd), whose backward the backward calls.
  static at::Tensor forward_on_load(AutogradContext *ctx, const at::Tensor &z, const at::Tensor &gamma,
                                    const at::Tensor &beta, const at::Tensor &identity, const at::Tensor &w,
                                    const at::Tensor &b, const at::Tensor &running_mean,
                                    const at::Tensor &running_var, bool train, double momentum, double bn_eps,
                                    int64_t kind, double eps, bool lowp_out, double clamp) {
    const auto acc = acc_type(z);
    at::Tensor mean, invstd;
    if (train) {
      auto [batch_mean, batch_var] = at::batch_norm_update_stats(
          z, running_mean.defined() ? std::optional<at::Tensor>(running_mean) : std::nullopt,
          running_var.defined() ? std::optional<at::Tensor>(running_var) : std::nullopt, momentum);
      mean = batch_mean.to(acc);
      invstd = (batch_var.to(acc) + bn_eps).rsqrt();
    } else {
      mean = running_mean.to(acc);
      invstd = (running_var.to(acc) + bn_eps).rsqrt();
    }
    auto [scale, shift] = affine_of(mean, invstd, gamma, beta, acc);
    const BatchNormOnLoad bn{identity.defined() ? identity : at::Tensor(), scale, shift, clamp};
    auto f = kind == 1 ? polynorm_forward(z, w, b, eps, lowp_out, &bn) : polyrelu_forward(z, w, b, lowp_out, &bn);
    ctx->save_for_backward({z, gamma, beta, identity, w, b, train ? at::Tensor() : running_mean,
                            train ? at::Tensor() : running_var, train ? mean : at::Tensor(),
                            train ? invstd : at::Tensor(), at::Tensor(), f.rs});
    save_settings(ctx, /*impl: libtorch's native batch norm*/ 0, train, bn_eps, kind, lowp_out, clamp,
                  x_type(z, &bn), /*on_load=*/true);
    return f.y;
  }

  // Batch norm's affine map in the arithmetic type: x = z * scale + shift per channel.
  static std::pair<at::Tensor, at::Tensor> affine_of(const at::Tensor &mean, const at::Tensor &invstd,
                                                     const at::Tensor &gamma, const at::Tensor &beta,
                                                     at::ScalarType acc) {
    auto scale = invstd.to(acc);
    if (gamma.defined()) scale = scale * gamma.to(acc);
    auto shift = -mean.to(acc) * scale;
    if (beta.defined()) shift = shift + beta.to(acc);
    return {scale, shift};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const int kNumInputs = 15;
    if (!grads[0].defined()) return variable_list(kNumInputs);
    auto s = ctx->get_saved_variables();
    const auto &z = s[0], &gamma = s[1], &beta = s[2], &identity = s[3], &w = s[4], &b = s[5];
    const auto &running_mean = s[6], &running_var = s[7], &save_mean = s[8], &save_var = s[9], &reserve = s[10];
    const auto &rs = s[11];
    const bool train = ctx->saved_data["train"].toBool();
    const double bn_eps = ctx->saved_data["bn_eps"].toDouble();
    const bool lowp_out = ctx->saved_data["lowp_out"].toBool();
    const auto x_type = static_cast<at::ScalarType>(ctx->saved_data["x_type"].toInt());

    // x, recomputed: batch norm's affine map with the statistics it normalised with.
    const auto acc = acc_type(z);
    auto mean = train ? save_mean : running_mean;
    auto invstd = train ? save_var : (running_var.to(acc) + bn_eps).rsqrt();
    auto [scale, shift] = affine_of(mean, invstd, gamma, beta, acc);
    const double clamp = ctx->saved_data["clamp"].toDouble();
    const bool polynorm = ctx->saved_data["kind"].toInt() == 1;
    std::vector<at::Tensor> act;
    const auto zl = norm_layout(z).x;  // z as saved (contiguous or channels-last), else a copy
    if (ctx->saved_data["on_load"].toBool()) {
      // The kernels read z (and the identity) and recompute x as they go: no pass writes x. In
      // training they also take batch norm's backward sums where they can.
      const BatchNormOnLoad bn{identity.defined() ? identity : at::Tensor(), scale, shift, clamp};
      BnGradFold fold{train ? mean.to(acc).contiguous() : at::Tensor(), at::Tensor(), at::Tensor()};
      BnGradFold *f = train ? &fold : nullptr;
      act = polynorm ? polynorm_backward(grads[0], zl, w, b, rs, lowp_out, &bn, f)
                     : polyrelu_backward(grads[0], zl, w, b, lowp_out, &bn, f);
      if (fold.taken()) return folded_backward(ctx, act, fold, zl, gamma, beta, identity, invstd);
    } else {
      act = recomputed_act_backward(grads[0], z, identity, scale, shift, x_type, clamp, polynorm, w, b, rs, lowp_out);
    }
    auto &dx = act[0];
    variable_list out(kNumInputs);
    if (identity.defined() && ctx->needs_input_grad(3)) out[3] = dx.to(identity.scalar_type());
    auto bn = at::_batch_norm_impl_index_backward(
        ctx->saved_data["impl"].toInt(), z, dx.to(z.scalar_type()), gamma, running_mean, running_var, save_mean,
        save_var, train, bn_eps,
        {ctx->needs_input_grad(0), gamma.defined() && ctx->needs_input_grad(1),
         beta.defined() && ctx->needs_input_grad(2)},
        reserve);
    out[0] = std::get<0>(bn);
    out[1] = std::get<1>(bn);
    out[2] = std::get<2>(bn);
    out[4] = act[1];
    out[5] = act[2];
    return out;
  }

  // Training: batch norm's backward folded in as well. The activation's backward kernels summed
  // batch norm's two per-channel reductions as they computed dx (sum g and sum g (z - mean), g =
  // dx rounded to z's type: what libtorch's batch norm backward would sum in a pass of its own
  // over dx and z); one pass over dx and z writes dz, in dx's memory where nothing else needs dx.
  // libtorch's backward reads dx and z twice, and a wide dx (the fp32 residual stream) would
  // first be cast to z's type in a pass of its own. Same formula as libtorch's:
  // dz = (g - sum g / M - (z - mean) invstd^2 sum g (z - mean) / M) invstd gamma,
  // dgamma = invstd sum g (z - mean), dbeta = sum g (M: elements per channel). The CPU kernels
  // sum in double; the CUDA kernels per block (cuda::bn_fold_backward adds the blocks up).
  static variable_list folded_backward(AutogradContext *ctx, const std::vector<at::Tensor> &act,
                                       const BnGradFold &fold, const at::Tensor &z, const at::Tensor &gamma,
                                       const at::Tensor &beta, const at::Tensor &identity,
                                       const at::Tensor &invstd) {
    const int kNumInputs = 15;
    const auto &dx = act[0];
    const auto shape = norm_layout(z).shape;
    variable_list out(kNumInputs);
    if (identity.defined() && ctx->needs_input_grad(3)) out[3] = dx.to(identity.scalar_type());
    const bool wide = dx.scalar_type() != z.scalar_type();
    at::Tensor dz;
    if (ctx->needs_input_grad(0)) dz = identity.defined() || wide ? at::empty_like(z) : dx;
    at::Tensor dgamma, dbeta;
    if (fold.partials.defined()) {
      std::tie(dgamma, dbeta) =
          cuda::bn_fold_backward(z, dx, cuda::BnFold{fold.mean, fold.partials}, invstd, gamma, shape, dz);
    } else {
      const int64_t C = shape.channels;
      const double M = C > 0 ? static_cast<double>(z.numel() / C) : 0.0;
      const auto sum_g = fold.sums.slice(0, 0, C), sum_gz = fold.sums.slice(0, C, 2 * C);
      const auto invstd_d = invstd.to(at::kDouble);
      if (dz.defined() && z.numel() > 0) {
        const auto a = gamma.defined() ? invstd_d * gamma.to(at::kDouble) : invstd_d;
        const auto coefs = at::stack({fold.mean.to(at::kDouble), sum_g / M, sum_gz * invstd_d * invstd_d / M, a})
                               .to(acc_type(z))
                               .contiguous();
        cpu_kernels().bn_backward_elemt(dtype_of(z), wide, dx.const_data_ptr(), z.const_data_ptr(), dz.data_ptr(),
                                        shape, coefs.const_data_ptr());
      }
      dgamma = sum_gz * invstd_d;
      dbeta = sum_g;
    }
    out[0] = dz;
    if (gamma.defined() && ctx->needs_input_grad(1)) out[1] = dgamma.to(gamma.scalar_type());
    if (beta.defined() && ctx->needs_input_grad(2)) out[2] = dbeta.to(beta.scalar_type());
    out[4] = act[1];
    out[5] = act[2];
    return out;
  }

  // x recomputed in one pass (rounded as the forward's batch norm and add rounded it), then the
  // activation's backward on it, with act_clamp's gradient mask.
  static std::vector<at::Tensor> recomputed_act_backward(const at::Tensor &gy, const at::Tensor &z,
                                                         const at::Tensor &identity, const at::Tensor &scale,
                                                         const at::Tensor &shift, at::ScalarType x_type, double clamp,
                                                         bool polynorm, const at::Tensor &w, const at::Tensor &b,
                                                         const at::Tensor &rs, bool lowp_out) {
    std::vector<int64_t> per_channel(z.dim(), 1);
    per_channel[1] = z.size(1);
    auto x = at::addcmul(shift.view(per_channel), z, scale.view(per_channel)).to(z.scalar_type());
    if (identity.defined()) x = x + identity;
    x = x.to(x_type);
    // act_clamp: the activation saw clamp(x); its gradient passes where x was inside (as clamp's).
    at::Tensor inside;
    if (clamp > 0) {
      inside = x.ge(-clamp).logical_and(x.le(clamp));
      x = x.clamp(-clamp, clamp);
    }
    auto act = polynorm ? polynorm_backward(gy, norm_layout(x).x, w, b, rs, lowp_out)
                        : polyrelu_backward(gy, x, w, b, lowp_out);
    if (inside.defined()) act[0] = act[0] * inside;
    return act;
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> coef_grads(const at::Tensor &sums, const at::Tensor &w, const at::Tensor &b) {
  const int64_t k = w.numel();
  return {sums.slice(0, 0, k).to(w.options(), /*non_blocking=*/false, /*copy=*/true),
          sums.slice(0, k, k + 1).to(b.options(), /*non_blocking=*/false, /*copy=*/true)};
}

at::Tensor polynorm(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, double eps, bool lowp_out) {
  return PolyNormFunction::apply(x, w, b, eps, lowp_out);
}

at::Tensor polyrelu(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, bool lowp_out) {
  return PolyReluFunction::apply(x, w, b, lowp_out);
}

at::Tensor bn_act(const at::Tensor &z, const at::Tensor &gamma, const at::Tensor &beta, const at::Tensor &identity,
                  const at::Tensor &w, const at::Tensor &b, const at::Tensor &running_mean,
                  const at::Tensor &running_var, bool train, double momentum, double bn_eps, int kind, double eps,
                  bool lowp_out, double clamp) {
  if (kind != 0 && kind != 1) throw std::invalid_argument("fused BatchNorm + activation: kind must be 0 or 1");
  // autograd::Function inputs must be defined tensors: an absent one travels as an empty tensor.
  auto present = [&](const at::Tensor &t) { return t.defined() ? t : at::empty({0}, z.options()); };
  return BnActFunction::apply(z, present(gamma), present(beta), present(identity), w, b, running_mean, running_var,
                              train, momentum, bn_eps, static_cast<int64_t>(kind), eps, lowp_out, clamp);
}

void set_cpu_isa(int isa) {
  if (isa < 0 || isa > 3)
    throw std::invalid_argument("CPU instruction set must be 0 (auto), 1 (default), 2 (avx2) or 3 (avx512)");
  if (isa > 1 && !cpu_supports(isa))
    throw std::invalid_argument(isa == 2 ? "this CPU has no AVX2/FMA" : "this CPU has no AVX-512 (F, BW, VL, DQ)");
  g_cpu_isa.store(isa);
}

int cpu_isa() { return isa_in_use(); }

}  // namespace rt_polycom
