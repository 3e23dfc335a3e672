//! Adam and AdamW on libtorch's fused kernels, the ones `torch.optim.Adam(fused=True)` and
//! `torch.optim.AdamW(fused=True)` run. AdamW decouples weight decay (p *= 1 - lr wd, then the Adam
//! update); Adam adds wd p to the gradient (L2), so the decay passes through the moments.
//! `CautiousAdamW` is timm's `cadamw` (AdamWLegacy with caution, Liang et al. 2024), foreach: the
//! first moment is zeroed where its sign disagrees with the gradient's before the update, the rest
//! scaled by 1 / the share kept (per tensor).

use super::{step_counter, AdamState, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_adamw_cautious, fused_adam};
use tch::{Kind, Tensor};

pub struct Adam {
    state: AdamState,
    /// AdamW's decoupled weight decay (else Adam's L2 on the gradient).
    decoupled: bool,
}

impl Adam {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, decoupled: bool) -> Self {
        // The step count is the float tensor on the parameters' device that the fused kernel reads.
        let device = groups.iter().flat_map(|g| g.params.first()).map(|p| p.device()).next();
        let steps = Tensor::zeros([], (Kind::Float, device.unwrap_or(tch::Device::Cpu)));
        Self { state: AdamState::new(groups, betas, eps, steps), decoupled }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, lr: f64) -> Result<()> {
        let s = &mut self.state;
        let _ = tch::no_grad(|| s.steps.f_add_scalar_(1))?;
        for i in 0..s.groups.len() {
            let (params, grads, m, v) = s.select(i);
            fused_adam(&params, &grads, &m, &v, &s.steps, s.hyper(i, lr), self.decoupled)?;
        }
        Ok(())
    }

    fn groups(&self) -> &[Group] {
        &self.state.groups
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }
}

pub struct CautiousAdamW {
    state: AdamState,
}

impl CautiousAdamW {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64) -> Self {
        Self { state: AdamState::new(groups, betas, eps, step_counter()) }
    }
}

impl Optimizer for CautiousAdamW {
    fn step(&mut self, lr: f64) -> Result<()> {
        let s = &mut self.state;
        let _ = tch::no_grad(|| s.steps.f_add_scalar_(1))?;
        // timm: beta ** step with the step a Python float.
        let t = s.steps.int64_value(&[]) as f64;
        let bias_correction = (1.0 - s.betas.0.powf(t), 1.0 - s.betas.1.powf(t));
        for i in 0..s.groups.len() {
            let (params, grads, m, v) = s.select(i);
            foreach_adamw_cautious(&params, &grads, &m, &v, s.hyper(i, lr), bias_correction)?;
        }
        Ok(())
    }

    fn groups(&self) -> &[Group] {
        &self.state.groups
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }
}
