// The project's only C++: thin wrappers over ATen APIs that tch 0.24 does not expose.
#include "shim.h"
#include "polycom.h"
#include "polycom_cuda_sim.h"
#include "guarded.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/convolution_backward_native.h>
#include <torch/library.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/CPUAllocator.h>
#include <algorithm>
#include <cmath>
#include <mutex>
#include <unordered_map>
#include <cstdlib>
#include <vector>
#include <cstring>
#include <string>

namespace {

c10::DeviceType device_of(int device_type) {
  switch (device_type) {
    case 0: return c10::DeviceType::CPU;
    case 1: return c10::DeviceType::CUDA;
    default: throw std::invalid_argument("unknown device type " + std::to_string(device_type));
  }
}

// libtorch's CPU allocator with a count of the bytes it has handed out, now and at the peak: the
// CPU's torch.cuda.max_memory_allocated (RSS also counts the allocator's cached pages and the
// libraries). Installed on request (bench); every CPU allocation then takes a mutex.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator *base) : base_(base), base_deleter_(base->raw_deleter()) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = base_->allocate(n);
    void *data = p.get();
    // Only plain allocations (context = data, the base's own deleter) can be re-wrapped.
    if (!data || !base_deleter_ || p.get_context() != data || p.get_deleter() != base_deleter_) return p;
    const auto device = p.device();
    p.release_context();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[data] = n;
      current_ += n;
      peak_ = std::max(peak_, current_);
    }
    return {data, data, &CountingCpuAllocator::release, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CountingCpuAllocator::release; }

  void copy_data(void *dest, const void *src, std::size_t count) const override { std::memcpy(dest, src, count); }

  std::pair<int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {current_, peak_};
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = current_;
  }

  static CountingCpuAllocator *instance;

 private:
  static void release(void *data) {
    auto *self = instance;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      auto it = self->sizes_.find(data);
      if (it != self->sizes_.end()) {
        self->current_ -= static_cast<int64_t>(it->second);
        self->sizes_.erase(it);
      }
    }
    self->base_deleter_(data);
  }

  c10::Allocator *base_;
  c10::DeleterFnPtr base_deleter_;
  std::mutex mutex_;
  std::unordered_map<void *, size_t> sizes_;
  int64_t current_ = 0, peak_ = 0;
};

CountingCpuAllocator *CountingCpuAllocator::instance = nullptr;

// A convolution's weight gradient in fp16 on the CPU, computed in fp32 from the same fp16 values
// and rounded once to fp16. libtorch 2.11's oneDNN has no fp16 kernel for it on x86 and runs its
// reference loops instead: a ResNet-18 fp16 training step took 25x its bf16 step (2.4 s against
// 94 ms, batch 8 at 32 px, 2 threads; ONEDNN_VERBOSE shows `ref:any,backward_weights`), which made
// every CPU fp16 run (tests, `ablate --precision fp16`) crawl. Same semantics: fp16 x fp16
// products are exact in fp32, and oneDNN's reference loops accumulate in fp32 as well, in another
// order (the same fp16 results but for rare last-bit roundings; tests/ffi.rs checks them against
// float64). The input and bias gradients go the same way: libtorch's own fp16 input-gradient
// kernel was accurate on an AVX2 CPU but, on an AVX-512 (BF16) one, off by up to 0.008 beyond fp16
// rounding (tests/ffi.rs, a 7x7 stride-2 stem convolution): fp32 arithmetic rounded once gives the
// same gradients on every CPU. Registered for
// the CPU dispatch key, which libtorch leaves to its CompositeExplicitAutograd kernel: CUDA and
// every other dtype run exactly as before.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_convolution_backward(
    const at::Tensor &grad_output, const at::Tensor &input, const at::Tensor &weight,
    at::OptionalIntArrayRef bias_sizes, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    bool transposed, at::IntArrayRef output_padding, int64_t groups, std::array<bool, 3> output_mask) {
  auto native = [&](const at::Tensor &g, const at::Tensor &x, const at::Tensor &w, std::array<bool, 3> mask) {
    return at::native::convolution_backward(g, x, w, bias_sizes, stride, padding, dilation, transposed,
                                            output_padding, groups, mask);
  };
  if (input.scalar_type() != at::kHalf || weight.scalar_type() != at::kHalf) {
    return native(grad_output, input, weight, output_mask);
  }
  auto [grad_input, grad_weight, grad_bias] =
      native(grad_output.to(at::kFloat), input.to(at::kFloat), weight.to(at::kFloat), output_mask);
  auto half = [](const at::Tensor &t) { return t.defined() ? t.to(at::kHalf) : t; };
  return {half(grad_input), half(grad_weight), half(grad_bias)};
}

TORCH_LIBRARY_IMPL(aten, CPU, m) { m.impl("convolution_backward", TORCH_FN(cpu_convolution_backward)); }

}  // namespace

using rt::dup;
using rt::guarded;
using rt::list;

