// C interface of the shim: what tch does not expose. Every function catches C++ exceptions and
// returns 0 on success or -1 with a malloc'ed message in *err (freed by the caller via rt_free).
#pragma once
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void *rt_tensor;  // a torch::Tensor*, as tch's C_tensor

void rt_free(char *p);

// device_type: 0 = CPU, 1 = CUDA. dtype: c10::ScalarType code (5 = Half, 15 = BFloat16).
int rt_autocast_set_enabled(int device_type, int enabled, char **err);
int rt_autocast_is_enabled(int device_type, int *out, char **err);
int rt_autocast_set_dtype(int device_type, int dtype, char **err);
int rt_autocast_get_dtype(int device_type, int *out, char **err);
int rt_autocast_increment_nesting(char **err);
int rt_autocast_decrement_nesting(int *out, char **err);
int rt_autocast_clear_cache(char **err);

// Returns a new tensor (caller owns) in the channels_last memory format / contiguous format.
int rt_to_channels_last(rt_tensor t, rt_tensor *out, char **err);
int rt_is_channels_last(rt_tensor t, int *out, char **err);
// A page-locked copy of a CPU tensor, for asynchronous copies to the current accelerator.
int rt_pin_memory(rt_tensor t, rt_tensor *out, char **err);

// TF32 on CUDA matmuls and cuDNN convolutions.
int rt_set_allow_tf32(int allow, char **err);

// n successive torch.randn(1, generator=g) values (float32, widened) from a CPU generator seeded
// with `seed` (torch.Generator().manual_seed(seed)): timm's learning-rate noise.
int rt_seeded_randn(uint64_t seed, int n, double *out, char **err);

// Multi-tensor (foreach) kernels over lists of n tensors, as torch.optim and GradScaler use them.
// SGD (torch.optim.SGD's _multi_tensor_sgd, dampening 0): grads += wd * params;
// bufs = momentum * bufs + grads (bufs = grads on the first step); step = nesterov ?
// grads + momentum * bufs : bufs; params -= lr * step. grads are modified in place.
// LARS (timm.optim.Lars) when trust_coeff > 0: where wd != 0 or always_adapt, the decayed gradient
// is first scaled per tensor by trust_coeff |p| / (|g| + wd |p| + trust_eps) (1 where either norm
// is 0; min(ratio / lr, 1) with trust_clip, LARC), the norms taken before the decay.
int rt_foreach_sgd(rt_tensor *params, rt_tensor *grads, rt_tensor *bufs, int n, double lr, double momentum,
                   double weight_decay, int nesterov, int first_step, double trust_coeff, double trust_eps,
                   int trust_clip, int always_adapt, char **err);
// Drops the .grad of each tensor (optimizer.zero_grad(set_to_none=True)): no memset, and the
// next backward writes fresh gradients.
int rt_grads_set_none(rt_tensor *params, int n, char **err);
// Backward from `output` with its gradient `grad` (torch.autograd.backward(output, grad)).
int rt_backward_with_grad(rt_tensor output, rt_tensor grad, char **err);
// found_inf += any non-finite in grads; grads *= inv_scale (torch._amp_foreach_non_finite_check_and_unscale_).
int rt_foreach_unscale(rt_tensor *grads, int n, rt_tensor found_inf, rt_tensor inv_scale, char **err);
// Total L2 norm of the grads as a new 0-d float tensor; when max_norm > 0 and finite, grads are
// scaled by min(1, max_norm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_).
int rt_foreach_clip_grad_norm(rt_tensor *grads, int n, double max_norm, rt_tensor *total_norm, char **err);

// AdamW (torch.optim.AdamW(fused=True)): at::_fused_adamw_ over one parameter group, or with
// decoupled = 0 Adam (torch.optim.Adam(fused=True): weight decay added to the gradient,
// at::_fused_adam_); `step` is one float tensor on the parameters' device, already incremented for
// this step (read, not written).
int rt_fused_adam(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                  rt_tensor step, double lr, double beta1, double beta2, double weight_decay, double eps,
                  int decoupled, char **err);
