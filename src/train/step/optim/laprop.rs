//! LaProp (Ziyin et al. 2020, "LaProp: Separating Momentum and Adaptivity in Adam") with timm's
//! semantics (timm.optim.LaProp, foreach): the gradient is first normalised by the RMS of past
//! gradients, then averaged into the momentum (Adam does the reverse), so momentum and adaptivity
//! take independent betas; decoupled weight decay (lr wd, or lr^2 / peak wd with
//! `--corrected-weight-decay`, timm's `lapropc`); `claprop` adds timm's caution. timm's bias
//! corrections follow the learning rate's history: step size lr / EMA(lr) and EMA(1) for the second
//! moment, both state (per group here; timm keeps them per parameter, the same values whenever every
//! parameter of a group has a gradient at every step).

use super::{named, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_optimizer_step, LapropHyper};
use tch::{Device, Kind, Tensor};

pub struct LaProp {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_sq: Vec<Vec<Tensor>>,
    /// Per group: EMA of the learning rate with beta1 (timm's `exp_avg_lr_1`, a Python float:
    /// kept in float64).
    exp_avg_lr_1: Vec<Tensor>,
    /// Per group: EMA of 1 with beta2 (timm's `exp_avg_lr_2`, a float32 tensor: kept in float32).
    exp_avg_lr_2: Vec<Tensor>,
    betas: (f64, f64),
    eps: f64,
    caution: bool,
}

impl LaProp {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, caution: bool) -> Self {
        let scalars = |kind| groups.iter().map(|_| Tensor::zeros([], (kind, Device::Cpu))).collect();
        Self {
            exp_avg: zeros_like_groups(&groups),
            exp_avg_sq: zeros_like_groups(&groups),
            exp_avg_lr_1: scalars(Kind::Double),
            exp_avg_lr_2: scalars(Kind::Float),
            groups,
            betas,
            eps,
            caution,
        }
    }
}

impl Optimizer for LaProp {
    fn step(&mut self, lr: f64) -> Result<()> {
        let (beta1, beta2) = self.betas;
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, sel) = g.with_grads(&[&self.exp_avg[i], &self.exp_avg_sq[i]]);
            if params.is_empty() {
                continue;
            }
            let lr = lr * g.lr_scale;
            // timm's order of operations: lr_1 * beta1 + (1 - beta1) * lr in float64,
            // lr_2 * beta2 + (1 - beta2) in float32.
            let lr_1 = self.exp_avg_lr_1[i].double_value(&[]) * beta1 + (1.0 - beta1) * lr;
            let lr_2 = self.exp_avg_lr_2[i].f_mul_scalar(beta2)?.f_add_scalar(1.0 - beta2)?;
            tch::no_grad(|| -> Result<()> {
                let _ = self.exp_avg_lr_1[i].f_fill_(lr_1)?;
                self.exp_avg_lr_2[i].f_copy_(&lr_2)?;
                Ok(())
            })?;
            let step_size = if lr_1 != 0.0 { lr / lr_1 } else { 0.0 };
            let decay = lr * g.decay_at(lr);
            let hyper = LapropHyper {
                lr,
                beta1,
                beta2,
                eps: self.eps,
                decay,
                step_size,
                bc2: self.exp_avg_lr_2[i].double_value(&[]),
                caution: self.caution as i32,
            };
            let lists: Vec<&[Tensor]> = vec![&params, &grads, &sel[0], &sel[1]];
            foreach_optimizer_step(&lists, &hyper)?;
        }
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("exp_avg", &self.groups, &self.exp_avg);
        s.extend(named("exp_avg_sq", &self.groups, &self.exp_avg_sq));
        for (g, (a, b)) in self.groups.iter().zip(self.exp_avg_lr_1.iter().zip(&self.exp_avg_lr_2)) {
            let kind = format!("{:?}", g.kind).to_lowercase();
            s.push((format!("exp_avg_lr_1.{kind}"), a.shallow_clone()));
            s.push((format!("exp_avg_lr_2.{kind}"), b.shallow_clone()));
        }
        s
    }
}
