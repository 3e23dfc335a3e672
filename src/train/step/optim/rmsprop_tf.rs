//! RMSpropTF with timm's semantics (timm.optim.RMSpropTF as timm's factory builds `rmsproptf`:
//! alpha 0.9, epsilon 1e-10 unless `opt_eps`, TensorFlow's order of operations): the squared
//! average starts at 1 (PyTorch's at 0), epsilon is added inside the square root, and the learning
//! rate is accumulated in the momentum buffer, so an lr change acts through the momentum as in
//! TensorFlow. Weight decay is added to the gradient. The optimizer of timm's EfficientNet,
//! MobileNet and RA2 recipes (with `opt_eps` 1e-3).

use super::{named, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_rmsprop_tf, RmspropTfStep};
use tch::Tensor;

/// timm's factory default for rmsproptf.
const ALPHA: f64 = 0.9;

pub struct RmspropTf {
    groups: Vec<Group>,
    square_avg: Vec<Vec<Tensor>>,
    momentum_buffer: Vec<Vec<Tensor>>,
    momentum: f64,
    eps: f64,
}

impl RmspropTf {
    pub fn new(groups: Vec<Group>, momentum: f64, eps: f64) -> Self {
        let square_avg =
            groups.iter().map(|g| g.params.iter().map(|p| p.ones_like().detach()).collect()).collect();
        let momentum_buffer = zeros_like_groups(&groups);
        Self { groups, square_avg, momentum_buffer, momentum, eps }
    }
}

impl Optimizer for RmspropTf {
    fn step(&mut self, lr: f64) -> Result<()> {
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, mut sel) = g.with_grads(&[&self.square_avg[i], &self.momentum_buffer[i]]);
            let buf = sel.pop().unwrap_or_default();
            let sq = sel.pop().unwrap_or_default();
            let step = RmspropTfStep {
                lr: lr * g.lr_scale,
                alpha: ALPHA,
                eps: self.eps,
                weight_decay: g.weight_decay,
                momentum: self.momentum,
            };
            foreach_rmsprop_tf(&params, &grads, &sq, &buf, step)?;
        }
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("square_avg", &self.groups, &self.square_avg);
        s.extend(named("momentum_buffer", &self.groups, &self.momentum_buffer));
        s
    }
}