extern "C" {

void rt_free(char *p) { std::free(p); }

int rt_autocast_set_enabled(int device_type, int enabled, char **err) {
  return guarded(err, [&] { at::autocast::set_autocast_enabled(device_of(device_type), enabled != 0); });
}

int rt_autocast_is_enabled(int device_type, int *out, char **err) {
  return guarded(err, [&] { *out = at::autocast::is_autocast_enabled(device_of(device_type)) ? 1 : 0; });
}

int rt_autocast_set_dtype(int device_type, int dtype, char **err) {
  return guarded(err, [&] {
    auto st = static_cast<c10::ScalarType>(dtype);
    if (st != c10::ScalarType::Half && st != c10::ScalarType::BFloat16 && st != c10::ScalarType::Float)
      throw std::invalid_argument("autocast dtype must be float16, bfloat16 or float32");
    at::autocast::set_autocast_dtype(device_of(device_type), st);
  });
}

int rt_autocast_get_dtype(int device_type, int *out, char **err) {
  return guarded(err, [&] { *out = static_cast<int>(at::autocast::get_autocast_dtype(device_of(device_type))); });
}

int rt_autocast_increment_nesting(char **err) {
  return guarded(err, [&] { at::autocast::increment_nesting(); });
}

int rt_autocast_decrement_nesting(int *out, char **err) {
  return guarded(err, [&] { *out = at::autocast::decrement_nesting(); });
}

int rt_autocast_clear_cache(char **err) {
  return guarded(err, [&] { at::autocast::clear_cache(); });
}

int rt_to_channels_last(rt_tensor t, rt_tensor *out, char **err) {
  return guarded(err, [&] {
    auto *x = static_cast<at::Tensor *>(t);
    *out = new at::Tensor(x->contiguous(x->dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  });
}

int rt_pin_memory(rt_tensor t, rt_tensor *out, char **err) {
  return guarded(err, [&] {
    // Without a device argument: `pin_memory(device)` is deprecated and warns on every call.
    *out = new at::Tensor(static_cast<at::Tensor *>(t)->pin_memory());
  });
}

int rt_is_channels_last(rt_tensor t, int *out, char **err) {
  return guarded(err, [&] {
    auto *x = static_cast<at::Tensor *>(t);
    *out = x->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
  });
}

int rt_set_allow_tf32(int allow, char **err) {
  return guarded(err, [&] {
    at::globalContext().setAllowTF32CuBLAS(allow != 0);
    at::globalContext().setAllowTF32CuDNN(allow != 0);
  });
}


int rt_seeded_randn(uint64_t seed, int n, double *out, char **err) {
  return guarded(err, [&] {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    // One draw per call, as `torch.randn(1, generator=g)` in a loop draws them (a draw of n
    // elements at once takes another path through the normal kernel).
    for (int i = 0; i < n; i++) out[i] = static_cast<double>(at::randn({1}, gen).item<float>());
  });
}

// PyTorch's fused optimizer kernels (`_fused_sgd_`, `_fused_adam_`, `_fused_adamw_`) walk each
// parameter, its gradient and its state with one flat index on the CPU, and refuse differing
// layouts on CUDA: a gradient or state tensor not laid out as its parameter (say a contiguous
// gradient of a channels_last weight) would be read in the wrong order on the CPU, silently. Such
// tensors go in as copies laid out as their parameter; `write_back` returns state copies into the
// originals after the step.
struct LaidOutAsParams {
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (original, copy) of state tensors

  // `ts`, with each tensor not laid out as its parameter replaced by such a copy; `state`: the
  // step writes it, so its copy is written back.
  void align(const std::vector<at::Tensor> &params, std::vector<at::Tensor> &ts, bool state) {
    for (size_t i = 0; i < ts.size(); i++) {
      const auto &p = params[i];
      if (!p.is_non_overlapping_and_dense())
        throw std::invalid_argument("fused optimizer step: parameter " + std::to_string(i) + " is not dense");
      if (rt::same_layout(ts[i], p)) continue;
      at::Tensor copy = at::empty_like(p, ts[i].options()).copy_(ts[i]);  // p's strides (p is dense)
      if (state) copies.emplace_back(ts[i], copy);
      ts[i] = copy;
    }
  }
  void write_back() {
    for (auto &[original, copy] : copies) original.copy_(copy);
  }
};

// Each (dense) tensor as the 1-D view of its memory, in memory order: what the fused kernels walk
// anyway once every list is laid out as the parameters (`LaidOutAsParams`). libtorch's CPU
// `_fused_sgd_` starts with `grad.contiguous()` (a result it never reads): a full copy of every
// channels_last convolution's gradient each step (~46 MB for ResNet-50's 3x3 and 7x7 weights in
// fp32), which a 1-D view makes a no-op.
static std::vector<at::Tensor> flat(const std::vector<at::Tensor> &ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto &t : ts) out.push_back(t.detach().as_strided({t.numel()}, {1}, t.storage_offset()));
  return out;
}

int rt_foreach_sgd(rt_tensor *params, rt_tensor *grads, rt_tensor *bufs, int n, double lr, double momentum,
                   double weight_decay, int nesterov, int first_step, double trust_coeff, double trust_eps,
                   int trust_clip, int always_adapt, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), g = list(grads, n), b = list(bufs, n);
    const bool lars = trust_coeff > 0 && (weight_decay != 0 || always_adapt);
    if (!lars && momentum != 0) {
      // torch.optim.SGD(fused=True)'s kernel (CPU and CUDA): one pass that reads p, g and b and
      // writes p and b, where the foreach ops below make eleven passes over ResNet-50's 25.6 M
      // parameters (34 ms of a CPU step against 13; BENCHMARKS.md). The same arithmetic in the
      // same order: d = g + wd p; b = d (first step) or m b + d; p -= lr (n ? d + m b : b). It
      // leaves g as it was, where the foreach ops add the decay to it.
      LaidOutAsParams layout;
      layout.align(p, g, false);
      layout.align(p, b, true);
      at::_fused_sgd_(flat(p), flat(g), flat(b), weight_decay, momentum, lr, /*dampening=*/0.0, nesterov != 0, /*maximize=*/false,
                      first_step != 0);
      layout.write_back();
      return;
    }
    std::vector<at::Tensor> w_norm, g_norm;
    if (lars) {
      // Both norms before the decay is added, as timm's Lars takes them.
      w_norm = at::_foreach_norm(p, 2);
      g_norm = at::_foreach_norm(g, 2);
    }
    if (weight_decay != 0) at::_foreach_add_(g, p, weight_decay);
    if (lars) {
      // timm's _lars_trust_ratio, term by term in its order (the same float results).
      std::vector<at::Tensor> ratio;
      ratio.reserve(n);
      for (int i = 0; i < n; i++) {
        const auto &w = w_norm[i], &gn = g_norm[i];
        auto r = trust_coeff * w / (gn + w * weight_decay + trust_eps);
        r = at::where(w > 0, at::where(gn > 0, r, 1.0), 1.0);
        ratio.push_back(trust_clip ? at::clamp_max(r / lr, 1.0) : r);
      }
      at::_foreach_mul_(g, ratio);
    }
    if (momentum != 0) {
      if (first_step) {
        for (int i = 0; i < n; i++) b[i].copy_(g[i]);
      } else {
        at::_foreach_mul_(b, momentum);
        at::_foreach_add_(b, g, 1.0);
      }
      if (nesterov) {
        at::_foreach_add_(g, b, momentum);
        at::_foreach_add_(p, g, -lr);
      } else {
        at::_foreach_add_(p, b, -lr);
      }
    } else {
      at::_foreach_add_(p, g, -lr);
    }
  });
}

