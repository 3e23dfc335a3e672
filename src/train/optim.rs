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

    /// The defined gradients, in group order (a parameter the last backward did not reach has none).
    pub fn grads(&self) -> Vec<Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().map(|p| p.grad())).filter(|g| g.defined()).collect()
    }

    /// One SGD step over the parameters that have gradients.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        for g in &self.groups {
            let (mut params, mut grads, mut bufs) = (Vec::new(), Vec::new(), Vec::new());
            for (p, b) in g.params.iter().zip(&g.bufs) {
                let grad = p.grad();
                if grad.defined() {
                    params.push(p.shallow_clone());
                    grads.push(grad);
                    bufs.push(b.shallow_clone());
                }
            }
            let step = SgdStep {
                lr,
                momentum: self.momentum,
                weight_decay: g.weight_decay,
                nesterov: self.nesterov,
                first_step: self.steps == 0,
            };
            foreach_sgd(&params, &grads, &bufs, step)?;
        }
        self.steps += 1;
        Ok(())
    }

    /// Drops the gradients (PyTorch's `zero_grad(set_to_none=True)`): no memset.
    pub fn zero_grad(&self) -> Result<()> {
        for g in &self.groups {
            crate::ffi::grads_set_none(&g.params)?;
        }
        Ok(())
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