// RMSpropTF (timm.optim.RMSpropTF, one parameter group, lr_in_momentum, not centered): g += wd p;
// sq += (g^2 - sq)(1 - alpha); avg = sqrt(sq + eps); with momentum: buf = momentum buf + lr g / avg,
// p -= buf (momentum_bufs unused without momentum); else p -= lr g / avg.
int rt_foreach_rmsprop_tf(rt_tensor *params, rt_tensor *grads, rt_tensor *square_avgs, rt_tensor *momentum_bufs,
                          int n, double lr, double alpha, double eps, double weight_decay, double momentum,
                          char **err);
// Lion (timm.optim.Lion, one parameter group): p *= 1 - lr wd; p -= lr sign(lerp(m, g, 1 - beta1));
// m = lerp(m, g, 1 - beta2). With caution (timm's `clion`): the sign update masked where it
// disagrees with g, the rest scaled by 1 / max(kept share, 1e-3), per tensor.
int rt_foreach_lion(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, int n, double lr, double beta1,
                    double beta2, double weight_decay, int caution, char **err);
// timm's AdamW family (AdamWLegacy, NAdamW; one parameter group): p *= 1 - lr wd;
// m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2; u = m, or with `nesterov` (NAdamW)
// lerp(m, g, 1 - beta1); with `caution` u masked where u g <= 0 and scaled by 1 / max(kept share,
// 1e-3); p -= lr / bc1 * u / (sqrt(v) / sqrt(bc2) + eps); bc1, bc2: 1 - beta^t.
int rt_foreach_adamw_timm(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          double bias_correction1, double bias_correction2, int nesterov, int caution, char **err);
// timm's Adopt (one parameter group; `step` from 1): g += wd p unless `decoupled`; step 1: v = g^2
// only. Later: p *= 1 - lr wd if decoupled; n = g / max(sqrt(v), eps), clipped at
// +-(step - 1)^clip_exp (clip_exp < 0: no clip); m = lerp(m, n, 1 - beta1); p -= lr m (masked as
// above with `caution`); v = beta2 v + (1 - beta2) g^2.
int rt_foreach_adopt(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                     double lr, double beta1, double beta2, double eps, double weight_decay, int decoupled,
                     int64_t step, double clip_exp, int caution, char **err);
// LAMB (timm.optim.Lamb, one parameter group): g = grad / clip_divisor (when not null; grads are not
// modified); m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
// u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd p; with wd != 0 or always_adapt,
// u *= trust ratio |p| / |u| (1 where either norm is 0; at most 1 with trust_clip); p -= lr u.
// Computed as timm's multi-tensor version does, with the bias corrections folded into scalars.
int rt_foreach_lamb(rt_tensor *params, rt_tensor *grads, rt_tensor *exp_avgs, rt_tensor *exp_avg_sqs, int n,
                    rt_tensor clip_divisor, double lr, double beta1, double beta2, double eps, double weight_decay,
                    double bias_correction1, double bias_correction2, int trust_clip, int always_adapt,
                    double decoupled_decay, int caution, char **err);
// With decoupled_decay != 0 (timm's `lambw`: lr wd, or lr^2 / peak wd corrected), p -= decoupled_decay p
// before the trust ratio and u has no wd p; with caution (timm's `clamb`), u is masked as above.

// The scalars of the optimizers reached through rt_foreach_optimizer_step, one struct per
// optimizer (Rust: ffi::optim's #[repr(C)] twins, checked field by field against
// rt_optimizer_hyper_layout by a test). Flags are int32_t: 0 or 1.
// timm's Adan (foreach); bc3_sqrt = sqrt(1 - beta3^t).
typedef struct {
  double lr, beta1, beta2, beta3, eps, weight_decay, bc1, bc2, bc3_sqrt;
  int32_t no_prox, caution, first_step;
} rt_adan_hyper;
// timm's LaProp; decay: p -= decay p (lr wd, or lr^2 / peak wd corrected).
typedef struct {
  double lr, beta1, beta2, eps, decay, step_size, bc2;
  int32_t caution;
} rt_laprop_hyper;
// torch.optim.RAdam; torch's per-step scalars (0 when the step is not rectified).
typedef struct {
  double lr, beta1, beta2, eps, weight_decay, unrect_step_size, bias_correction2;
  int32_t decoupled;
} rt_radam_hyper;
// torch.optim.NAdam; torch's per-step scalars (from the step and mu_product).
typedef struct {
  double lr, beta1, beta2, eps, weight_decay, bias_correction_sqrt, step_size_grads, step_size_expavg;
  int32_t decoupled;
} rt_nadam_hyper;
// timm's AdaBelief (decoupled decay); rectify: 0 no, 1 adaptive, 2 SGD, 3 no update.
typedef struct {
  double lr, beta1, beta2, eps, weight_decay, bc1, bc2, step_size;
  int32_t rectify;
} rt_adabelief_hyper;