int rt_grads_set_none(rt_tensor *params, int n, char **err) {
  return guarded(err, [&] {
    for (int i = 0; i < n; i++) static_cast<at::Tensor *>(params[i])->mutable_grad() = at::Tensor();
  });
}

int rt_backward_with_grad(rt_tensor output, rt_tensor grad, char **err) {
  return guarded(err, [&] {
    torch::autograd::backward({*static_cast<at::Tensor *>(output)}, {*static_cast<at::Tensor *>(grad)});
  });
}

int rt_foreach_unscale(rt_tensor *grads, int n, rt_tensor found_inf, rt_tensor inv_scale, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    auto g = list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(g, *static_cast<at::Tensor *>(found_inf),
                                                   *static_cast<at::Tensor *>(inv_scale));
  });
}

// `at::_foreach_norm(ts, 2)` on the CPU, the same values bit for bit, on every thread. libtorch's
// CPU `_foreach_norm` takes one `linalg_vector_norm` per tensor, and the norm of a whole
// contiguous fp32 tensor reduces it on one thread (its vectorised path parallelises over outputs,
// here one): ResNet-50's 161 gradient norms ran serially, ~1% of a CPU training step with the
// other thread waiting. Here the same per-tensor norms run side by side, the tensors dealt to the
// threads largest first onto the least loaded (each norm is one call, so the result cannot depend
// on who computes it).
static std::vector<at::Tensor> cpu_norms(const std::vector<at::Tensor> &ts) {
  const int64_t bins = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ts.size()));
  std::vector<size_t> order(ts.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ts[a].numel() > ts[b].numel(); });
  std::vector<std::vector<size_t>> dealt(bins);
  std::vector<int64_t> load(bins, 0);
  for (size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    dealt[least].push_back(i);
    load[least] += ts[i].numel();
  }
  std::vector<at::Tensor> norms(ts.size());
  at::parallel_for(0, bins, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++)
      for (size_t i : dealt[b]) norms[i] = at::linalg_vector_norm(ts[i], 2);
  });
  return norms;
}

int rt_foreach_clip_grad_norm(rt_tensor *grads, int n, double max_norm, rt_tensor *total_norm, char **err) {
  return guarded(err, [&] {
    at::NoGradGuard no_grad;
    at::Tensor total;
    if (n == 0) {
      total = at::zeros({}, at::kFloat);
    } else {
      auto g = list(grads, n);
      auto norms = g[0].is_cpu() ? cpu_norms(g) : at::_foreach_norm(g, 2);
      total = at::linalg_vector_norm(at::stack(norms), 2).to(at::kFloat);
      if (max_norm > 0 && std::isfinite(max_norm)) {
        auto coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
        at::_foreach_mul_(g, coef);
      }
    }
    *total_norm = new at::Tensor(total);
  });
}

int rt_fused_adam(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                  rt_tensor step, double lr, double beta1, double beta2, double weight_decay, double eps,
                  int decoupled, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n);
    std::vector<at::Tensor> steps(n, *static_cast<at::Tensor *>(step));
    std::vector<at::Tensor> no_max;  // amsgrad = false
    LaidOutAsParams layout;
    layout.align(p, g, false);
    layout.align(p, m, true);
    layout.align(p, v, true);
    if (decoupled) {
      at::_fused_adamw_(flat(p), flat(g), flat(m), flat(v), no_max, steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                        /*maximize=*/false, /*grad_scale=*/c10::nullopt, /*found_inf=*/c10::nullopt);
    } else {
      at::_fused_adam_(flat(p), flat(g), flat(m), flat(v), no_max, steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                       /*maximize=*/false, /*grad_scale=*/c10::nullopt, /*found_inf=*/c10::nullopt);
    }
    layout.write_back();
  });
}

