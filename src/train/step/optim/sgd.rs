//! SGD with momentum: torch.optim.SGD's update (dampening 0; its fused kernel, `fused=True`), heavy
//! ball or Nesterov; with a trust ratio, timm's Lars (LARS/LARC): the same update on per-tensor
//! rescaled gradients; with decoupled weight decay, timm's SGDW (p *= 1 - lr wd first, then SGD
//! without decay).

use super::{named, step_counter, zeros_like_groups, Group, Optimizer};
use crate::error::Result;
use crate::ffi::{foreach_sgd, LarsTrust, SgdStep};
use tch::Tensor;

pub struct Sgd {
    groups: Vec<Group>,
    /// Momentum buffers, per group, in parameter order.
    bufs: Vec<Vec<Tensor>>,
    momentum: f64,
    nesterov: bool,
    /// LARS's per-tensor gradient scaling; None: plain SGD.
    trust: Option<LarsTrust>,
    /// Steps taken (the first one initialises the momentum buffers).
    steps: Tensor,
    /// timm's SGDW: the weight decay multiplies the weights before the step instead of entering
    /// the gradient.
    decoupled: bool,
}

impl Sgd {
    pub fn new(groups: Vec<Group>, momentum: f64, nesterov: bool, trust: Option<LarsTrust>) -> Self {
        let bufs = zeros_like_groups(&groups);
        Self { groups, bufs, momentum, nesterov, trust, steps: step_counter(), decoupled: false }
    }

    /// timm's SGDW (`sgdw`): decoupled weight decay.
    pub fn decoupled(groups: Vec<Group>, momentum: f64, nesterov: bool) -> Self {
        Self { decoupled: true, ..Self::new(groups, momentum, nesterov, None) }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, lr: f64) -> Result<()> {
        let first_step = self.steps.int64_value(&[]) == 0;
        for (g, bufs) in self.groups.iter().zip(&self.bufs) {
            let (params, grads, sel) = g.with_grads(&[bufs]);
            let lr = lr * g.lr_scale;
            let weight_decay = if self.decoupled {
                // timm's _multi_tensor_sgdw: params *= 1 - wd_scale x wd, before the update.
                let keep = 1.0 - lr * g.decay_at(lr);
                if keep != 1.0 {
                    for p in &params {
                        let _ = tch::no_grad(|| p.shallow_clone().f_mul_scalar_(keep))?;
                    }
                }
                0.0
            } else {
                g.weight_decay
            };
            let step = SgdStep {
                lr,
                momentum: self.momentum,
                weight_decay,
                nesterov: self.nesterov,
                first_step,
                trust: self.trust,
            };
            foreach_sgd(&params, &grads, &sel[0], step)?;
        }
        let _ = self.steps.g_add_scalar_(1);
        Ok(())
    }

    group_accessors!(groups);

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("momentum_buffer", &self.groups, &self.bufs);
        s.push(("step".into(), self.steps.shallow_clone()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn follows_torch_update_rule() {
        // torch.optim.SGD(momentum=m, weight_decay=wd, nesterov=n): d = g + wd p; b = d (first step)
        // else m b + d; p -= lr (n ? d + m b : b).
        for nesterov in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let p = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
            let mut groups = Group::split(&vs, crate::train::step::optim::WeightDecay::weights_only(0.0));
            groups[0].weight_decay = 0.1;
            let mut sgd = Sgd::new(groups, 0.9, nesterov, None);
            let (mut pv, mut bv) = ([1.0f64, -2.0], [0.0f64; 2]);
            for (step, g) in [[0.5f64, 1.0], [-0.25, 2.0]].iter().enumerate() {
                let loss = (&p * Tensor::from_slice(&[g[0] as f32, g[1] as f32])).sum(Kind::Float);
                loss.backward();
                sgd.step(0.1).unwrap();
                sgd.zero_grad().unwrap();
                for i in 0..2 {
                    let d = g[i] + 0.1 * pv[i];
                    bv[i] = if step == 0 { d } else { 0.9 * bv[i] + d };
                    pv[i] -= 0.1 * if nesterov { d + 0.9 * bv[i] } else { bv[i] };
                }
                let got: Vec<f32> = Vec::try_from(&p).unwrap();
                assert!(
                    (got[0] as f64 - pv[0]).abs() < 1e-6 && (got[1] as f64 - pv[1]).abs() < 1e-6,
                    "{got:?} vs {pv:?}"
                );
            }
            let names: Vec<String> = sgd.state().into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, ["momentum_buffer.w", "step"]);
        }
    }
}
