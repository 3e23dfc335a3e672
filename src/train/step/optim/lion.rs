//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") with timm's semantics
//! (timm.optim.Lion, foreach): the update is the sign of an interpolation between the momentum and
//! the gradient, so every element moves by exactly lr; weight decay is decoupled. One state tensor
//! per parameter (Adam keeps two). Its lr is typically 3-10x smaller and its weight decay 3-10x
//! larger than AdamW's, as the paper advises.

use super::{named, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::foreach_lion;
use tch::Tensor;

pub struct Lion {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    betas: (f64, f64),
    /// timm's cautious Lion (`clion`; Liang et al. 2024): the update zeroed where its sign
    /// disagrees with the gradient's, the rest scaled up by 1 / the share kept (per tensor).
    caution: bool,
}

impl Lion {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), caution: bool) -> Self {
        let exp_avg = zeros_like_groups(&groups);
        Self { groups, exp_avg, betas, caution }
    }
}

impl Optimizer for Lion {
    fn step(&mut self, lr: f64) -> Result<()> {
        for (g, exp_avg) in self.groups.iter().zip(&self.exp_avg) {
            let (params, grads, mut sel) = g.with_grads(&[exp_avg]);
            let m = sel.pop().unwrap_or_default();
            let lr = lr * g.lr_scale;
            foreach_lion(&params, &grads, &m, lr, self.betas, g.decay_at(lr), self.caution)?;
        }
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        named("exp_avg", &self.groups, &self.exp_avg)
    }
}