int rt_foreach_rmsprop_tf(rt_tensor *params, rt_tensor *grads, rt_tensor *square_avgs, rt_tensor *momentum_bufs,
                          int n, double lr, double alpha, double eps, double weight_decay, double momentum,
                          char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), g = list(grads, n), sq = list(square_avgs, n);
    // timm's _multi_tensor_rmsprop_tf (lr_in_momentum, not centered), operation for operation.
    if (weight_decay != 0) g = at::_foreach_add(g, p, weight_decay);
    auto grad_sq = at::_foreach_mul(g, g);
    at::_foreach_sub_(grad_sq, sq);
    at::_foreach_add_(sq, grad_sq, 1.0 - alpha);  // TensorFlow's order of ops
    auto avg = at::_foreach_add(sq, eps);
    at::_foreach_sqrt_(avg);  // eps inside the square root
    if (momentum > 0) {
      auto buf = list(momentum_bufs, n);
      at::_foreach_mul_(buf, momentum);
      at::_foreach_addcdiv_(buf, g, avg, lr);  // TensorFlow accumulates lr in the buffer
      at::_foreach_sub_(p, buf);
    } else {
      at::_foreach_addcdiv_(p, g, avg, -lr);
    }
  });
}

// timm's caution (Liang et al. 2024, "Cautious Optimizers"): the update's elements whose sign
// disagrees with the gradient's are zeroed and the rest scaled by 1 / (share kept, at least 1e-3),
// per tensor; returns the masks to multiply the update by.
static std::vector<at::Tensor> caution_masks(at::TensorList update, at::TensorList g) {
  auto masks = at::_foreach_mul(update, g);
  std::vector<at::Tensor> scale;
  scale.reserve(masks.size());
  for (size_t i = 0; i < masks.size(); i++) {
    masks[i] = masks[i].gt(0).to(g[i].scalar_type());
    scale.push_back(masks[i].mean());
  }
  at::_foreach_maximum_(scale, 1e-3);
  at::_foreach_div_(masks, scale);
  return masks;
}

int rt_foreach_lion(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, int n, double lr, double beta1,
                    double beta2, double weight_decay, int caution, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n);
    // timm's _multi_tensor_lion, operation for operation (it multiplies by 1 - lr wd even at wd 0).
    at::_foreach_mul_(p, 1.0 - lr * weight_decay);
    auto update = at::_foreach_lerp(m, g, 1.0 - beta1);
    for (auto &u : update) u.sign_();
    if (caution) at::_foreach_mul_(update, caution_masks(update, g));
    at::_foreach_add_(p, update, -lr);
    at::_foreach_lerp_(m, g, 1.0 - beta2);
  });
}

int rt_foreach_adamw_timm(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          double bias_correction1, double bias_correction2, int nesterov, int caution, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n);
    // timm's _multi_tensor_adamw (AdamWLegacy) and _multi_tensor_nadamw (NAdamW, mlcommons'), not
    // capturable, operation for operation: they differ only in the numerator, NAdamW's a Nesterov
    // look-ahead lerp(m, g, 1 - beta1) computed into a new list (m itself is kept).
    at::_foreach_mul_(p, 1.0 - lr * weight_decay);
    at::_foreach_lerp_(m, g, 1.0 - beta1);
    at::_foreach_mul_(v, beta2);
    at::_foreach_addcmul_(v, g, g, 1.0 - beta2);
    const std::vector<at::Scalar> step_size(n, at::Scalar(lr / bias_correction1 * -1.0));
    const std::vector<at::Scalar> bc2_sqrt(n, at::Scalar(std::pow(bias_correction2, 0.5)));
    auto numerator = nesterov ? at::_foreach_lerp(m, g, 1.0 - beta1) : m;
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, bc2_sqrt);
    at::_foreach_add_(denom, eps);
    if (caution) numerator = at::_foreach_mul(numerator, caution_masks(numerator, g));
    at::_foreach_addcdiv_(p, numerator, denom, step_size);
  });
}

int rt_foreach_adopt(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                     double lr, double beta1, double beta2, double eps, double weight_decay, int decoupled,
                     int64_t step, double clip_exp, int caution, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n);
    std::vector<at::Tensor> g = list(grads, n);
    // timm's _multi_tensor_adopt (Taniguchi et al. 2024), not capturable, operation for operation:
    // step 1 only initialises v = g^2; later steps normalise g by the previous v, clip it at
    // (step - 1)^clip_exp, take the momentum of that, and update v last.
    if (weight_decay != 0 && !decoupled) g = at::_foreach_add(g, p, weight_decay);
    if (step == 1) {
      at::_foreach_addcmul_(v, g, g);
      return;
    }
    if (weight_decay != 0 && decoupled) at::_foreach_add_(p, p, -lr * weight_decay);
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_maximum_(denom, eps);
    auto normed = at::_foreach_div(g, denom);
    if (clip_exp >= 0) {
      const double clip = std::pow(static_cast<double>(step - 1), clip_exp);
      at::_foreach_maximum_(normed, -clip);
      at::_foreach_minimum_(normed, clip);
    }
    at::_foreach_lerp_(m, normed, 1.0 - beta1);
    auto update = m;
    if (caution) update = at::_foreach_mul(update, caution_masks(update, g));
    at::_foreach_add_(p, update, -lr);
    at::_foreach_mul_(v, beta2);
    at::_foreach_addcmul_(v, g, g, 1.0 - beta2);
  });
}

