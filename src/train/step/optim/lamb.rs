//! LAMB with timm's semantics (timm.optim.Lamb defaults: bias correction, grad averaging, global
//! gradient-norm clipping at 1.0, trust ratio only where weight decay applies): Adam's update plus
//! coupled weight decay, scaled per parameter by |p| / |update|. On libtorch's foreach kernels.
//! timm's variants: `lambc` (trust ratio capped at 1), `lambw` / `lambcw` (decoupled weight decay:
//! p -= lr wd p before the trust ratio, which then sees the decayed weights), `clamb` / `clambw`
//! (the update masked where its sign disagrees with the gradient's, Liang et al. 2024).

use super::{step_counter, AdamState, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_clip_grad_norm, foreach_lamb, LambStep};
use tch::Tensor;

/// timm's default `max_grad_norm`: gradients are divided by max(1, |g| / 1.0) before the update.
const MAX_GRAD_NORM: f64 = 1.0;

pub struct Lamb {
    state: AdamState,
    /// The trust ratio capped at 1 (timm's `lambc`).
    trust_clip: bool,
    /// timm's `decoupled_decay` (`lambw`).
    decoupled: bool,
    /// timm's `caution` (`clamb`).
    caution: bool,
}

impl Lamb {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, trust_clip: bool) -> Self {
        Self::variant(groups, betas, eps, trust_clip, false, false)
    }

    /// With timm's `decoupled_decay` and `caution` flags.
    pub fn variant(
        groups: Vec<Group>,
        betas: (f64, f64),
        eps: f64,
        trust_clip: bool,
        decoupled: bool,
        caution: bool,
    ) -> Self {
        Self { state: AdamState::new(groups, betas, eps, step_counter()), trust_clip, decoupled, caution }
    }
}

impl Optimizer for Lamb {
    fn step(&mut self, lr: f64) -> Result<()> {
        // The global norm over every group's gradients (norm only: max_norm 0 leaves them as they are).
        let divisor = (foreach_clip_grad_norm(&self.grads(), 0.0)? / MAX_GRAD_NORM).f_clamp_min(1.0)?;
        let s = &mut self.state;
        let _ = s.steps.g_add_scalar_(1);
        let t = s.steps.int64_value(&[]) as i32;
        let bias_correction = (1.0 - s.betas.0.powi(t), 1.0 - s.betas.1.powi(t));
        for i in 0..s.groups.len() {
            let (params, grads, m, v) = s.select(i);
            let adam = s.hyper(i, lr);
            // timm: lr x wd (or lr^2 / peak x wd corrected), where hyper's weight_decay already
            // holds the corrected wd.
            let decoupled_decay = if self.decoupled { adam.lr * adam.weight_decay } else { 0.0 };
            let step = LambStep {
                adam,
                bias_correction,
                trust_clip: self.trust_clip,
                always_adapt: false,
                decoupled_decay,
                caution: self.caution,
            };
            foreach_lamb(&params, &grads, &m, &v, Some(&divisor), step)?;
        }
        Ok(())
    }

    group_accessors!(state.groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }
}