// One step of the optimizer `name` (adan, laprop, radam, nadam, adabelief) over one parameter
// group: `lists` holds n_lists lists of n tensors back to back, `hyper` points to its rt_<name>_hyper
// of hyper_size bytes (both checked against the name's).
//   adan: p, g, exp_avg, exp_avg_diff, exp_avg_sq, neg_pre_grad.
//   laprop, radam, nadam: p, g, exp_avg, exp_avg_sq. adabelief: p, g, exp_avg, exp_avg_var.
int rt_foreach_optimizer_step(const char *name, rt_tensor *lists, int n_lists, int n, const void *hyper,
                              size_t hyper_size, char **err);
// The byte offsets of the fields of `name`'s scalars struct, in declaration order, into `offsets`
// (at most `cap`); returns how many fields it has, -1 for an unknown name.
int rt_optimizer_hyper_layout(const char *name, size_t *offsets, int cap);

// Weight averaging (timm's ModelEmaV3): targets = lerp(targets, sources, weight) in place.
int rt_foreach_lerp(rt_tensor *targets, rt_tensor *sources, int n, double weight, char **err);
// targets <- sources in place (each pair of the same shape).
int rt_foreach_copy(rt_tensor *targets, rt_tensor *sources, int n, char **err);

// Peak bytes allocated by PyTorch's caching allocator on CUDA device `device` since the start
// (torch.cuda.max_memory_allocated).
int rt_cuda_max_memory_allocated(int device, int64_t *out, char **err);
// Makes `device` the current CUDA device (torch.cuda.set_device).
int rt_cuda_set_device(int device, char **err);

// Bytes held in tensors from libtorch's CPU allocator, now and at the peak (the CPU's
// max_memory_allocated); the first call installs the counting allocator (later allocations are
// counted). reset_peak != 0: the peak restarts from the current count after reading.
int rt_cpu_memory_tracking(int64_t *current, int64_t *peak, int reset_peak, char **err);

// Fused PolyCom activations (polycom.cpp), differentiable: kind 0 = PolyReLU, 1 = PolyNorm over
// dim 1. x: fp32/fp64/bf16/fp16, any layout; w: k in 1..8 entries, b: one; the output is fp32
// (fp64 for fp64 input), or x's type for a bf16/fp16 x with lowp_out != 0. Runs on x's device
// (CPU kernels, or CUDA kernels compiled with NVRTC).
int rt_polycom_apply(int kind, rt_tensor x, rt_tensor w, rt_tensor b, double eps, int lowp_out, rt_tensor *out,
                     char **err);
// act(batch_norm(z) [+ identity]) as one differentiable node (polycom.cpp, BnActFunction): kind and
// the activation's arguments as rt_polycom_apply; gamma, beta, identity may be NULL; batch norm
// in training (train != 0, updating the running statistics with `momentum`) or eval mode; clamp > 0
// clamps the activation's input to [-clamp, clamp].
int rt_bn_act_apply(int kind, rt_tensor z, rt_tensor gamma, rt_tensor beta, rt_tensor identity, rt_tensor w,
                    rt_tensor b, rt_tensor running_mean, rt_tensor running_var, int train, double momentum,
                    double bn_eps, double eps, int lowp_out, double clamp, rt_tensor *out, char **err);
