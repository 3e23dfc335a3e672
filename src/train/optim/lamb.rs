//! LAMB with timm's semantics (timm.optim.Lamb defaults: bias correction, grad averaging, global
//! gradient-norm clipping at 1.0, trust ratio only where weight decay applies): Adam's update plus
//! coupled weight decay, scaled per parameter by |p| / |update|. On libtorch's foreach kernels.

use super::{named, step_counter, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_clip_grad_norm, foreach_lamb, AdamStep, LambStep};
use tch::Tensor;

/// timm's default `max_grad_norm`: gradients are divided by max(1, |g| / 1.0) before the update.
const MAX_GRAD_NORM: f64 = 1.0;

pub struct Lamb {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_sq: Vec<Vec<Tensor>>,
    betas: (f64, f64),
    eps: f64,
    steps: Tensor,
}

impl Lamb {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64) -> Self {
        let (exp_avg, exp_avg_sq) = (zeros_like_groups(&groups), zeros_like_groups(&groups));
        Self { groups, exp_avg, exp_avg_sq, betas, eps, steps: step_counter() }
    }
}

impl Optimizer for Lamb {
    fn step(&mut self, lr: f64) -> Result<()> {
        let _ = self.steps.g_add_scalar_(1);
        let t = self.steps.int64_value(&[]) as i32;
        let bias_correction = (1.0 - self.betas.0.powi(t), 1.0 - self.betas.1.powi(t));
        // The global norm over every group's gradients (norm only: max_norm 0 leaves them as they are).
        let norm = foreach_clip_grad_norm(&self.grads(), 0.0)?;
        let divisor = (norm / MAX_GRAD_NORM).f_clamp_min(1.0)?;
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, sel) = g.with_grads(&[&self.exp_avg[i], &self.exp_avg_sq[i]]);
            let adam = AdamStep {
                lr,
                beta1: self.betas.0,
                beta2: self.betas.1,
                eps: self.eps,
                weight_decay: g.weight_decay,
            };
            let step = LambStep { adam, bias_correction, trust_clip: false, always_adapt: false };
            foreach_lamb(&params, &grads, &sel[0], &sel[1], Some(&divisor), step)?;
        }
        Ok(())
    }

    fn groups(&self) -> &[Group] {
        &self.groups
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("exp_avg", &self.groups, &self.exp_avg);
        s.extend(named("exp_avg_sq", &self.groups, &self.exp_avg_sq));
        s.push(("step".into(), self.steps.shallow_clone()));
        s
    }
}