int rt_foreach_lamb(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                    rt_tensor clip_divisor, double lr, double beta1, double beta2, double eps, double weight_decay,
                    double bias_correction1, double bias_correction2, int trust_clip, int always_adapt,
                    double decoupled_decay, int caution, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n);
    if (clip_divisor) g = at::_foreach_div(g, *static_cast<at::Tensor *>(clip_divisor));
    at::_foreach_lerp_(m, g, 1.0 - beta1);
    at::_foreach_mul_(v, beta2);
    at::_foreach_addcmul_(v, g, g, 1.0 - beta2);
    // As timm's multi-tensor Lamb: the bias corrections folded into scalars (two passes fewer),
    // m_hat / (sqrt(v_hat) + eps) = scale * m / (sqrt(v) + eps sqrt(bc2)), scale = sqrt(bc2) / bc1.
    const double bc2_sqrt = std::sqrt(bias_correction2), scale = bc2_sqrt / bias_correction1;
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_add_(denom, eps * bc2_sqrt);
    auto update = at::_foreach_div(m, denom);
    if (caution) at::_foreach_mul_(update, caution_masks(update, g));
    // timm's decoupled_decay (`lambw`): p -= lr wd p before the trust ratio, instead of wd p in u.
    if (decoupled_decay != 0) {
      at::_foreach_add_(p, p, -decoupled_decay);
    } else if (weight_decay != 0) {
      at::_foreach_add_(update, p, weight_decay / scale);
    }
    if (weight_decay != 0 || always_adapt) {
      // Per parameter: -lr * scale * trust ratio, where the ratio is |p| / |scale * update| (1 where
      // either norm is 0; at most 1 with trust_clip); applied with one addcmul.
      auto w_norm = at::_foreach_norm(p, 2), u_norm = at::_foreach_norm(update, 2);
      std::vector<at::Tensor> step_size;
      step_size.reserve(n);
      for (int i = 0; i < n; i++) {
        auto u = u_norm[i] * scale;
        auto one = at::ones_like(w_norm[i]);
        auto r = at::where(w_norm[i] > 0, at::where(u > 0, w_norm[i] / u, one), one);
        step_size.push_back((trust_clip ? at::clamp_max(r, 1.0) : r) * (-lr * scale));
      }
      at::_foreach_addcmul_(p, update, step_size);
    } else {
      at::_foreach_add_(p, update, -lr * scale);
    }
  });
}

// The optimizers reached through rt_foreach_optimizer_step, one function each, operation for
// operation as their reference's multi-tensor (foreach) path; L[k] is the k-th tensor list, h the
// scalars in the order shim.h gives.
using Lists = std::vector<std::vector<at::Tensor>>;

// timm's _multi_tensor_adan. L: p, g, m (exp_avg), d (exp_avg_diff), n (exp_avg_sq), neg_pre_grad.
static void adan_step(Lists &L, const rt_adan_hyper &h) {
  auto &p = L[0], &g = L[1], &m = L[2], &d = L[3], &n = L[4], &npg = L[5];
  const double lr = h.lr, beta1 = h.beta1, beta2 = h.beta2, beta3 = h.beta3, eps = h.eps, wd = h.weight_decay;
  const double bc1 = h.bc1, bc2 = h.bc2, bc3_sqrt = h.bc3_sqrt;
  const bool no_prox = h.no_prox != 0, caution = h.caution != 0, first_step = h.first_step != 0;
  // timm sets neg_pre_grad = -grad at step 1, so the first difference is zero.
  if (first_step) {
    for (size_t i = 0; i < npg.size(); i++) npg[i].copy_(g[i].neg());
  }
  at::_foreach_add_(npg, g);
  at::_foreach_lerp_(m, g, 1.0 - beta1);
  at::_foreach_mul_(d, beta2);
  at::_foreach_add_(d, npg, 1.0 - beta2);
  at::_foreach_mul_(npg, beta2);
  at::_foreach_add_(npg, g);
  at::_foreach_mul_(n, beta3);
  at::_foreach_addcmul_(n, npg, npg, 1.0 - beta3);
  auto denom = at::_foreach_sqrt(n);
  at::_foreach_div_(denom, bc3_sqrt);
  at::_foreach_add_(denom, eps);
  const double step_size_diff = lr * beta2 / bc2, step_size = lr / bc1;
  std::vector<at::Tensor> update = m;
  if (caution) update = at::_foreach_mul(m, caution_masks(m, g));
  if (no_prox) {
    at::_foreach_mul_(p, 1.0 - lr * wd);
    at::_foreach_addcdiv_(p, update, denom, -step_size);
    at::_foreach_addcdiv_(p, d, denom, -step_size_diff);
  } else {
    at::_foreach_addcdiv_(p, update, denom, -step_size);
    at::_foreach_addcdiv_(p, d, denom, -step_size_diff);
    at::_foreach_div_(p, 1.0 + lr * wd);
  }
  at::_foreach_zero_(npg);
  at::_foreach_add_(npg, g, -1.0);
}

// timm's _multi_tensor_laprop. L: p, g, m (exp_avg), v (exp_avg_sq).
static void laprop_step(Lists &L, const rt_laprop_hyper &h) {
  auto &p = L[0], &g = L[1], &m = L[2], &v = L[3];
  const double lr = h.lr, beta1 = h.beta1, beta2 = h.beta2, eps = h.eps, decay = h.decay, step_size = h.step_size,
               bc2 = h.bc2;
  const bool caution = h.caution != 0;
  at::_foreach_mul_(v, beta2);
  at::_foreach_addcmul_(v, g, g, 1.0 - beta2);
  auto denom = at::_foreach_div(v, bc2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, eps);
  auto normed = at::_foreach_div(g, denom);
  at::_foreach_mul_(m, beta1);
  at::_foreach_add_(m, normed, lr * (1.0 - beta1));
  std::vector<at::Tensor> update = m;
  if (caution) update = at::_foreach_mul(m, caution_masks(m, g));
  at::_foreach_add_(p, update, -step_size);
  if (decay != 0) at::_foreach_add_(p, p, -decay);
}

