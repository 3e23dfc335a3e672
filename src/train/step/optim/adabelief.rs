//! AdaBelief (Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
//! Observed Gradients") with timm's semantics (timm.optim.AdaBelief, foreach, its defaults:
//! decoupled weight decay, eps 1e-16, no amsgrad): Adam whose second moment is the EMA of
//! (g - m)^2, the gradient's deviation from its prediction, plus eps. `radabelief` rectifies the
//! update as RAdam does (SGD with momentum for the first steps, timm's `degenerated_to_sgd`).

use super::{named, step_counter, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_optimizer_step, AdabeliefHyper};
use tch::Tensor;

pub struct AdaBelief {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_var: Vec<Vec<Tensor>>,
    betas: (f64, f64),
    eps: f64,
    rectify: bool,
    steps: Tensor,
}

impl AdaBelief {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, rectify: bool) -> Self {
        Self {
            exp_avg: zeros_like_groups(&groups),
            exp_avg_var: zeros_like_groups(&groups),
            groups,
            betas,
            eps,
            rectify,
            steps: step_counter(),
        }
    }

    /// timm's rectification at step `t`: (0 = off, 1 = adaptive, 2 = SGD, 3 = no update; the
    /// learning-rate-free step size).
    fn rectified(&self, t: i32) -> (i32, f64) {
        if !self.rectify {
            return (0, 0.0);
        }
        let (beta1, beta2) = self.betas;
        let beta2_t = beta2.powf(t as f64);
        let num_sma_max = 2.0 / (1.0 - beta2) - 1.0;
        let num_sma = num_sma_max - 2.0 * t as f64 * beta2_t / (1.0 - beta2_t);
        if num_sma >= 5.0 {
            let step_size = ((1.0 - beta2_t) * (num_sma - 4.0) / (num_sma_max - 4.0) * (num_sma - 2.0)
                / num_sma
                * num_sma_max
                / (num_sma_max - 2.0))
                .sqrt()
                / (1.0 - beta1.powf(t as f64));
            (1, step_size)
        } else {
            // degenerated_to_sgd (timm's default): momentum SGD with the first moment's bias correction.
            (2, 1.0 / (1.0 - beta1.powf(t as f64)))
        }
    }
}

impl Optimizer for AdaBelief {
    fn step(&mut self, lr: f64) -> Result<()> {
        let _ = tch::no_grad(|| self.steps.f_add_scalar_(1))?;
        let t = self.steps.int64_value(&[]) as i32;
        let (beta1, beta2) = self.betas;
        let (bc1, bc2) = (1.0 - beta1.powf(t as f64), 1.0 - beta2.powf(t as f64));
        let (rectify, step_size) = self.rectified(t);
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, sel) = g.with_grads(&[&self.exp_avg[i], &self.exp_avg_var[i]]);
            if params.is_empty() {
                continue;
            }
            let lr = lr * g.lr_scale;
            let hyper = AdabeliefHyper {
                lr,
                beta1,
                beta2,
                eps: self.eps,
                weight_decay: g.weight_decay,
                bc1,
                bc2,
                step_size,
                rectify,
            };
            let lists: Vec<&[Tensor]> = vec![&params, &grads, &sel[0], &sel[1]];
            foreach_optimizer_step(&lists, &hyper)?;
        }
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("exp_avg", &self.groups, &self.exp_avg);
        s.extend(named("exp_avg_var", &self.groups, &self.exp_avg_var));
        s.push(("step".into(), self.steps.shallow_clone()));
        s
    }
}
