//! AdamW: torch.optim.AdamW (decoupled weight decay: p *= 1 - lr wd, then the Adam update) on
//! libtorch's fused kernel, the one `torch.optim.AdamW(fused=True)` runs.

use super::{AdamState, Group, Optimizer};
use crate::error::Result;
use crate::ffi::fused_adamw;
use tch::{Kind, Tensor};

pub struct AdamW(AdamState);

impl AdamW {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64) -> Self {
        // The step count is the float tensor on the parameters' device that the fused kernel reads.
        let device = groups.iter().flat_map(|g| g.params.first()).map(|p| p.device()).next();
        let steps = Tensor::zeros([], (Kind::Float, device.unwrap_or(tch::Device::Cpu)));
        Self(AdamState::new(groups, betas, eps, steps))
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, lr: f64) -> Result<()> {
        let s = &mut self.0;
        let _ = tch::no_grad(|| s.steps.f_add_scalar_(1))?;
        for i in 0..s.groups.len() {
            let (params, grads, m, v) = s.select(i);
            fused_adamw(&params, &grads, &m, &v, &s.steps, s.hyper(i, lr))?;
        }
        Ok(())
    }

    fn groups(&self) -> &[Group] {
        &self.0.groups
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.0.state()
    }
}