// What torch's RAdam and NAdam share, in their order: weight decay (decoupled: p *= 1 - lr wd;
// else wd p added to the gradient), then Adam's moments. Returns the gradient the step used.
static std::vector<at::Tensor> torch_adam_moments(Lists &L, double lr, double beta1, double beta2, double wd,
                                                  bool decoupled) {
  auto &p = L[0], &m = L[2], &v = L[3];
  std::vector<at::Tensor> g = L[1];
  if (wd != 0) {
    if (decoupled) {
      at::_foreach_mul_(p, 1.0 - lr * wd);
    } else {
      g = at::_foreach_add(g, p, wd);
    }
  }
  at::_foreach_lerp_(m, g, 1.0 - beta1);
  at::_foreach_mul_(v, beta2);
  at::_foreach_addcmul_(v, g, g, 1.0 - beta2);
  return g;
}

// torch.optim's _multi_tensor_radam (not capturable). L: p, g, m, v.
static void radam_step(Lists &L, const rt_radam_hyper &h) {
  auto &p = L[0], &m = L[2], &v = L[3];
  const double eps = h.eps, unrect_step_size = h.unrect_step_size, bias_correction2 = h.bias_correction2;
  torch_adam_moments(L, h.lr, h.beta1, h.beta2, h.weight_decay, h.decoupled != 0);
  auto buffer = at::_foreach_sqrt(v);
  at::_foreach_add_(buffer, eps);
  at::_foreach_div_(buffer, bias_correction2);  // 0 (unrectified): inf, whose reciprocal is 0
  at::_foreach_reciprocal_(buffer);
  at::_foreach_add_(buffer, unrect_step_size);
  at::_foreach_addcmul_(p, m, buffer);
}

// torch.optim's _multi_tensor_nadam (not capturable). L: p, g, m, v.
static void nadam_step(Lists &L, const rt_nadam_hyper &h) {
  auto &p = L[0], &m = L[2], &v = L[3];
  const auto g = torch_adam_moments(L, h.lr, h.beta1, h.beta2, h.weight_decay, h.decoupled != 0);
  auto denom = at::_foreach_sqrt(v);
  at::_foreach_div_(denom, h.bias_correction_sqrt);
  at::_foreach_add_(denom, h.eps);
  at::_foreach_addcdiv_(p, g, denom, h.step_size_grads);
  at::_foreach_addcdiv_(p, m, denom, h.step_size_expavg);
}

// timm's _multi_tensor_adabelief (fp32 parameters). L: p, g, m (exp_avg), s (exp_avg_var).
static void adabelief_step(Lists &L, const rt_adabelief_hyper &h) {
  auto &p = L[0], &g = L[1], &m = L[2], &s = L[3];
  const double lr = h.lr, beta1 = h.beta1, beta2 = h.beta2, eps = h.eps, wd = h.weight_decay, bc1 = h.bc1,
               bc2 = h.bc2;
  const int rectify = h.rectify;
  const double step_size = h.step_size;
  // decoupled_decay = True, fixed_decay = False: timm's defaults.
  if (lr * wd != 0) at::_foreach_mul_(p, 1.0 - lr * wd);
  at::_foreach_lerp_(m, g, 1.0 - beta1);
  auto residual = at::_foreach_sub(g, m);
  at::_foreach_mul_(s, beta2);
  at::_foreach_addcmul_(s, residual, residual, 1.0 - beta2);
  at::_foreach_add_(s, eps);
  if (rectify == 0) {
    auto denom = at::_foreach_sqrt(s);
    at::_foreach_div_(denom, std::sqrt(bc2));
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(p, m, denom, -lr / bc1);
  } else if (rectify == 1) {
    auto denom = at::_foreach_sqrt(s);
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(p, m, denom, -step_size * lr);
  } else if (rectify == 2) {
    at::_foreach_add_(p, m, -step_size * lr);
  }
}

