//! Adam and AdamW on libtorch's fused kernels, the ones `torch.optim.Adam(fused=True)` and
//! `torch.optim.AdamW(fused=True)` run. AdamW decouples weight decay (p *= 1 - lr wd, then the Adam
//! update); Adam adds wd p to the gradient (L2), so the decay passes through the moments.
//! `TimmAdamW` runs timm's own foreach AdamW variants: `cadamw` (AdamWLegacy with caution, Liang
//! et al. 2024: the first moment zeroed where its sign disagrees with the gradient's before the
//! update, the rest scaled by 1 / the share kept, per tensor), `nadamw` (NAdamW, mlcommons'
//! algorithmic-efficiency version: AdamW with a Nesterov look-ahead numerator lerp(m, g, 1 - beta1))
//! and `cnadamw`. `Adopt` is timm's ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can
//! Converge with Any beta2"): the gradient normalised by the previous second moment, clipped at
//! (step - 1)^0.333, then momentum; the second moment updated last.

use super::{step_counter, AdamState, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_adamw_timm, foreach_adopt, fused_adam, AdoptOptions};
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

    group_accessors!(state.groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }
}

/// timm's foreach AdamW family: `nesterov` for NAdamW, `caution` for the cautious variants.
pub struct TimmAdamW {
    state: AdamState,
    nesterov: bool,
    caution: bool,
}

impl TimmAdamW {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, nesterov: bool, caution: bool) -> Self {
        Self { state: AdamState::new(groups, betas, eps, step_counter()), nesterov, caution }
    }
}

impl Optimizer for TimmAdamW {
    fn step(&mut self, lr: f64) -> Result<()> {
        let s = &mut self.state;
        let _ = tch::no_grad(|| s.steps.f_add_scalar_(1))?;
        // timm: beta ** step with the step a Python float.
        let t = s.steps.int64_value(&[]) as f64;
        let bias_correction = (1.0 - s.betas.0.powf(t), 1.0 - s.betas.1.powf(t));
        for i in 0..s.groups.len() {
            let (params, grads, m, v) = s.select(i);
            foreach_adamw_timm(
                &params,
                &grads,
                &m,
                &v,
                s.hyper(i, lr),
                bias_correction,
                self.nesterov,
                self.caution,
            )?;
        }
        Ok(())
    }

    group_accessors!(state.groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }
}

/// timm's ADOPT: `decoupled` for `adoptw`, `caution` for `cadopt`/`cadoptw`; timm's default
/// clipping exponent 0.333.
pub struct Adopt {
    state: AdamState,
    decoupled: bool,
    caution: bool,
}

/// timm's `clip_exp` default.
const ADOPT_CLIP_EXP: f64 = 0.333;

impl Adopt {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, decoupled: bool, caution: bool) -> Self {
        Self { state: AdamState::new(groups, betas, eps, step_counter()), decoupled, caution }
    }
}

impl Optimizer for Adopt {
    fn step(&mut self, lr: f64) -> Result<()> {
        let s = &mut self.state;
        let _ = tch::no_grad(|| s.steps.f_add_scalar_(1))?;
        let options = AdoptOptions {
            decoupled: self.decoupled,
            step: s.steps.int64_value(&[]),
            clip_exp: Some(ADOPT_CLIP_EXP),
            caution: self.caution,
        };
        for i in 0..s.groups.len() {
            let (params, grads, m, v) = s.select(i);
            foreach_adopt(&params, &grads, &m, &v, s.hyper(i, lr), options)?;
        }
        Ok(())
    }

    group_accessors!(state.groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }
}
