//! The optimizers' kernels: libtorch's fused and foreach steps, and the shim's generic foreach
//! kernels, whose hyper-parameters cross the boundary as `#[repr(C)]` structs checked field by
//! field against the C++ layout (`shim_hyper_offsets`).

use super::{call, ptrs};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use tch::Tensor;

extern "C" {
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