// The optimizers by name: their lists, their scalars' struct (size and field offsets) and step.
extern "C++" {
namespace {
struct Algo {
  const char *name;
  int n_lists;
  size_t hyper_size;
  std::vector<size_t> offsets;
  void (*step)(Lists &, const void *);
};

template <typename H, void (*F)(Lists &, const H &)>
void typed(Lists &L, const void *h) {
  F(L, *static_cast<const H *>(h));
}

const std::vector<Algo> &algos() {
#define OFF(T, f) offsetof(T, f)
  static const std::vector<Algo> a = {
      {"adan", 6, sizeof(rt_adan_hyper),
       {OFF(rt_adan_hyper, lr), OFF(rt_adan_hyper, beta1), OFF(rt_adan_hyper, beta2), OFF(rt_adan_hyper, beta3),
        OFF(rt_adan_hyper, eps), OFF(rt_adan_hyper, weight_decay), OFF(rt_adan_hyper, bc1), OFF(rt_adan_hyper, bc2),
        OFF(rt_adan_hyper, bc3_sqrt), OFF(rt_adan_hyper, no_prox), OFF(rt_adan_hyper, caution),
        OFF(rt_adan_hyper, first_step)},
       typed<rt_adan_hyper, adan_step>},
      {"laprop", 4, sizeof(rt_laprop_hyper),
       {OFF(rt_laprop_hyper, lr), OFF(rt_laprop_hyper, beta1), OFF(rt_laprop_hyper, beta2), OFF(rt_laprop_hyper, eps),
        OFF(rt_laprop_hyper, decay), OFF(rt_laprop_hyper, step_size), OFF(rt_laprop_hyper, bc2),
        OFF(rt_laprop_hyper, caution)},
       typed<rt_laprop_hyper, laprop_step>},
      {"radam", 4, sizeof(rt_radam_hyper),
       {OFF(rt_radam_hyper, lr), OFF(rt_radam_hyper, beta1), OFF(rt_radam_hyper, beta2), OFF(rt_radam_hyper, eps),
        OFF(rt_radam_hyper, weight_decay), OFF(rt_radam_hyper, unrect_step_size),
        OFF(rt_radam_hyper, bias_correction2), OFF(rt_radam_hyper, decoupled)},
       typed<rt_radam_hyper, radam_step>},
      {"nadam", 4, sizeof(rt_nadam_hyper),
       {OFF(rt_nadam_hyper, lr), OFF(rt_nadam_hyper, beta1), OFF(rt_nadam_hyper, beta2), OFF(rt_nadam_hyper, eps),
        OFF(rt_nadam_hyper, weight_decay), OFF(rt_nadam_hyper, bias_correction_sqrt),
        OFF(rt_nadam_hyper, step_size_grads), OFF(rt_nadam_hyper, step_size_expavg), OFF(rt_nadam_hyper, decoupled)},
       typed<rt_nadam_hyper, nadam_step>},
      {"adabelief", 4, sizeof(rt_adabelief_hyper),
       {OFF(rt_adabelief_hyper, lr), OFF(rt_adabelief_hyper, beta1), OFF(rt_adabelief_hyper, beta2),
        OFF(rt_adabelief_hyper, eps), OFF(rt_adabelief_hyper, weight_decay), OFF(rt_adabelief_hyper, bc1),
        OFF(rt_adabelief_hyper, bc2), OFF(rt_adabelief_hyper, step_size), OFF(rt_adabelief_hyper, rectify)},
       typed<rt_adabelief_hyper, adabelief_step>},
  };
#undef OFF
  return a;
}

const Algo *find_algo(const char *name) {
  for (const auto &a : algos()) {
    if (std::strcmp(a.name, name) == 0) return &a;
  }
  return nullptr;
}
}  // namespace
}  // extern "C++"

int rt_foreach_optimizer_step(const char *name, rt_tensor *lists, int n_lists, int n, const void *hyper,
                              size_t hyper_size, char **err) {
  return guarded(err, [&] {
    const Algo *a = find_algo(name);
    TORCH_CHECK(a != nullptr, "no optimizer step named ", name);
    TORCH_CHECK(n_lists == a->n_lists && hyper_size == a->hyper_size, name, ": expected ", a->n_lists,
                " lists and ", a->hyper_size, " bytes of scalars, got ", n_lists, " and ", hyper_size);
    if (n == 0) return;
    at::NoGradGuard no_grad;
    Lists L;
    for (int k = 0; k < n_lists; k++) L.push_back(list(lists + static_cast<size_t>(k) * n, n));
    a->step(L, hyper);
  });
}

int rt_optimizer_hyper_layout(const char *name, size_t *offsets, int cap) {
  const Algo *a = find_algo(name);
  if (a == nullptr) return -1;
  for (size_t i = 0; i < a->offsets.size() && static_cast<int>(i) < cap; i++) offsets[i] = a->offsets[i];
  return static_cast<int>(a->offsets.size());
}

int rt_foreach_lerp(rt_tensor *targets, rt_tensor *sources, int n, double weight, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto t = list(targets, n), s = list(sources, n);
    at::_foreach_lerp_(t, s, weight);
  });
}

int rt_foreach_copy(rt_tensor *targets, rt_tensor *sources, int n, char **err) {
  return guarded(err, [&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto t = list(targets, n), s = list(sources, n);
    at::_foreach_copy_(t, s);
  });
}

int rt_cuda_set_device(int device, char **err) {
  return guarded(err, [&] {
    // Through the device-guard interface libtorch_cuda registers when it loads: no CUDA link here.
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
        ->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
  });
}

int rt_cuda_max_memory_allocated(int device, int64_t *out, char **err) {
  return guarded(err, [&] {
    auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *out = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  });
}

int rt_polycom_apply(int kind, rt_tensor x, rt_tensor w, rt_tensor b, double eps, int lowp_out, rt_tensor *out,
                     char **err) {
  return guarded(err, [&] {
    auto &xt = *static_cast<at::Tensor *>(x);
    auto &wt = *static_cast<at::Tensor *>(w);
    auto &bt = *static_cast<at::Tensor *>(b);
    switch (kind) {
      case 0: *out = new at::Tensor(rt_polycom::polyrelu(xt, wt, bt, lowp_out != 0)); break;
      case 1: *out = new at::Tensor(rt_polycom::polynorm(xt, wt, bt, eps, lowp_out != 0)); break;
      default: throw std::invalid_argument("rt_polycom_apply: kind must be 0 (PolyReLU) or 1 (PolyNorm)");
    }
  });
}

