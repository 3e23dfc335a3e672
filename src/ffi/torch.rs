//! The only unsafe code of the crate: the C++ shim (shim.cpp) and the CUDA library loader.
//! Everything here has a safe face; C++ exceptions come back as `Error::Torch`.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn rt_free(p: *mut c_char);
    fn rt_autocast_set_enabled(device_type: c_int, enabled: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_is_enabled(device_type: c_int, out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_set_dtype(device_type: c_int, dtype: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_get_dtype(device_type: c_int, out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_increment_nesting(err: *mut *mut c_char) -> c_int;
    fn rt_autocast_decrement_nesting(out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_clear_cache(err: *mut *mut c_char) -> c_int;
    fn rt_to_channels_last(t: *mut c_void, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_is_channels_last(t: *mut c_void, out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_pin_memory(t: *mut c_void, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_set_allow_tf32(allow: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_seeded_randn(seed: u64, n: c_int, out: *mut f64, err: *mut *mut c_char) -> c_int;
    fn rt_foreach_sgd(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        bufs: *mut *mut c_void,
        n: c_int,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: c_int,
        first_step: c_int,
        trust_coeff: f64,
        trust_eps: f64,
        trust_clip: c_int,
        always_adapt: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_grads_set_none(params: *mut *mut c_void, n: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_backward_with_grad(output: *mut c_void, grad: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_foreach_unscale(
        grads: *mut *mut c_void,
        n: c_int,
        found_inf: *mut c_void,
        inv_scale: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_clip_grad_norm(
        grads: *mut *mut c_void,
        n: c_int,
        max_norm: f64,
        total: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_fused_adam(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        n: c_int,
        step: *mut c_void,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_rmsprop_tf(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        square_avgs: *mut *mut c_void,
        momentum_bufs: *mut *mut c_void,
        n: c_int,
        lr: f64,
        alpha: f64,
        eps: f64,
        weight_decay: f64,
        momentum: f64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_lion(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        caution: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_adamw_timm(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        bias_correction1: f64,
        bias_correction2: f64,
        nesterov: c_int,
        caution: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_adopt(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: c_int,
        step: i64,
        clip_exp: f64,
        caution: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_lamb(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        n: c_int,
        clip_divisor: *mut c_void,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        bias_correction1: f64,
        bias_correction2: f64,
        trust_clip: c_int,
        always_adapt: c_int,
        decoupled_decay: f64,
        caution: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_optimizer_step(
        name: *const c_char,
        lists: *mut *mut c_void,
        n_lists: c_int,
        n: c_int,
        hyper: *const c_void,
        hyper_size: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_optimizer_hyper_layout(name: *const c_char, offsets: *mut usize, cap: c_int) -> c_int;
    fn rt_foreach_lerp(
        targets: *mut *mut c_void,
        sources: *mut *mut c_void,
        n: c_int,
        weight: f64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_copy(
        targets: *mut *mut c_void,
        sources: *mut *mut c_void,
        n: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
}

extern "C" {
    fn rt_polycom_apply(
        kind: c_int,
        x: *mut c_void,
        w: *mut c_void,
        b: *mut c_void,
        eps: f64,
        lowp_out: c_int,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_cuda_max_memory_allocated(device: c_int, out: *mut i64, err: *mut *mut c_char) -> c_int;
    fn rt_cuda_set_device(device: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_cpu_memory_tracking(
        current: *mut i64,
        peak: *mut i64,
        reset_peak: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_bn_act_apply(
        kind: c_int,
        z: *mut c_void,
        gamma: *mut c_void,
        beta: *mut c_void,
        identity: *mut c_void,
        w: *mut c_void,
        b: *mut c_void,
        running_mean: *mut c_void,
        running_var: *mut c_void,
        train: c_int,
        momentum: f64,
        bn_eps: f64,
        eps: f64,
        lowp_out: c_int,
        clamp: f64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_set_cpu_isa(isa: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cpu_isa(out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_set_cuda_simulation(on: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_bn_folds(out: *mut i64, err: *mut *mut c_char) -> c_int;
    fn rt_simt_selftest(
        mode: c_int,
        blocks: u32,
        threads: u32,
        out: *mut f64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_simt_half_conversions(
        input: *const f32,
        bits: *mut u16,
        back: *mut f32,
        n: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_kernel_names(out: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_unavailable(device: c_int, reason: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
    fn rt_cuda_describe_device(device: c_int, out: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_compile_check(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_ptx(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        tuning: *const c_char,
        ptx: *mut *mut c_char,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_set_cache_dir(dir: *const c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_check_tuning(spec: *const c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_ptxas_report(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        tuning: *const c_char,
        report: *mut *mut c_char,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_cached_compile_check(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        dir: *const c_char,
        tuning: *const c_char,
        from_cache: *mut c_int,
        size: *mut usize,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
}

pub(super) fn ptrs(ts: &[Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Hyper-parameters of one SGD step over a parameter group.
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// The momentum buffers are initialised from the gradients on the first step.
    pub first_step: bool,
    /// LARS's per-tensor scaling of the decayed gradient (timm's Lars); None: plain SGD.
    pub trust: Option<LarsTrust>,
}

/// timm's Lars options: the ratio is `coeff |p| / (|g| + wd |p| + eps)`, applied where the group
/// decays or `always_adapt`; `clip` (LARC) caps it at `lr`, i.e. the ratio used is min(ratio / lr, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsTrust {
    pub coeff: f64,
    pub eps: f64,
    pub clip: bool,
    pub always_adapt: bool,
}

/// One step of torch.optim.SGD (dampening 0; with momentum its fused kernel, `fused=True`, else the
/// foreach ops), or of timm's Lars with `step.trust` (foreach), over equal-length lists of
/// parameters, their gradients (the foreach paths add the weight decay to them in place) and
/// momentum buffers.
pub fn foreach_sgd(params: &[Tensor], grads: &[Tensor], bufs: &[Tensor], step: SgdStep) -> Result<()> {
    if params.len() != grads.len() || params.len() != bufs.len() {
        return Err(Error::Torch("foreach_sgd: list lengths differ".into()));
    }
    let (mut p, mut g, mut b) = (ptrs(params), ptrs(grads), ptrs(bufs));
    // SAFETY: three arrays of `n` live tensor pointers, valid for the call.
    call("sgd", |e| unsafe {
        rt_foreach_sgd(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            b.as_mut_ptr(),
            params.len() as c_int,
            step.lr,
            step.momentum,
            step.weight_decay,
            step.nesterov as c_int,
            step.first_step as c_int,
            step.trust.map_or(0.0, |t| t.coeff),
            step.trust.map_or(0.0, |t| t.eps),
            step.trust.is_some_and(|t| t.clip) as c_int,
            step.trust.is_some_and(|t| t.always_adapt) as c_int,
            e,
        )
    })
}

/// Hyper-parameters of one Adam-family step over a parameter group.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

fn same_lengths(what: &str, lists: &[&[Tensor]]) -> Result<()> {
    if lists.iter().any(|l| l.len() != lists[0].len()) {
        return Err(Error::Torch(format!("{what}: list lengths differ")));
    }
    Ok(())
}

/// One step of torch.optim.AdamW (libtorch's fused kernel, `_fused_adamw_`) over a parameter group,
/// or with `decoupled` false of torch.optim.Adam (`_fused_adam_`: weight decay added to the
/// gradient): parameters, their gradients, first and second moments, and the step count (a float
/// tensor on the parameters' device, already incremented for this step).
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step_count: &Tensor,
    step: AdamStep,
    decoupled: bool,
) -> Result<()> {
    same_lengths("adam", &[params, grads, exp_avgs, exp_avg_sqs])?;
    let (mut p, mut g, mut m, mut v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    // SAFETY: four arrays of `n` live tensor pointers and one live tensor, valid for the call.
    call("adam", |e| unsafe {
        rt_fused_adam(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            params.len() as c_int,
            step_count.as_ptr() as *mut c_void,
            step.lr,
            step.beta1,
            step.beta2,
            step.weight_decay,
            step.eps,
            decoupled as c_int,
            e,
        )
    })
}

/// timm's RMSpropTF hyper-parameters for one group's step.
#[derive(Clone, Copy, Debug)]
pub struct RmspropTfStep {
    pub lr: f64,
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
}

/// One step of timm's RMSpropTF (foreach, lr in the momentum buffer) over a parameter group:
/// parameters, their gradients, squared averages and momentum buffers (unused without momentum).
pub fn foreach_rmsprop_tf(
    params: &[Tensor],
    grads: &[Tensor],
    square_avgs: &[Tensor],
    momentum_bufs: &[Tensor],
    step: RmspropTfStep,
) -> Result<()> {
    same_lengths("rmsproptf", &[params, grads, square_avgs, momentum_bufs])?;
    let (mut p, mut g, mut sq, mut m) = (ptrs(params), ptrs(grads), ptrs(square_avgs), ptrs(momentum_bufs));
    // SAFETY: four arrays of `n` live tensor pointers, valid for the call.
    call("rmsproptf", |e| unsafe {
        rt_foreach_rmsprop_tf(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            sq.as_mut_ptr(),
            m.as_mut_ptr(),
            params.len() as c_int,
            step.lr,
            step.alpha,
            step.eps,
            step.weight_decay,
            step.momentum,
            e,
        )
    })
}

/// One step of timm's Lion (foreach) over a parameter group: parameters, their gradients and
/// momenta, at learning rate `lr` with betas `betas` and decoupled weight decay `weight_decay`;
/// with `caution`, timm's cautious Lion (`clion`).
pub fn foreach_lion(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    caution: bool,
) -> Result<()> {
    same_lengths("lion", &[params, grads, exp_avgs])?;
    let (mut p, mut g, mut m) = (ptrs(params), ptrs(grads), ptrs(exp_avgs));
    // SAFETY: three arrays of `n` live tensor pointers, valid for the call.
    call("lion", |e| unsafe {
        rt_foreach_lion(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            params.len() as c_int,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            caution as c_int,
            e,
        )
    })
}

/// timm's AdamW (AdamWLegacy) and NAdamW steps, foreach: `nesterov` takes NAdamW's look-ahead
/// numerator, `caution` timm's cautious masks.
#[allow(clippy::too_many_arguments)]
pub fn foreach_adamw_timm(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: AdamStep,
    bias_correction: (f64, f64),
    nesterov: bool,
    caution: bool,
) -> Result<()> {
    same_lengths("adamw", &[params, grads, exp_avgs, exp_avg_sqs])?;
    let (mut p, mut g, mut m, mut v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    // SAFETY: four arrays of `n` live tensor pointers, valid for the call.
    call("adamw", |e| unsafe {
        rt_foreach_adamw_timm(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            params.len() as c_int,
            step.lr,
            step.beta1,
            step.beta2,
            step.eps,
            step.weight_decay,
            bias_correction.0,
            bias_correction.1,
            nesterov as c_int,
            caution as c_int,
            e,
        )
    })
}

/// What sets ADOPT's step apart from Adam's (timm's Adopt).
#[derive(Clone, Copy, Debug)]
pub struct AdoptOptions {
    /// Weight decay decoupled (`adoptw`) or added to the gradient (`adopt`).
    pub decoupled: bool,
    /// The step number, from 1 (step 1 only initialises the second moment).
    pub step: i64,
    /// The normalised gradient is clipped at (step - 1)^clip_exp; None: no clipping.
    pub clip_exp: Option<f64>,
    pub caution: bool,
}

/// timm's ADOPT step, foreach.
pub fn foreach_adopt(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: AdamStep,
    options: AdoptOptions,
) -> Result<()> {
    same_lengths("adopt", &[params, grads, exp_avgs, exp_avg_sqs])?;
    let (mut p, mut g, mut m, mut v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    // SAFETY: four arrays of `n` live tensor pointers, valid for the call.
    call("adopt", |e| unsafe {
        rt_foreach_adopt(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            params.len() as c_int,
            step.lr,
            step.beta1,
            step.beta2,
            step.eps,
            step.weight_decay,
            options.decoupled as c_int,
            options.step,
            options.clip_exp.unwrap_or(-1.0),
            options.caution as c_int,
            e,
        )
    })
}

/// Options of timm's Lamb beyond the Adam ones.
#[derive(Clone, Copy, Debug)]
pub struct LambStep {
    pub adam: AdamStep,
    /// 1 - beta1^t and 1 - beta2^t.
    pub bias_correction: (f64, f64),
    pub trust_clip: bool,
    pub always_adapt: bool,
    /// timm's `decoupled_decay` (`lambw`): p -= this x p before the trust ratio (lr wd, or
    /// lr^2 / peak wd corrected), and no wd p in the update; 0: the coupled decay.
    pub decoupled_decay: f64,
    /// timm's cautious Lamb (`clamb`): the update masked where its sign disagrees with the gradient's.
    pub caution: bool,
}

/// One step of timm's Lamb over a parameter group (foreach kernels); the gradients are divided by
/// `clip_divisor` (timm's global-norm clipping: max(1, |g| / max_grad_norm)) without being modified.
pub fn foreach_lamb(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    clip_divisor: Option<&Tensor>,
    step: LambStep,
) -> Result<()> {
    same_lengths("lamb", &[params, grads, exp_avgs, exp_avg_sqs])?;
    let (mut p, mut g, mut m, mut v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    let clip = clip_divisor.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
    // SAFETY: four arrays of `n` live tensor pointers and a live tensor or null, valid for the call.
    call("lamb", |e| unsafe {
        rt_foreach_lamb(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            params.len() as c_int,
            clip,
            step.adam.lr,
            step.adam.beta1,
            step.adam.beta2,
            step.adam.eps,
            step.adam.weight_decay,
            step.bias_correction.0,
            step.bias_correction.1,
            step.trust_clip as c_int,
            step.always_adapt as c_int,
            step.decoupled_decay,
            step.caution as c_int,
            e,
        )
    })
}

/// The scalars of one step of an optimizer reached through `rt_foreach_optimizer_step`: a
/// `#[repr(C)]` twin of shim.h's `rt_<NAME>_hyper` (field for field: `hyper_layout_matches`).
pub trait OptimizerHyper {
    /// The optimizer's name in the shim.
    const NAME: &'static str;
    /// Its tensor lists: the parameters, their gradients, then its state, in shim.h's order.
    const LISTS: usize;
    /// The byte offset of each field, in declaration order.
    fn offsets() -> Vec<usize>;
}

macro_rules! optimizer_hyper {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $lists:literal { $($(#[$fdoc:meta])* $field:ident: $t:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub struct $ty {
            $($(#[$fdoc])* pub $field: $t),*
        }
        impl OptimizerHyper for $ty {
            const NAME: &'static str = $name;
            const LISTS: usize = $lists;
            fn offsets() -> Vec<usize> {
                vec![$(std::mem::offset_of!($ty, $field)),*]
            }
        }
    };
}

optimizer_hyper!(
    /// timm's Adan: lists p, g, exp_avg, exp_avg_diff, exp_avg_sq, neg_pre_grad.
    AdanHyper, "adan", 6 {
        lr: f64, beta1: f64, beta2: f64, beta3: f64, eps: f64, weight_decay: f64, bc1: f64, bc2: f64,
        /// sqrt(1 - beta3^t).
        bc3_sqrt: f64,
        no_prox: i32, caution: i32,
        /// 1 at the first step (timm sets neg_pre_grad = -grad there).
        first_step: i32,
    }
);
optimizer_hyper!(
    /// timm's LaProp: lists p, g, exp_avg, exp_avg_sq.
    LapropHyper, "laprop", 4 {
        lr: f64, beta1: f64, beta2: f64, eps: f64,
        /// p -= decay p (lr wd, or lr^2 / peak wd corrected).
        decay: f64,
        step_size: f64, bc2: f64, caution: i32,
    }
);
optimizer_hyper!(
    /// torch.optim.RAdam: lists p, g, exp_avg, exp_avg_sq; torch's per-step scalars.
    RadamHyper, "radam", 4 {
        lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64,
        /// 0 when the step is rectified.
        unrect_step_size: f64,
        /// 0 when the step is not rectified.
        bias_correction2: f64,
        decoupled: i32,
    }
);
optimizer_hyper!(
    /// torch.optim.NAdam: lists p, g, exp_avg, exp_avg_sq; torch's per-step scalars.
    NadamHyper, "nadam", 4 {
        lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, bias_correction_sqrt: f64,
        step_size_grads: f64, step_size_expavg: f64, decoupled: i32,
    }
);
optimizer_hyper!(
    /// timm's AdaBelief (decoupled decay): lists p, g, exp_avg, exp_avg_var.
    AdabeliefHyper, "adabelief", 4 {
        lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, bc1: f64, bc2: f64,
        /// The rectified step size.
        step_size: f64,
        /// 0 no, 1 adaptive, 2 SGD, 3 no update.
        rectify: i32,
    }
);

/// The shim's field offsets of `H`'s twin (None: the shim has no optimizer of that name).
pub fn shim_hyper_offsets<H: OptimizerHyper>() -> Option<Vec<usize>> {
    let name = CString::new(H::NAME).ok()?;
    let mut offsets = vec![0usize; 32];
    // SAFETY: `offsets` has room for 32 values, the count passed.
    let n = unsafe { rt_optimizer_hyper_layout(name.as_ptr(), offsets.as_mut_ptr(), 32) };
    offsets.truncate(usize::try_from(n).ok()?);
    Some(offsets)
}

/// One step of a shim optimizer (`rt_foreach_optimizer_step`) over one parameter group: `lists`
/// are the parameters, their gradients and the optimizer's state lists in shim.h's order.
pub fn foreach_optimizer_step<H: OptimizerHyper>(lists: &[&[Tensor]], hyper: &H) -> Result<()> {
    let name = H::NAME;
    if lists.len() != H::LISTS {
        return Err(Error::Torch(format!("{name}: {} tensor lists, expected {}", lists.len(), H::LISTS)));
    }
    same_lengths(name, lists)?;
    let n = lists.first().map_or(0, |l| l.len());
    let mut flat: Vec<*mut c_void> = lists.iter().flat_map(|l| ptrs(l)).collect();
    let c_name = CString::new(name).map_err(|_| Error::Torch(format!("optimizer name {name:?}")))?;
    // SAFETY: `flat` holds lists.len() arrays of `n` live tensor pointers back to back; `hyper` is
    // a #[repr(C)] value of size_of::<H>() bytes; all valid for the call.
    call(name, |e| unsafe {
        rt_foreach_optimizer_step(
            c_name.as_ptr(),
            flat.as_mut_ptr(),
            lists.len() as c_int,
            n as c_int,
            (hyper as *const H).cast(),
            std::mem::size_of::<H>(),
            e,
        )
    })
}

/// `torch._foreach_lerp_(targets, sources, weight)`: targets += weight (sources - targets), in place.
pub fn foreach_lerp(targets: &[Tensor], sources: &[Tensor], weight: f64) -> Result<()> {
    same_lengths("lerp", &[targets, sources])?;
    let (mut t, mut s) = (ptrs(targets), ptrs(sources));
    // SAFETY: two arrays of `n` live tensor pointers, valid for the call.
    call("lerp", |e| unsafe {
        rt_foreach_lerp(t.as_mut_ptr(), s.as_mut_ptr(), targets.len() as c_int, weight, e)
    })
}

/// `torch._foreach_copy_(targets, sources)`.
pub fn foreach_copy(targets: &[Tensor], sources: &[Tensor]) -> Result<()> {
    same_lengths("copy", &[targets, sources])?;
    let (mut t, mut s) = (ptrs(targets), ptrs(sources));
    // SAFETY: two arrays of `n` live tensor pointers, valid for the call.
    call("copy", |e| unsafe { rt_foreach_copy(t.as_mut_ptr(), s.as_mut_ptr(), targets.len() as c_int, e) })
}

/// `optimizer.zero_grad(set_to_none=True)` for these parameters.
pub fn grads_set_none(params: &[Tensor]) -> Result<()> {
    let mut p = ptrs(params);
    // SAFETY: an array of live tensor pointers, valid for the call.
    call("zero_grad", |e| unsafe { rt_grads_set_none(p.as_mut_ptr(), params.len() as c_int, e) })
}

/// `torch.autograd.backward(output, grad)`: backward from a non-scalar output with its gradient
/// (tch's `backward` takes none), accumulating into the leaves' `.grad`.
pub fn backward_with_grad(output: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: two live tensors, valid for the call.
    call("backward", |e| unsafe {
        rt_backward_with_grad(output.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void, e)
    })
}

/// `torch._amp_foreach_non_finite_check_and_unscale_`: multiplies `grads` by `inv_scale` in place
/// and sets `found_inf` (a 1-element float tensor) to 1 if any gradient holds inf/NaN.
pub fn foreach_unscale(grads: &[Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<()> {
    let mut g = ptrs(grads);
    // SAFETY: an array of live tensor pointers and two live tensors.
    call("unscale", |e| unsafe {
        rt_foreach_unscale(
            g.as_mut_ptr(),
            grads.len() as c_int,
            found_inf.as_ptr() as *mut c_void,
            inv_scale.as_ptr() as *mut c_void,
            e,
        )
    })
}

/// Total L2 norm of `grads` (a 0-d float tensor on their device); with a finite `max_norm` > 0 the
/// gradients are scaled in place as torch.nn.utils.clip_grad_norm_ does.
pub fn foreach_clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<Tensor> {
    let mut g = ptrs(grads);
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: an array of live tensor pointers; on success the shim returns a new tensor we own.
    call("clip_grad_norm", |e| unsafe {
        rt_foreach_clip_grad_norm(g.as_mut_ptr(), grads.len() as c_int, max_norm, &mut out, e)
    })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// Peak bytes PyTorch's caching allocator has handed out on CUDA device `index` since the start
/// (torch.cuda.max_memory_allocated).
/// Makes cuda:`index` the process's current CUDA device, as `torch.cuda.set_device` does.
pub fn cuda_set_device(index: usize) -> Result<()> {
    // SAFETY: a plain value argument.
    call("cuda set device", |e| unsafe { rt_cuda_set_device(index as c_int, e) })
}

pub fn cuda_max_memory_allocated(index: usize) -> Result<u64> {
    let mut out = 0i64;
    // SAFETY: plain value argument and a valid out-pointer.
    call("cuda memory stats", |e| unsafe { rt_cuda_max_memory_allocated(index as c_int, &mut out, e) })?;
    Ok(out.max(0) as u64)
}

/// Bytes in tensors from libtorch's CPU allocator: (now, peak). The first call starts counting
/// (a wrapper around the allocator, for the rest of the process; tensors allocated before are
/// not counted). `reset_peak`: the peak restarts from now after this reading.
pub fn cpu_memory_allocated(reset_peak: bool) -> Result<(u64, u64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: valid out-pointers.
    call("cpu memory stats", |e| unsafe {
        rt_cpu_memory_tracking(&mut current, &mut peak, reset_peak as c_int, e)
    })?;
    Ok((current.max(0) as u64, peak.max(0) as u64))
}

/// Which fused PolyCom operator (src/ffi/polycom.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolyCom {
    PolyRelu,
    /// Over dim 1 (the channels).
    PolyNorm,
}

/// The fused, differentiable PolyReLU / PolyNorm over x (fp32, fp64, bf16 or fp16; any layout)
/// with weight `w` (1..=8 entries) and bias `b` (one entry). fp32 arithmetic and an fp32 output
/// (fp64 for fp64 input), or with `lowp_out` a bf16/fp16 input's own type (rounded once, at the
/// end; its gradient comes back in that type too); backward in closed form. CPU, or CUDA kernels
/// compiled with NVRTC.
pub fn polycom(op: PolyCom, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, lowp_out: bool) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let kind = match op {
        PolyCom::PolyRelu => 0,
        PolyCom::PolyNorm => 1,
    };
    let (xp, wp, bp) = (x.as_ptr() as *mut c_void, w.as_ptr() as *mut c_void, b.as_ptr() as *mut c_void);
    // SAFETY: three live tensors; on success the shim returns a new heap tensor we take ownership of.
    call("fused activation", |e| unsafe {
        rt_polycom_apply(kind, xp, wp, bp, eps, lowp_out as c_int, &mut out, e)
    })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// A BatchNorm layer's tensors and settings, as `bn_polycom` takes them.
pub struct BatchNormArgs<'a> {
    pub gamma: Option<&'a Tensor>,
    pub beta: Option<&'a Tensor>,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    /// Training mode (batch statistics, running statistics updated) or eval mode.
    pub train: bool,
    pub momentum: f64,
    pub eps: f64,
}

/// The activation of `bn_polycom`: as `polycom`'s arguments, and `act_clamp`'s bound (the
/// activation's input clamped to [-c, c] first).
pub struct PolyComArgs<'a> {
    pub op: PolyCom,
    pub w: &'a Tensor,
    pub b: &'a Tensor,
    pub eps: f64,
    pub lowp_out: bool,
    pub clamp: Option<f64>,
}

/// `polycom(op, batch_norm(z) [+ identity], w, b, ...)` as one differentiable operator that keeps z
/// for the backward instead of the activation's input (recomputed there in one pass). Batch norm
/// is libtorch's, with the same values and running-statistics update as `Tensor::batch_norm`.
pub fn bn_polycom(
    z: &Tensor,
    bn: &BatchNormArgs,
    identity: Option<&Tensor>,
    act: &PolyComArgs,
) -> Result<Tensor> {
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
    let kind = match act.op {
        PolyCom::PolyRelu => 0,
        PolyCom::PolyNorm => 1,
    };
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: live tensors or nulls (which the shim reads as undefined); on success the shim
    // returns a new heap tensor we take ownership of.
    call("fused batch norm + activation", |e| unsafe {
        rt_bn_act_apply(
            kind,
            ptr(Some(z)),
            ptr(bn.gamma),
            ptr(bn.beta),
            ptr(identity),
            ptr(Some(act.w)),
            ptr(Some(act.b)),
            ptr(Some(bn.running_mean)),
            ptr(Some(bn.running_var)),
            bn.train as c_int,
            bn.momentum,
            bn.eps,
            act.eps,
            act.lowp_out as c_int,
            act.clamp.unwrap_or(0.0),
            &mut out,
            e,
        )
    })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// The fused activations' CPU kernels: those for the instruction set ATen's own kernels use on
/// this CPU (`Auto`), the portable build, AVX2+FMA, or AVX-512 (F, BW, VL, DQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuIsa {
    Auto = 0,
    Portable = 1,
    Avx2 = 2,
    Avx512 = 3,
}

/// Picks the CPU kernels (for tests and benchmarks; `Auto` is the default).
pub fn set_polycom_cpu_isa(isa: CpuIsa) -> Result<()> {
    // SAFETY: plain value argument.
    call("fused activation", |e| unsafe { rt_polycom_set_cpu_isa(isa as c_int, e) })
}

/// The CPU kernels in use (`Portable`, `Avx2` or `Avx512`).
pub fn polycom_cpu_isa() -> Result<CpuIsa> {
    let mut out = 0;
    // SAFETY: valid out-pointer.
    call("fused activation", |e| unsafe { rt_polycom_cpu_isa(&mut out, e) })?;
    Ok(match out {
        3 => CpuIsa::Avx512,
        2 => CpuIsa::Avx2,
        _ => CpuIsa::Portable,
    })
}

/// While on, the fused operators run their CUDA kernels' source (compiled for the host) on CPU
/// tensors under a SIMT emulator (src/ffi/simt_host.h) instead of the CPU kernels: how the CUDA
/// kernels are checked numerically without a GPU (`check-act --simulate-cuda`). Process-wide.
pub fn set_polycom_cuda_simulation(on: bool) -> Result<()> {
    // SAFETY: plain value argument.
    call("fused activation", |e| unsafe { rt_polycom_set_cuda_simulation(on as c_int, e) })
}

/// How many times this process ran batch norm's backward folded into the CUDA kernels (PolyNorm's
/// channels-last backward taking batch norm's sums; on a GPU or simulated): how a check shows that
/// the path it covers took the fold.
pub fn polycom_cuda_bn_folds() -> Result<i64> {
    let mut out = 0i64;
    // SAFETY: a valid out-pointer.
    call("fused activation", |e| unsafe { rt_polycom_cuda_bn_folds(&mut out, e) })?;
    Ok(out)
}

/// How a kernel run by the SIMT emulator uses warp shuffles and `__syncthreads` (`simt_selftest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimtSelftest {
    /// Correctly: every lane shuffles, every thread reaches the barrier.
    Correct = 0,
    /// The upper 16 lanes of each warp exit before a full-warp shuffle.
    LanesExitBeforeShuffle = 1,
    /// Half the block waits at a `__syncthreads` the other half never reaches.
    DivergentBarrier = 2,
}

/// Runs the SIMT emulator's self-check kernel as `blocks` x `threads` (a multiple of 32): the
/// per-block sums of the threads' global indices, or the emulator's error for a misuse.
pub fn simt_selftest(mode: SimtSelftest, blocks: u32, threads: u32) -> Result<Vec<f64>> {
    let mut out = vec![0f64; blocks as usize];
    // SAFETY: `out` holds one value per block, which is all the kernel writes.
    call("simt emulator", |e| unsafe {
        rt_simt_selftest(mode as c_int, blocks, threads, out.as_mut_ptr(), e)
    })?;
    Ok(out)
}

/// The simulated kernels' fp16 conversions: (fp16 bits of each value, rounded to nearest even;
/// those bits back in fp32).
pub fn simt_half_conversions(input: &[f32]) -> Result<(Vec<u16>, Vec<f32>)> {
    let (mut bits, mut back) = (vec![0u16; input.len()], vec![0f32; input.len()]);
    // SAFETY: three buffers of input.len() elements.
    call("simt emulator", |e| unsafe {
        rt_simt_half_conversions(input.as_ptr(), bits.as_mut_ptr(), back.as_mut_ptr(), input.len() as i64, e)
    })?;
    Ok((bits, back))
}

/// The kernels polycom.cu defines, sorted (as the SIMT emulator's build of it registers them): the
/// entry points a GPU's image of the same source must hold, since the CUDA path launches kernels
/// by name.
pub fn polycom_cuda_kernel_names() -> Result<Vec<String>> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the shim hands over a malloc'ed string.
    call("fused activation", |e| unsafe { rt_polycom_cuda_kernel_names(&mut out, e) })?;
    Ok(take_string(out).unwrap_or_default().lines().map(str::to_string).collect())
}

/// Takes ownership of a malloc'ed string from the shim (None for null).
pub(super) fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the shim hands us a NUL-terminated malloc'ed string that we now own.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { rt_free(p) };
    Some(s)
}

/// None when the fused activations' CUDA kernels run on CUDA device `index` (NVRTC found, kernels
/// compiled and loaded; done once per device), else why not.
pub fn polycom_cuda_unavailable(index: usize) -> Result<Option<String>> {
    let mut reason: *mut c_char = std::ptr::null_mut();
    // SAFETY: plain value argument and a valid out-pointer.
    call("fused activation", |e| unsafe { rt_polycom_cuda_unavailable(index as c_int, &mut reason, e) })?;
    Ok(take_string(reason))
}

/// CUDA device `index` in words, from the NVIDIA driver: "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB,
/// CUDA driver 13.0)". An error where there is no driver or no such device.
pub fn cuda_device_description(index: usize) -> Result<String> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: plain value argument and a valid out-pointer.
    call("CUDA device", |e| unsafe { rt_cuda_describe_device(index as c_int, &mut out, e) })?;
    Ok(take_string(out).unwrap_or_default())
}

/// Compiles the fused activations' CUDA kernels with NVRTC for `arch` ("compute_90": PTX, "sm_90":
/// a cubin) without a GPU. `Ok(None)` on success, `Ok(Some(log))` when NVRTC is missing or the
/// source does not compile.
pub fn polycom_cuda_compile_check(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
) -> Result<Option<String>> {
    let arch = CString::new(arch).map_err(|_| Error::Usage("arch contains a NUL byte".into()))?;
    let path = CString::new(nvrtc_path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
        .map_err(|_| Error::Usage("NVRTC path contains a NUL byte".into()))?;
    let mut log: *mut c_char = std::ptr::null_mut();
    // SAFETY: two NUL-terminated strings alive for the call and a valid out-pointer.
    call("fused activation", |e| unsafe {
        rt_polycom_cuda_compile_check(arch.as_ptr(), path.as_ptr(), &mut log, e)
    })?;
    Ok(take_string(log))
}

fn c_path(p: Option<&std::path::Path>, what: &str) -> Result<CString> {
    CString::new(p.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
        .map_err(|_| Error::Usage(format!("{what} contains a NUL byte")))
}

/// Where the CUDA kernels, once compiled for a GPU, are kept for later processes (None: every
/// process compiles them, several seconds).
pub fn set_kernel_cache_dir(dir: Option<&std::path::Path>) -> Result<()> {
    let dir = c_path(dir, "the kernel cache folder")?;
    // SAFETY: a NUL-terminated string alive for the call.
    call("kernel cache", |e| unsafe { rt_polycom_cuda_set_cache_dir(dir.as_ptr(), e) })
}

/// Checks a `RESNET_TRAIN_CUDA_TUNING` value (e.g. "min_blocks=4,blocks_per_sm=16").
pub fn check_cuda_tuning(spec: &str) -> Result<()> {
    let spec = CString::new(spec)
        .map_err(|_| Error::Usage("RESNET_TRAIN_CUDA_TUNING contains a NUL byte".into()))?;
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: a NUL-terminated string alive for the call and a valid error slot.
    if unsafe { rt_polycom_cuda_check_tuning(spec.as_ptr(), &mut err) } == 0 {
        return Ok(());
    }
    Err(Error::Usage(take_string(err).unwrap_or_else(|| "RESNET_TRAIN_CUDA_TUNING is not valid".into())))
}

/// Compiles the CUDA kernels for `arch` under `tuning` (RESNET_TRAIN_CUDA_TUNING's syntax) through
/// the cache folder `dir`, no GPU needed: `Ok(Ok((from_cache, bytes)))`, or `Ok(Err(log))` when
/// NVRTC is missing or fails (or the tuning is not valid).
pub fn polycom_cuda_cached_compile(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    dir: &std::path::Path,
    tuning: &str,
) -> Result<std::result::Result<(bool, usize), String>> {
    let arch = CString::new(arch).map_err(|_| Error::Usage("arch contains a NUL byte".into()))?;
    let tuning = CString::new(tuning).map_err(|_| Error::Usage("the tuning contains a NUL byte".into()))?;
    let (path, dir) = (c_path(nvrtc_path, "NVRTC path")?, c_path(Some(dir), "the kernel cache folder")?);
    let (mut from_cache, mut size, mut log): (c_int, usize, *mut c_char) = (0, 0, std::ptr::null_mut());
    // SAFETY: four NUL-terminated strings alive for the call and valid out-pointers.
    call("fused activation", |e| unsafe {
        rt_polycom_cuda_cached_compile_check(
            arch.as_ptr(),
            path.as_ptr(),
            dir.as_ptr(),
            tuning.as_ptr(),
            &mut from_cache,
            &mut size,
            &mut log,
            e,
        )
    })?;
    Ok(match take_string(log) {
        Some(log) => Err(log),
        None => Ok((from_cache != 0, size)),
    })
}

/// Calls a shim function and turns its error slot into a `Result`.
pub(super) fn call(what: &str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if f(&mut err) == 0 {
        return Ok(());
    }
    let msg = take_string(err).unwrap_or_else(|| "unknown error".to_string());
    Err(Error::Torch(format!("{what}: {msg}")))
}

fn device_code(device: Device) -> c_int {
    match device {
        Device::Cuda(_) => 1,
        _ => 0,
    }
}

fn kind_code(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::BFloat16 => Ok(15),
        other => Err(Error::Torch(format!("autocast does not support {other:?}"))),
    }
}

/// Autocast (mixed precision) for one device type, with the chosen low-precision dtype, while the
/// guard lives; the previous state is restored on drop. Mirrors `torch.autocast(device, dtype)`.
pub struct AutocastGuard {
    device: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl AutocastGuard {
    pub fn new(device: Device, dtype: Kind) -> Result<Self> {
        let dev = device_code(device);
        let code = kind_code(dtype)?;
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain value arguments and valid out-pointers.
        call("autocast state", |e| unsafe { rt_autocast_is_enabled(dev, &mut prev_enabled, e) })?;
        call("autocast dtype", |e| unsafe { rt_autocast_get_dtype(dev, &mut prev_dtype, e) })?;
        call("autocast dtype", |e| unsafe { rt_autocast_set_dtype(dev, code, e) })?;
        call("autocast enable", |e| unsafe { rt_autocast_set_enabled(dev, 1, e) })?;
        call("autocast nesting", |e| unsafe { rt_autocast_increment_nesting(e) })?;
        Ok(Self { device: dev, prev_enabled, prev_dtype })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let mut depth = 0;
        // SAFETY: as in `new`. Errors cannot be reported from drop; these calls do not throw.
        let _ = call("autocast nesting", |e| unsafe { rt_autocast_decrement_nesting(&mut depth, e) });
        if depth == 0 {
            let _ = call("autocast cache", |e| unsafe { rt_autocast_clear_cache(e) });
        }
        let _ = call("autocast", |e| unsafe { rt_autocast_set_enabled(self.device, self.prev_enabled, e) });
        let _ = call("autocast", |e| unsafe { rt_autocast_set_dtype(self.device, self.prev_dtype, e) });
    }
}

/// Whether autocast is currently enabled for the device's type.
pub fn autocast_enabled(device: Device) -> Result<bool> {
    let mut out = 0;
    // SAFETY: valid out-pointer.
    call("autocast state", |e| unsafe { rt_autocast_is_enabled(device_code(device), &mut out, e) })?;
    Ok(out != 0)
}

/// A copy of a 4-d tensor in the channels_last (NHWC) memory format; other ranks come back contiguous.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; on success the shim returns a new heap tensor we take ownership of.
    call("channels_last", |e| unsafe { rt_to_channels_last(t.as_ptr() as *mut c_void, &mut out, e) })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// A page-locked copy of a CPU tensor (tch's `pin_memory(device)` passes the device argument that
/// libtorch deprecated, and libtorch then warns on every batch).
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; on success the shim returns a new heap tensor we take ownership of.
    call("pin_memory", |e| unsafe { rt_pin_memory(t.as_ptr() as *mut c_void, &mut out, e) })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// Whether a tensor's strides are those of the channels_last memory format.
pub fn is_channels_last(t: &Tensor) -> Result<bool> {
    let mut out = 0;
    // SAFETY: `t` is a live tensor; valid out-pointer.
    call("channels_last", |e| unsafe { rt_is_channels_last(t.as_ptr() as *mut c_void, &mut out, e) })?;
    Ok(out != 0)
}

/// Allows TF32 in CUDA matmuls and cuDNN convolutions (`--precision tf32`).
pub fn set_allow_tf32(allow: bool) -> Result<()> {
    // SAFETY: plain value argument.
    call("tf32", |e| unsafe { rt_set_allow_tf32(allow as c_int, e) })
}

/// The first `n` values of `torch.randn(1, generator=g)` called in a loop on a CPU generator
/// seeded with `seed`: torch's own draws, so that timm's learning-rate noise is reproduced exactly.
pub fn seeded_randn(seed: u64, n: usize) -> Result<Vec<f64>> {
    let mut out = vec![0.0f64; n];
    let count = c_int::try_from(n).map_err(|_| Error::Usage(format!("{n} draws are too many")))?;
    // SAFETY: `out` holds `n` writable doubles for the call's duration.
    call("seeded randn", |e| unsafe { rt_seeded_randn(seed, count, out.as_mut_ptr(), e) })?;
    Ok(out)
}

/// Loads libtorch_cuda.so next to the libtorch_cpu.so this process uses, so that `--device cuda`
/// works: the linker drops the library because no symbol of it is referenced (tch-rs issue 980).
/// On a CPU-only install (no file, or its CUDA dependencies missing) this is a silent no-op.
/// Returns the path that was loaded.
pub fn load_cuda_library() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let cpu_lib =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let dir = std::path::Path::new(cpu_lib).parent()?;
    let cuda_lib = dir.join("libtorch_cuda.so");
    if !cuda_lib.exists() {
        return None;
    }
    let c_path = CString::new(cuda_lib.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: dlopen with a valid C string; the handle is intentionally leaked (the library stays loaded).
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        None
    } else {
        Some(cuda_lib.to_string_lossy().into_owned())
    }
}

/// The bytes of a contiguous CPU uint8 tensor, to fill it in place (no copy through libtorch).
/// The slice borrows the tensor mutably; do not hold shallow clones of it while writing.
pub fn uint8_bytes_mut(t: &mut Tensor) -> Result<&mut [u8]> {
    if t.device() != Device::Cpu || t.kind() != Kind::Uint8 || !t.is_contiguous() {
        return Err(Error::Torch(format!(
            "expected a contiguous CPU uint8 tensor, got {:?} {:?}",
            t.device(),
            t.kind()
        )));
    }
    let len = t.numel();
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: the tensor is a contiguous CPU uint8 tensor of `len` elements, so its data pointer
    // addresses `len` initialised bytes, which stay alive and unaliased while `t` is borrowed.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) })
}

/// The fused activations' CUDA kernels as PTX for a virtual architecture (`arch` = "compute_90"),
/// compiled with NVRTC without a GPU: `Ok(Ok(ptx))`, or `Ok(Err(log))` when NVRTC is missing or
/// the source does not compile or `tuning` (`RESNET_TRAIN_CUDA_TUNING`'s syntax, "" for none) is
/// wrong. The tests read it to check what the kernels compile to.
pub fn polycom_cuda_ptx(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    tuning: &str,
) -> Result<std::result::Result<String, String>> {
    nvrtc_text(arch, nvrtc_path, tuning, rt_polycom_cuda_ptx)
}

/// As `polycom_cuda_ptx` for a real architecture ("sm_90"): ptxas's report of every kernel's
/// registers and spills, from which the tests watch for spills.
pub fn polycom_cuda_ptxas_report(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    tuning: &str,
) -> Result<std::result::Result<String, String>> {
    nvrtc_text(arch, nvrtc_path, tuning, rt_polycom_cuda_ptxas_report)
}

/// A shim function taking (arch, NVRTC path, tuning, out text, log, error slot).
type NvrtcTextFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const c_char,
    *mut *mut c_char,
    *mut *mut c_char,
    *mut *mut c_char,
) -> c_int;

/// Calls a shim function that compiles the kernels (arch, NVRTC path, tuning) and returns a text
/// (`out`) or NVRTC's log.
fn nvrtc_text(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    tuning: &str,
    f: NvrtcTextFn,
) -> Result<std::result::Result<String, String>> {
    let arch = CString::new(arch).map_err(|_| Error::Usage("arch contains a NUL byte".into()))?;
    let path = c_path(nvrtc_path, "NVRTC path")?;
    let tuning = CString::new(tuning).map_err(|_| Error::Usage("tuning contains a NUL byte".into()))?;
    let (mut out, mut log): (*mut c_char, *mut c_char) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: three NUL-terminated strings alive for the call and two valid out-pointers, as
    // both shim functions take them.
    call("fused activation", |e| unsafe {
        f(arch.as_ptr(), path.as_ptr(), tuning.as_ptr(), &mut out, &mut log, e)
    })?;
    Ok(match take_string(log) {
        Some(log) => Err(log),
        None => Ok(take_string(out).unwrap_or_default()),
    })
}