// CPU kernels: 0 = the best this CPU runs, 1 = portable, 2 = AVX2+FMA; *out: the one in use.
int rt_polycom_set_cpu_isa(int isa, char **err);
int rt_polycom_cpu_isa(int *out, char **err);
// on != 0: the fused operators run their CUDA kernels on CPU tensors, under the SIMT emulator.
int rt_polycom_set_cuda_simulation(int on, char **err);
// How many times batch norm's backward ran folded into the CUDA kernels (polycom.h bn_fold_count).
int rt_polycom_cuda_bn_folds(int64_t *out, char **err);
// The SIMT emulator's self-check and the simulated kernels' fp16 conversions (polycom_cuda_sim.h).
int rt_simt_selftest(int mode, unsigned blocks, unsigned threads, double *out, char **err);
int rt_simt_half_conversions(const float *in, unsigned short *bits, float *back, int64_t n, char **err);
// The names of polycom.cu's kernels, one per line (sorted; malloc'ed).
int rt_polycom_cuda_kernel_names(char **out, char **err);
// *reason = NULL when the CUDA kernels run on CUDA device `device`, else a malloc'ed explanation.
int rt_polycom_cuda_unavailable(int device, char **reason, char **err);
int rt_cuda_describe_device(int device, char **out, char **err);
// Compiles the CUDA kernels for `arch` (e.g. "compute_90", "sm_90") with the NVRTC at `nvrtc_path`
// (NULL or "": the usual places); *log = NULL on success, else NVRTC's log.
int rt_polycom_cuda_compile_check(const char *arch, const char *nvrtc_path, char **log, char **err);
// As above for a virtual architecture ("compute_90"), under `tuning` (RESNET_TRAIN_CUDA_TUNING's
// syntax; NULL or "": none): *ptx = the PTX (malloc'ed) on success.
int rt_polycom_cuda_ptx(const char *arch, const char *nvrtc_path, const char *tuning, char **ptx, char **log,
                       char **err);
// As rt_polycom_cuda_ptx for a real architecture ("sm_90"): *report = ptxas's per-kernel report
// (registers, spills; malloc'ed) on success.
int rt_polycom_cuda_ptxas_report(const char *arch, const char *nvrtc_path, const char *tuning, char **report,
                                 char **log, char **err);
// Fails with the reason when `spec` is not a valid RESNET_TRAIN_CUDA_TUNING value.
int rt_polycom_cuda_check_tuning(const char *spec, char **err);
// Where the CUDA kernels, once compiled, are kept for later processes ("" or null: nowhere).
int rt_polycom_cuda_set_cache_dir(const char *dir, char **err);
// As rt_polycom_cuda_compile_check, through the cache folder `dir`: *from_cache = 1 when a stored
// image was used; *size = the image's bytes.
int rt_polycom_cuda_cached_compile_check(const char *arch, const char *nvrtc_path, const char *dir,
                                         const char *tuning, int *from_cache, size_t *size, char **log, char **err);

// Distributed collectives (dist.cpp), from libtorch's c10d. A store is a c10d::TCPStore at
// host:port, hosted by the rank with is_server (rank 0, unless a launcher's agent hosts it); every
// rank waits up to timeout_ms for all `world` ranks to connect; its
// set/get carry small messages between ranks (get waits for the key; *value is malloc'ed, freed
// with rt_free). A process group is a c10d backend over that store, its keys under `prefix`.
typedef void *rt_store;
typedef void *rt_process_group;
int rt_dist_store(const char *host, int port, int rank, int world, int is_server, int64_t timeout_ms, rt_store *out,
                  char **err);
void rt_dist_store_free(rt_store store);
int rt_dist_store_set(rt_store store, const char *key, const uint8_t *value, int64_t len, char **err);
int rt_dist_store_get(rt_store store, const char *key, uint8_t **value, int64_t *len, char **err);
// Gloo backend: CPU tensors (CUDA tensors through host copies).
int rt_dist_gloo(rt_store store, const char *prefix, int rank, int world, int64_t timeout_ms, rt_process_group *out,
                 char **err);
void rt_dist_free(rt_process_group pg);
// A store whose keys live under `prefix` of `store` (free with rt_dist_store_free).
int rt_dist_prefixed(rt_store store, const char *prefix, rt_store *out, char **err);
// A process group from a backend made elsewhere (the NCCL object: a new
// c10::intrusive_ptr<c10d::Backend>*, owned from here on) over `store`.
int rt_dist_wrap_backend(rt_store store, void *backend, rt_process_group *out, char **err);
// In place, on every tensor, waiting for the result: op 0 = sum, 1 = max, 2 = min.
int rt_dist_allreduce(rt_process_group pg, rt_tensor *tensors, int n, int op, char **err);
int rt_dist_broadcast(rt_process_group pg, rt_tensor *tensors, int n, int root, char **err);
int rt_dist_barrier(rt_process_group pg, char **err);

#ifdef __cplusplus
}
#endif
