//! Adan (Xie et al. 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
//! Models") with timm's semantics (timm.optim.Adan, foreach): Adam-like, with a third moment of
//! the gradient's change between steps (a Nesterov estimate without the extra gradient), three
//! betas (default 0.98, 0.92, 0.99) and weight decay as a proximal step, p / (1 + lr wd), or, in
//! `adanw` (`no_prox`), decoupled, p (1 - lr wd). The paper trains ResNet-50 on ImageNet with it
//! (timm's recipes, lr 1.5e-2 to 3e-2 at batch 2048, wd 0.02, 3 betas as above).

use super::{named, step_counter, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_optimizer_step, AdanHyper};
use tch::Tensor;

pub struct Adan {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_diff: Vec<Vec<Tensor>>,
    exp_avg_sq: Vec<Vec<Tensor>>,
    /// Minus the previous step's gradient (timm's `neg_pre_grad`).
    neg_pre_grad: Vec<Vec<Tensor>>,
    betas: (f64, f64, f64),
    eps: f64,
    /// Decoupled weight decay instead of the proximal step (timm's `no_prox`, `adanw`).
    no_prox: bool,
    /// timm's `cadan`: the first moment masked where its sign disagrees with the gradient's.
    caution: bool,
    steps: Tensor,
}

impl Adan {
    pub fn new(groups: Vec<Group>, betas: (f64, f64, f64), eps: f64, no_prox: bool, caution: bool) -> Self {
        Self {
            exp_avg: zeros_like_groups(&groups),
            exp_avg_diff: zeros_like_groups(&groups),
            exp_avg_sq: zeros_like_groups(&groups),
            neg_pre_grad: zeros_like_groups(&groups),
            groups,
            betas,
            eps,
            no_prox,
            caution,
            steps: step_counter(),
        }
    }
}

impl Optimizer for Adan {
    fn step(&mut self, lr: f64) -> Result<()> {
        let _ = tch::no_grad(|| self.steps.f_add_scalar_(1))?;
        // timm: beta ** step with the group's step an int.
        let t = self.steps.int64_value(&[]) as i32;
        let (beta1, beta2, beta3) = self.betas;
        let bc = |b: f64| 1.0 - b.powf(t as f64);
        for (i, g) in self.groups.iter().enumerate() {
            let (params, grads, sel) = g.with_grads(&[
                &self.exp_avg[i],
                &self.exp_avg_diff[i],
                &self.exp_avg_sq[i],
                &self.neg_pre_grad[i],
            ]);
            let lr = lr * g.lr_scale;
            let hyper = AdanHyper {
                lr,
                beta1,
                beta2,
                beta3,
                eps: self.eps,
                weight_decay: g.weight_decay,
                bc1: bc(beta1),
                bc2: bc(beta2),
                bc3_sqrt: bc(beta3).sqrt(),
                no_prox: self.no_prox as i32,
                caution: self.caution as i32,
                first_step: (t == 1) as i32,
            };
            let lists: Vec<&[Tensor]> =
                [&params[..], &grads[..]].into_iter().chain(sel.iter().map(|l| &l[..])).collect();
            foreach_optimizer_step(&lists, &hyper)?;
        }
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("exp_avg", &self.groups, &self.exp_avg);
        s.extend(named("exp_avg_diff", &self.groups, &self.exp_avg_diff));
        s.extend(named("exp_avg_sq", &self.groups, &self.exp_avg_sq));
        s.extend(named("neg_pre_grad", &self.groups, &self.neg_pre_grad));
        s.push(("step".into(), self.steps.shallow_clone()));
        s
    }
}
