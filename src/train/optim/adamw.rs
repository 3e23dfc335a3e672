//! AdamW: torch.optim.AdamW (decoupled weight decay: p *= 1 - lr wd, then the Adam update) on
//! libtorch's fused kernel, the one `torch.optim.AdamW(fused=True)` runs.

use super::{named, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{fused_adamw, AdamStep};
use tch::{Kind, Tensor};

pub struct AdamW {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_sq: Vec<Vec<Tensor>>,
    betas: (f64, f64),
    eps: f64,
    /// Steps taken, as the float tensor on the parameters' device that the fused kernel reads.
    steps: Tensor,
}

impl AdamW {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64) -> Self {
        let device = groups.iter().flat_map(|g| g.params.first()).map(|p| p.device()).next();
        let steps = Tensor::zeros([], (Kind::Float, device.unwrap_or(tch::Device::Cpu)));
        let (exp_avg, exp_avg_sq) = (zeros_like_groups(&groups), zeros_like_groups(&groups));
        Self { groups, exp_avg, exp_avg_sq, betas, eps, steps }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, lr: f64) -> Result<()> {
        let _ = tch::no_grad(|| self.steps.f_add_scalar_(1))?;
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, sel) = g.with_grads(&[&self.exp_avg[i], &self.exp_avg_sq[i]]);
            let step = AdamStep {
                lr,
                beta1: self.betas.0,
                beta2: self.betas.1,
                eps: self.eps,
                weight_decay: g.weight_decay,
            };
            fused_adamw(&params, &grads, &sel[0], &sel[1], &self.steps, step)?;
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
