//! SGD with momentum (torch.optim.SGD semantics, foreach kernels) over parameter groups with
//! their own weight decay. The momentum buffers are plain tensors, so they go into checkpoints.

use crate::error::Result;
use crate::ffi::{foreach_sgd, SgdStep};
use crate::model::resnet::{param_group, ParamGroup};
use std::collections::BTreeMap;
use tch::{nn, Tensor};

/// One group: parameters sharing a weight decay.
pub struct Group {
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub bufs: Vec<Tensor>,
    pub weight_decay: f64,
}

pub struct Sgd {
    pub groups: Vec<Group>,
    pub momentum: f64,
    pub nesterov: bool,
    /// Steps taken (the first one initialises the momentum buffers).
    pub steps: usize,
}

impl Sgd {
    /// Groups the trainable variables: conv/fc weights decay; BN parameters and biases do not;
    /// activation coefficients decay only when `act_weight_decay` (timm's and torchvision's practice).
    pub fn new(
        vs: &nn::VarStore,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        act_weight_decay: bool,
    ) -> Self {
        let mut by_group: BTreeMap<u8, (Vec<String>, Vec<Tensor>)> = BTreeMap::new();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            if !t.requires_grad() {
                continue; // BN running statistics
            }
            let g = match param_group(&name, &t.size()) {
                ParamGroup::Decay => 0,
                ParamGroup::NoDecay => 1,
                ParamGroup::Activation => 2,
            };
            let e = by_group.entry(g).or_default();
            e.0.push(name);
            e.1.push(t);
        }
        let groups = by_group
            .into_iter()
            .map(|(g, (names, params))| {
                let bufs = params.iter().map(|p| p.zeros_like()).collect();
                let wd = match g {
                    0 => weight_decay,
                    2 if act_weight_decay => weight_decay,
                    _ => 0.0,
                };
                Group { names, params, bufs, weight_decay: wd }
            })
            .collect();
        Self { groups, momentum, nesterov, steps: 0 }
    }

    /// Every parameter's gradient, in group order (undefined gradients become zeros).
    pub fn grads(&self) -> Vec<Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().map(|p| p.grad())).collect()
    }

    pub fn step(&mut self, lr: f64) -> Result<()> {
        for g in &self.groups {
            let grads: Vec<Tensor> = g.params.iter().map(|p| p.grad()).collect();
            let step = SgdStep {
                lr,
                momentum: self.momentum,
                weight_decay: g.weight_decay,
                nesterov: self.nesterov,
                first_step: self.steps == 0,
            };
            foreach_sgd(&g.params, &grads, &g.bufs, step)?;
        }
        self.steps += 1;
        Ok(())
    }

    pub fn zero_grad(&self) {
        for g in &self.groups {
            for p in &g.params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.detach_().zero_();
                }
            }
        }
    }

    /// Momentum buffers by parameter name, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .flat_map(|g| g.names.iter().cloned().zip(g.bufs.iter().map(|b| b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers saved by `state`.
    pub fn load_state(&mut self, bufs: &BTreeMap<String, Tensor>, steps: usize) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for g in &mut self.groups {
                for (name, buf) in g.names.iter().zip(g.bufs.iter_mut()) {
                    let saved = bufs.get(name).ok_or_else(|| {
                        crate::error::Error::Torch(format!("checkpoint has no momentum buffer for {name}"))
                    })?;
                    buf.f_copy_(&saved.f_to_kind(buf.kind())?.f_to_device(buf.device())?)?;
                }
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}