int rt_cpu_memory_tracking(int64_t *current, int64_t *peak, int reset_peak, char **err) {
  return guarded(err, [&] {
    // Installed once, for the rest of the process (allocations made before keep their deleter).
    static std::once_flag installed;
    std::call_once(installed, [] {
      CountingCpuAllocator::instance = new CountingCpuAllocator(c10::GetCPUAllocator());
      c10::SetCPUAllocator(CountingCpuAllocator::instance, /*priority=*/100);
    });
    auto [now, top] = CountingCpuAllocator::instance->stats();
    *current = now;
    *peak = top;
    if (reset_peak) CountingCpuAllocator::instance->reset_peak();
  });
}

int rt_bn_act_apply(int kind, rt_tensor z, rt_tensor gamma, rt_tensor beta, rt_tensor identity, rt_tensor w,
                    rt_tensor b, rt_tensor running_mean, rt_tensor running_var, int train, double momentum,
                    double bn_eps, double eps, int lowp_out, double clamp, rt_tensor *out, char **err) {
  return guarded(err, [&] {
    auto opt = [](rt_tensor t) { return t ? *static_cast<at::Tensor *>(t) : at::Tensor(); };
    *out = new at::Tensor(rt_polycom::bn_act(opt(z), opt(gamma), opt(beta), opt(identity), opt(w), opt(b),
                                             opt(running_mean), opt(running_var), train != 0, momentum, bn_eps, kind,
                                             eps, lowp_out != 0, clamp));
  });
}

int rt_polycom_set_cpu_isa(int isa, char **err) {
  return guarded(err, [&] { rt_polycom::set_cpu_isa(isa); });
}

int rt_polycom_cpu_isa(int *out, char **err) {
  return guarded(err, [&] { *out = rt_polycom::cpu_isa(); });
}

int rt_polycom_set_cuda_simulation(int on, char **err) {
  return guarded(err, [&] { rt_polycom::cuda::set_simulated(on != 0); });
}

int rt_polycom_cuda_bn_folds(int64_t *out, char **err) {
  return guarded(err, [&] { *out = rt_polycom::cuda::bn_fold_count(); });
}

int rt_simt_selftest(int mode, unsigned blocks, unsigned threads, double *out, char **err) {
  return guarded(err, [&] { rt_polycom::cuda::sim::selftest(mode, blocks, threads, out); });
}

int rt_simt_half_conversions(const float *in, unsigned short *bits, float *back, int64_t n, char **err) {
  return guarded(err, [&] { rt_polycom::cuda::sim::half_conversions(in, bits, back, n); });
}

int rt_polycom_cuda_kernel_names(char **out, char **err) {
  return guarded(err, [&] {
    std::string names;
    for (const auto &name : rt_polycom::cuda::sim::kernel_names()) names += name + "\n";
    *out = dup(names);
  });
}

int rt_polycom_cuda_unavailable(int device, char **reason, char **err) {
  return guarded(err, [&] {
    auto why = rt_polycom::cuda::unavailable_reason(device);
    *reason = why.empty() ? nullptr : dup(why);
  });
}

int rt_cuda_describe_device(int device, char **out, char **err) {
  return guarded(err, [&] { *out = dup(rt_polycom::cuda::describe_device(device)); });
}

int rt_polycom_cuda_ptx(const char *arch, const char *nvrtc_path, const char *tuning, char **ptx, char **log,
                       char **err) {
  return guarded(err, [&] {
    std::string image;
    auto why = rt_polycom::cuda::compile_check(arch, nvrtc_path ? nvrtc_path : "", &image, tuning ? tuning : "");
    *log = why.empty() ? nullptr : dup(why);
    *ptx = why.empty() ? dup(image) : nullptr;
  });
}

int rt_polycom_cuda_ptxas_report(const char *arch, const char *nvrtc_path, const char *tuning, char **report,
                                 char **log, char **err) {
  return guarded(err, [&] {
    std::string text;
    auto why =
        rt_polycom::cuda::compile_check(arch, nvrtc_path ? nvrtc_path : "", nullptr, tuning ? tuning : "", &text);
    *log = why.empty() ? nullptr : dup(why);
    *report = why.empty() ? dup(text) : nullptr;
  });
}

int rt_polycom_cuda_check_tuning(const char *spec, char **err) {
  return guarded(err, [&] { rt_polycom::cuda::check_tuning(spec ? spec : ""); });
}

int rt_polycom_cuda_set_cache_dir(const char *dir, char **err) {
  return guarded(err, [&] { rt_polycom::cuda::set_cache_dir(dir ? dir : ""); });
}

int rt_polycom_cuda_cached_compile_check(const char *arch, const char *nvrtc_path, const char *dir,
                                         const char *tuning, int *from_cache, size_t *size, char **log, char **err) {
  return guarded(err, [&] {
    bool cached = false;
    auto why = rt_polycom::cuda::cached_compile_check(arch, nvrtc_path ? nvrtc_path : "", dir ? dir : "",
                                                      tuning ? tuning : "", &cached, size);
    *from_cache = cached ? 1 : 0;
    *log = why.empty() ? nullptr : dup(why);
  });
}

int rt_polycom_cuda_compile_check(const char *arch, const char *nvrtc_path, char **log, char **err) {
  return guarded(err, [&] {
    auto why = rt_polycom::cuda::compile_check(arch, nvrtc_path ? nvrtc_path : "");
    *log = why.empty() ? nullptr : dup(why);
  });
}

}  // extern "C"
