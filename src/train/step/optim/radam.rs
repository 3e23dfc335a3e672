//! torch.optim's RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and
//! Beyond": Adam with its update rectified by the variance of the adaptive rate, plain momentum
//! SGD for the first steps, when that variance is not yet defined) and NAdam (Dozat 2016: Adam with
//! Nesterov momentum and torch's momentum-decay schedule mu_t = beta1 (1 - 0.5 x 0.96^(t x 0.004))),
//! as timm's factory builds them (`radam`, `radamw` with decoupled weight decay, `nadam`): the
//! per-step scalars as torch computes them in Python, the tensor work as its multi-tensor path
//! (the shim's `radam` / `nadam` steps).

use super::{named, step_counter, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_optimizer_step, NadamHyper, RadamHyper};
use tch::{Device, Kind, Tensor};

/// torch.optim.NAdam's `momentum_decay` default.
const NADAM_MOMENTUM_DECAY: f64 = 4e-3;

/// Which of torch's two rectified / Nesterov Adams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchAdamKind {
    Radam,
    Nadam,
}

pub struct TorchAdam {
    kind: TorchAdamKind,
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_sq: Vec<Vec<Tensor>>,
    betas: (f64, f64),
    eps: f64,
    decoupled: bool,
    steps: Tensor,
    /// NAdam's product of the mu_t so far (torch keeps it as a float32 tensor: so do we).
    mu_product: Tensor,
}

impl TorchAdam {
    pub fn new(
        kind: TorchAdamKind,
        groups: Vec<Group>,
        betas: (f64, f64),
        eps: f64,
        decoupled: bool,
    ) -> Self {
        Self {
            kind,
            exp_avg: zeros_like_groups(&groups),
            exp_avg_sq: zeros_like_groups(&groups),
            groups,
            betas,
            eps,
            decoupled,
            steps: step_counter(),
            mu_product: Tensor::ones([], (Kind::Float, Device::Cpu)),
        }
    }

    /// RAdam's two per-step scalars at learning rate `lr`, step `t` (torch's `unrect_step_size` and
    /// `bias_correction2`, the latter 0 while the step is not rectified).
    fn radam_scalars(&self, lr: f64, t: f64) -> (f64, f64) {
        let (beta1, beta2) = self.betas;
        let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * beta2.powf(t) / (1.0 - beta2.powf(t));
        let rect = if rho_t > 5.0 {
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).powf(0.5)
        } else {
            0.0
        };
        let unrectified = if rect > 0.0 { 0.0 } else { 1.0 };
        let bc1 = 1.0 - beta1.powf(t);
        let unrect_step_size = -(lr * unrectified / bc1);
        let bias_correction2 = -((1.0 - beta2.powf(t)).powf(0.5) * (lr * rect / bc1));
        (unrect_step_size, bias_correction2)
    }
}

impl Optimizer for TorchAdam {
    fn step(&mut self, lr: f64) -> Result<()> {
        let _ = tch::no_grad(|| self.steps.f_add_scalar_(1))?;
        let t = self.steps.int64_value(&[]) as f64;
        let (beta1, beta2) = self.betas;
        // NAdam: mu_product *= mu_t once per step (torch: per parameter, the same for all).
        let (mu, mu_next) = (
            beta1 * (1.0 - 0.5 * 0.96f64.powf(t * NADAM_MOMENTUM_DECAY)),
            beta1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * NADAM_MOMENTUM_DECAY)),
        );
        if self.kind == TorchAdamKind::Nadam {
            let product = self.mu_product.f_mul_scalar(mu)?;
            tch::no_grad(|| self.mu_product.f_copy_(&product))?;
        }
        let mu_product = self.mu_product.double_value(&[]);
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, sel) = g.with_grads(&[&self.exp_avg[i], &self.exp_avg_sq[i]]);
            if params.is_empty() {
                continue;
            }
            let lr = lr * g.lr_scale;
            let decoupled = self.decoupled as i32;
            let lists: Vec<&[Tensor]> = vec![&params, &grads, &sel[0], &sel[1]];
            match self.kind {
                TorchAdamKind::Radam => {
                    let (unrect_step_size, bias_correction2) = self.radam_scalars(lr, t);
                    let hyper = RadamHyper {
                        lr,
                        beta1,
                        beta2,
                        eps: self.eps,
                        weight_decay: g.weight_decay,
                        unrect_step_size,
                        bias_correction2,
                        decoupled,
                    };
                    foreach_optimizer_step(&lists, &hyper)?;
                }
                TorchAdamKind::Nadam => {
                    let hyper = NadamHyper {
                        lr,
                        beta1,
                        beta2,
                        eps: self.eps,
                        weight_decay: g.weight_decay,
                        bias_correction_sqrt: (1.0 - beta2.powf(t)).powf(0.5),
                        step_size_grads: -(lr * (1.0 - mu) / (1.0 - mu_product)),
                        step_size_expavg: -(lr * mu_next / (1.0 - mu_product * mu_next)),
                        decoupled,
                    };
                    foreach_optimizer_step(&lists, &hyper)?;
                }
            }
        }
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("exp_avg", &self.groups, &self.exp_avg);
        s.extend(named("exp_avg_sq", &self.groups, &self.exp_avg_sq));
        s.push(("step".into(), self.steps.shallow_clone()));
        if self.kind == TorchAdamKind::Nadam {
            s.push(("mu_product".into(), self.mu_product.shallow_clone()));
        }
        s
    }
}
