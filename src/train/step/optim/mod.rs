//! The optimizers, by timm's names, on libtorch's multi-tensor kernels; `OPTIMIZERS` holds their
//! facts. SGD (torch.optim.SGD, `_fused_sgd_`) and
//! LARS (timm's Lars: SGD on trust-ratio-scaled gradients, foreach), Adam and AdamW (torch.optim.Adam/AdamW,
//! `_fused_adam_`/`_fused_adamw_`), LAMB (timm's Lamb, foreach), Lion (timm's Lion, foreach),
//! RMSpropTF (timm's, foreach), timm's NAdamW and ADOPT (foreach) and timm's cautious variants
//! (`cadamw`, `cnadamw`, `cadopt`, `cadoptw`, `clion`, foreach); timm's Lamb variants with decoupled
//! decay and caution, Adan, LaProp and AdaBelief, and torch.optim's RAdam and NAdam (foreach, through
//! the shim's `rt_foreach_optimizer_step`).
//! Each owns its state as named tensors, which is what checkpoints and the guards' snapshots save
//! and restore.

/// `Optimizer::groups` and `groups_mut` for an optimizer that keeps its groups at `self.$path`
/// (every optimizer here; their state differs, their parameter groups do not).
macro_rules! group_accessors {
    ($($path:ident).+) => {
        fn groups(&self) -> &[Group] {
            &self.$($path).+
        }

        fn groups_mut(&mut self) -> &mut [Group] {
            &mut self.$($path).+
        }
    };
}

mod adabelief;
mod adam;
mod adan;
mod lamb;
mod laprop;
mod lion;
mod radam;
mod rmsprop_tf;
mod sgd;

pub use adabelief::AdaBelief;
pub use adam::{Adam, Adopt, TimmAdamW};
pub use adan::Adan;
pub use lamb::Lamb;
pub use laprop::LaProp;
pub use lion::Lion;
pub use radam::{TorchAdam, TorchAdamKind};
pub use rmsprop_tf::RmspropTf;
pub use sgd::Sgd;

use crate::error::Result;
use crate::ffi::LarsTrust;
use crate::model::resnet::{param_group, ParamGroup};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// The optimizer, by timm's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptKind {
    /// SGD with Nesterov momentum (timm's `sgd`).
    Sgd,
    /// SGD with heavy-ball momentum (timm's `momentum`; torchvision's recipes).
    Momentum,
    /// The same as `sgd`.
    Nesterov,
    /// Adam with weight decay added to the gradient (L2; torch.optim.Adam, timm's `adam`).
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// Layer-wise adaptive Adam (timm's Lamb; ResNet Strikes Back A2/A3).
    Lamb,
    /// LAMB with the trust ratio capped at 1 (timm's `lambc`).
    Lambc,
    /// Layer-wise adaptive rate scaling on heavy-ball SGD (timm's Lars; You et al. 2017), the
    /// large-batch ResNet-50 optimizer.
    Lars,
    /// LARS with the ratio clipped so no tensor's rate exceeds the schedule's (timm's `larc`).
    Larc,
    /// LARS with Nesterov momentum (timm's `nlars`).
    Nlars,
    /// LARC with Nesterov momentum (timm's `nlarc`).
    Nlarc,
    /// Sign momentum with decoupled weight decay (timm's Lion; Chen et al. 2023): use a 3-10x
    /// smaller lr and a larger weight decay than AdamW's.
    Lion,
    /// Cautious Lion (timm's `clion`; Liang et al. 2024): Lion's update kept only where its sign
    /// agrees with the gradient's, rescaled by the share kept.
    Clion,
    /// Cautious AdamW (timm's `cadamw`: AdamWLegacy with caution): AdamW's first moment kept only
    /// where its sign agrees with the gradient's, rescaled by the share kept.
    Cadamw,
    /// TensorFlow-style RMSprop (timm's `rmsproptf`: EfficientNet, MobileNet, RA2 recipes).
    Rmsproptf,
    /// SGD with Nesterov momentum and decoupled weight decay (timm's `sgdw`: the weights shrink by
    /// 1 - lr wd before the step; with `--corrected-weight-decay`, timm's `sgdc`).
    Sgdw,
    /// AdamW with a Nesterov look-ahead (timm's `nadamw`, mlcommons' algorithmic-efficiency
    /// version).
    Nadamw,
    /// Cautious NAdamW (timm's `cnadamw`).
    Cnadamw,
    /// ADOPT (timm's `adopt`; Taniguchi et al. 2024): Adam that converges with any beta2; the
    /// gradient normalised by the previous second moment and clipped before the momentum; L2
    /// weight decay on the gradient.
    Adopt,
    /// ADOPT with decoupled weight decay (timm's `adoptw`).
    Adoptw,
    /// Cautious ADOPT (timm's `cadopt`).
    Cadopt,
    /// Cautious ADOPT with decoupled weight decay (timm's `cadoptw`).
    Cadoptw,
    /// LAMB with decoupled weight decay (timm's `lambw`: p -= lr wd p before the trust ratio).
    Lambw,
    /// LAMB with decoupled weight decay and the trust ratio capped at 1 (timm's `lambcw`).
    Lambcw,
    /// Cautious LAMB (timm's `clamb`).
    Clamb,
    /// Cautious LAMB with decoupled weight decay (timm's `clambw`).
    Clambw,
    /// Adan (timm's `adan`; Xie et al. 2022): Adaptive Nesterov momentum, three betas (default
    /// 0.98,0.92,0.99), weight decay as a proximal step.
    Adan,
    /// Adan with decoupled weight decay (timm's `adanw`, `no_prox`).
    Adanw,
    /// Cautious Adan (timm's `cadan`).
    Cadan,
    /// Cautious Adan with decoupled weight decay (timm's `cadanw`).
    Cadanw,
    /// LaProp (timm's `laprop`; Ziyin et al. 2020): the gradient normalised, then averaged into the
    /// momentum; decoupled weight decay; default eps 1e-15.
    Laprop,
    /// Cautious LaProp (timm's `claprop`).
    Claprop,
    /// Rectified Adam (torch.optim.RAdam, timm's `radam`; Liu et al. 2020), L2 weight decay.
    Radam,
    /// RAdam with decoupled weight decay (timm's `radamw`).
    Radamw,
    /// Adam with Nesterov momentum (torch.optim.NAdam, timm's `nadam`; Dozat 2016), L2 weight decay.
    Nadam,
    /// AdaBelief (timm's `adabelief`; Zhuang et al. 2020): the second moment of g - m; decoupled
    /// weight decay; default eps 1e-16.
    Adabelief,
    /// Rectified AdaBelief (timm's `radabelief`).
    Radabelief,
}

impl OptKind {
    /// The name a config and the command line give it (timm's, where timm has it).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }

    /// The optimizer's row of the catalog.
    pub fn info(self) -> &'static OptInfo {
        OPTIMIZERS.iter().find(|i| i.kind == self).expect("every optimizer has a row in OPTIMIZERS")
    }

    /// The names of the optimizers for which `pred` holds, for messages ("adam, adamw, ...").
    pub fn names_where(pred: impl Fn(&OptInfo) -> bool) -> String {
        OPTIMIZERS.iter().filter(|i| pred(i)).map(|i| i.kind.name()).collect::<Vec<_>>().join(", ")
    }

    /// One of timm's Lars variants.
    pub fn is_lars(self) -> bool {
        self.info().family == Family::Lars
    }

    /// Whether the weight decay is decoupled from the gradient (what timm's corrected weight decay
    /// applies to).
    pub fn decouples_weight_decay(self) -> bool {
        self.info().decoupled
    }

    /// The number of betas (`--opt-betas`): three for Adan, else two.
    pub fn num_betas(self) -> usize {
        self.info().betas.map_or(2, |b| b.len())
    }

    /// One of timm's Adan variants.
    pub fn is_adan(self) -> bool {
        self.info().family == Family::Adan
    }

    /// One of timm's Lamb variants.
    pub fn is_lamb(self) -> bool {
        self.info().family == Family::Lamb
    }

    /// One of timm's ADOPT variants.
    pub fn is_adopt(self) -> bool {
        self.info().family == Family::Adopt
    }

    /// The optimizer's default betas (the first two), None where it has none.
    pub fn default_betas(self) -> Option<(f64, f64)> {
        self.info().betas.map(|b| (b[0], b[1]))
    }

    /// Whether the optimizer has an epsilon (`--opt-eps`).
    pub fn has_eps(self) -> bool {
        self.info().eps.is_some()
    }
}

/// Which implementation steps an optimizer (src/train/step/optim/*.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Sgd,
    Lars,
    Adam,
    TimmAdamW,
    Lamb,
    Adan,
    Laprop,
    TorchAdam,
    AdaBelief,
    Adopt,
    Lion,
    RmspropTf,
}

/// What the code needs to know about an optimizer, one row each (timm's `OptimInfo` registry is
/// the model): the predicates above, `create` and the config's messages read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptInfo {
    pub kind: OptKind,
    pub family: Family,
    /// Decoupled weight decay (p -= lr wd p, not wd p added to the gradient).
    pub decoupled: bool,
    /// Default betas, as many as `--opt-betas` takes (None: it has none).
    pub betas: Option<&'static [f64]>,
    /// Default epsilon (None: it has none).
    pub eps: Option<f64>,
    /// Nesterov momentum or look-ahead.
    pub nesterov: bool,
    /// timm's caution: the update kept where its sign agrees with the gradient's.
    pub caution: bool,
}

const ADAM_BETAS: &[f64] = &[0.9, 0.999];

const fn row(
    kind: OptKind,
    family: Family,
    decoupled: bool,
    betas: Option<&'static [f64]>,
    eps: Option<f64>,
) -> OptInfo {
    OptInfo { kind, family, decoupled, betas, eps, nesterov: false, caution: false }
}

const fn nesterov(mut i: OptInfo) -> OptInfo {
    i.nesterov = true;
    i
}

const fn cautious(mut i: OptInfo) -> OptInfo {
    i.caution = true;
    i
}

/// Every optimizer, with timm's and torch's defaults.
pub const OPTIMIZERS: &[OptInfo] = {
    use Family as F;
    use OptKind as K;
    let adan: Option<&'static [f64]> = Some(&[0.98, 0.92, 0.99]);
    let lion: Option<&'static [f64]> = Some(&[0.9, 0.99]);
    let adopt: Option<&'static [f64]> = Some(&[0.9, 0.9999]);
    let adam = Some(ADAM_BETAS);
    &[
        nesterov(row(K::Sgd, F::Sgd, false, None, None)),
        row(K::Momentum, F::Sgd, false, None, None),
        nesterov(row(K::Nesterov, F::Sgd, false, None, None)),
        nesterov(row(K::Sgdw, F::Sgd, true, None, None)),
        row(K::Lars, F::Lars, false, None, Some(1e-8)),
        row(K::Larc, F::Lars, false, None, Some(1e-8)),
        nesterov(row(K::Nlars, F::Lars, false, None, Some(1e-8))),
        nesterov(row(K::Nlarc, F::Lars, false, None, Some(1e-8))),
        row(K::Adam, F::Adam, false, adam, Some(1e-8)),
        row(K::Adamw, F::Adam, true, adam, Some(1e-8)),
        cautious(row(K::Cadamw, F::TimmAdamW, true, adam, Some(1e-8))),
        nesterov(row(K::Nadamw, F::TimmAdamW, true, adam, Some(1e-8))),
        cautious(nesterov(row(K::Cnadamw, F::TimmAdamW, true, adam, Some(1e-8)))),
        row(K::Lamb, F::Lamb, false, adam, Some(1e-6)),
        row(K::Lambc, F::Lamb, false, adam, Some(1e-6)),
        row(K::Lambw, F::Lamb, true, adam, Some(1e-6)),
        row(K::Lambcw, F::Lamb, true, adam, Some(1e-6)),
        cautious(row(K::Clamb, F::Lamb, false, adam, Some(1e-6))),
        cautious(row(K::Clambw, F::Lamb, true, adam, Some(1e-6))),
        row(K::Adan, F::Adan, false, adan, Some(1e-8)),
        row(K::Adanw, F::Adan, false, adan, Some(1e-8)),
        cautious(row(K::Cadan, F::Adan, false, adan, Some(1e-8))),
        cautious(row(K::Cadanw, F::Adan, false, adan, Some(1e-8))),
        row(K::Laprop, F::Laprop, true, adam, Some(1e-15)),
        cautious(row(K::Claprop, F::Laprop, true, adam, Some(1e-15))),
        row(K::Radam, F::TorchAdam, false, adam, Some(1e-8)),
        row(K::Radamw, F::TorchAdam, false, adam, Some(1e-8)),
        row(K::Nadam, F::TorchAdam, false, adam, Some(1e-8)),
        row(K::Adabelief, F::AdaBelief, false, adam, Some(1e-16)),
        row(K::Radabelief, F::AdaBelief, false, adam, Some(1e-16)),
        row(K::Adopt, F::Adopt, false, adopt, Some(1e-6)),
        row(K::Adoptw, F::Adopt, true, adopt, Some(1e-6)),
        cautious(row(K::Cadopt, F::Adopt, false, adopt, Some(1e-6))),
        cautious(row(K::Cadoptw, F::Adopt, true, adopt, Some(1e-6))),
        row(K::Lion, F::Lion, true, lion, None),
        cautious(row(K::Clion, F::Lion, true, lion, None)),
        row(K::Rmsproptf, F::RmspropTf, false, None, Some(1e-10)),
    ]
};

/// What every optimizer does. The state is named tensors that live in the optimizer (buffers and
/// step counters); `load_state` copies saved values into them in place.
pub trait Optimizer {
    /// Updates the parameters that have gradients with learning rate `lr`.
    fn step(&mut self, lr: f64) -> Result<()>;
    /// The parameters, grouped by weight decay.
    fn groups(&self) -> &[Group];
    fn groups_mut(&mut self) -> &mut [Group];

    /// timm's corrected weight decay (`corrected_weight_decay`; its `adamc`, `nadamc`, `adoptc`,
    /// `lionc` ...): from now on each group's decoupled decay is scaled by its lr / `peak_lr`, so
    /// the step multiplies by 1 - lr^2 / peak_lr x wd and the decay follows the schedule squared.
    /// Only the decoupled optimizers read it (the config refuses it for others).
    fn set_corrected_weight_decay(&mut self, peak_lr: f64) {
        for g in self.groups_mut() {
            g.corrected_peak_lr = Some(peak_lr);
        }
    }
    /// The live state tensors by name (shallow clones: writing into them changes the optimizer).
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Copies saved state into place; every state tensor must be present.
    fn load_state(&mut self, saved: &BTreeMap<String, Tensor>) -> Result<()> {
        crate::train::run::state::copy_into(&self.state(), saved, "optimizer")
    }

    /// Drops the gradients (PyTorch's `zero_grad(set_to_none=True)`): no memset.
    fn zero_grad(&self) -> Result<()> {
        for g in self.groups() {
            crate::ffi::grads_set_none(&g.params)?;
        }
        Ok(())
    }

    /// The defined gradients, in group order (a parameter the last backward did not reach has none).
    fn grads(&self) -> Vec<Tensor> {
        self.groups().iter().flat_map(|g| g.params.iter().map(|p| p.grad())).filter(|g| g.defined()).collect()
    }
}

/// The hyper-parameters that choose and configure an optimizer.
#[derive(Clone, Debug, PartialEq)]
pub struct OptConfig {
    pub kind: OptKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: WeightDecay,
    /// Learning-rate multiplier of the activation coefficients' group.
    pub act_lr_scale: f64,
    /// Adam/AdamW/LAMB/LARS/RMSpropTF; None: the optimizer's default.
    pub eps: Option<f64>,
    /// Adam/AdamW/LAMB/Lion; None: the optimizer's default (`OptKind::default_betas`).
    pub betas: Option<(f64, f64)>,
    /// Adan's third beta; None: timm's 0.99.
    pub beta3: Option<f64>,
    /// LARS's trust coefficient (timm's `trust_coeff`).
    pub trust_coeff: f64,
}

/// Weight decay by parameter group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightDecay {
    /// Conv and fc weights.
    pub weights: f64,
    /// BatchNorm gammas and betas.
    pub norm: f64,
    /// Other biases (the classifier's).
    pub bias: f64,
    /// PolyCom coefficients.
    pub act: f64,
}

impl WeightDecay {
    /// `wd` on conv and fc weights only (timm's default: 1-d parameters are not decayed).
    pub fn weights_only(wd: f64) -> Self {
        Self { weights: wd, norm: 0.0, bias: 0.0, act: 0.0 }
    }
}

/// Builds the configured optimizer over the trainable variables of `vs`.
pub fn create(cfg: &OptConfig, vs: &nn::VarStore) -> Box<dyn Optimizer> {
    let mut groups = Group::split(vs, cfg.weight_decay);
    for g in groups.iter_mut().filter(|g| g.kind == ParamGroup::Activation) {
        g.lr_scale = cfg.act_lr_scale;
    }
    let info = cfg.kind.info();
    let betas = cfg.betas.or(cfg.kind.default_betas()).unwrap_or((0.9, 0.999));
    let eps = cfg.eps.or(info.eps).unwrap_or(1e-8);
    let (k, decoupled, caution) = (cfg.kind, info.decoupled, info.caution);
    match info.family {
        Family::Sgd if decoupled => Box::new(Sgd::decoupled(groups, cfg.momentum, info.nesterov)),
        Family::Sgd => Box::new(Sgd::new(groups, cfg.momentum, cfg.nesterov || info.nesterov, None)),
        Family::Lars => {
            let trust = LarsTrust {
                coeff: cfg.trust_coeff,
                eps,
                clip: matches!(k, OptKind::Larc | OptKind::Nlarc),
                always_adapt: false,
            };
            Box::new(Sgd::new(groups, cfg.momentum, cfg.nesterov || info.nesterov, Some(trust)))
        }
        Family::Adam => Box::new(Adam::new(groups, betas, eps, decoupled)),
        Family::Lamb => {
            let trust_clip = matches!(k, OptKind::Lambc | OptKind::Lambcw);
            Box::new(Lamb::variant(groups, betas, eps, trust_clip, decoupled, caution))
        }
        Family::Adan => {
            let no_prox = matches!(k, OptKind::Adanw | OptKind::Cadanw);
            let betas = (betas.0, betas.1, cfg.beta3.unwrap_or(0.99));
            Box::new(Adan::new(groups, betas, eps, no_prox, caution))
        }
        Family::Laprop => Box::new(LaProp::new(groups, betas, eps, caution)),
        Family::TorchAdam => {
            let kind = if k == OptKind::Nadam { TorchAdamKind::Nadam } else { TorchAdamKind::Radam };
            Box::new(TorchAdam::new(kind, groups, betas, eps, k == OptKind::Radamw))
        }
        Family::AdaBelief => Box::new(AdaBelief::new(groups, betas, eps, k == OptKind::Radabelief)),
        Family::TimmAdamW => Box::new(TimmAdamW::new(groups, betas, eps, info.nesterov, caution)),
        Family::Adopt => Box::new(Adopt::new(groups, betas, eps, decoupled, caution)),
        Family::Lion => Box::new(Lion::new(groups, betas, caution)),
        Family::RmspropTf => Box::new(RmspropTf::new(groups, cfg.momentum, eps)),
    }
}

/// One parameter group: parameters sharing a weight decay and a learning-rate multiplier, with
/// their names (state keys).
pub struct Group {
    pub kind: ParamGroup,
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub weight_decay: f64,
    /// The group's learning rate is the schedule's times this.
    pub lr_scale: f64,
    /// timm's corrected weight decay: the peak lr the decay is relative to (None: plain decay).
    pub corrected_peak_lr: Option<f64>,
}

impl Group {
    /// The weight decay of a step at the group's learning rate `lr` (timm's `wd_scale`: with
    /// corrected weight decay lr x wd becomes lr^2 / peak x wd).
    pub fn decay_at(&self, lr: f64) -> f64 {
        match self.corrected_peak_lr {
            Some(peak) if peak > 0.0 => self.weight_decay * lr / peak,
            _ => self.weight_decay,
        }
    }

    /// Groups the trainable variables by `ParamGroup`, each with its weight decay (by default
    /// only conv/fc weights decay: timm's practice; torchvision's classic recipe decays all).
    pub fn split(vs: &nn::VarStore, decay: WeightDecay) -> Vec<Group> {
        let mut by_group: BTreeMap<u8, (Vec<String>, Vec<Tensor>)> = BTreeMap::new();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let kinds = [ParamGroup::Decay, ParamGroup::Norm, ParamGroup::Bias, ParamGroup::Activation];
        for (name, t) in vars {
            if !t.requires_grad() {
                continue; // BN running statistics
            }
            let kind = param_group(&name, &t.size());
            let e = by_group.entry(kinds.iter().position(|k| *k == kind).unwrap_or(0) as u8).or_default();
            e.0.push(name);
            e.1.push(t);
        }
        by_group
            .into_iter()
            .map(|(g, (names, params))| {
                let kind = kinds[g as usize];
                let weight_decay = match kind {
                    ParamGroup::Decay => decay.weights,
                    ParamGroup::Norm => decay.norm,
                    ParamGroup::Bias => decay.bias,
                    ParamGroup::Activation => decay.act,
                };
                Group { kind, names, params, weight_decay, lr_scale: 1.0, corrected_peak_lr: None }
            })
            .collect()
    }

    /// The parameters with gradients, their gradients, and the same selection of `buffers`
    /// (per-parameter state lists in parameter order).
    fn with_grads(&self, buffers: &[&[Tensor]]) -> (Vec<Tensor>, Vec<Tensor>, Vec<Vec<Tensor>>) {
        let (mut params, mut grads) = (Vec::new(), Vec::new());
        let mut bufs: Vec<Vec<Tensor>> = buffers.iter().map(|_| Vec::new()).collect();
        for (i, p) in self.params.iter().enumerate() {
            let g = p.grad();
            if g.defined() {
                params.push(p.shallow_clone());
                grads.push(g);
                for (out, b) in bufs.iter_mut().zip(buffers) {
                    out.push(b[i].shallow_clone());
                }
            }
        }
        (params, grads, bufs)
    }
}

/// Zero buffers shaped like each group's parameters.
fn zeros_like_groups(groups: &[Group]) -> Vec<Vec<Tensor>> {
    groups.iter().map(|g| g.params.iter().map(|p| p.zeros_like().detach()).collect()).collect()
}

/// Named per-parameter state: `{prefix}.{parameter}` for every group's buffers.
fn named(prefix: &str, groups: &[Group], bufs: &[Vec<Tensor>]) -> Vec<(String, Tensor)> {
    groups
        .iter()
        .zip(bufs)
        .flat_map(|(g, b)| g.names.iter().zip(b).map(|(n, t)| (format!("{prefix}.{n}"), t.shallow_clone())))
        .collect()
}

/// What AdamW and LAMB share: the groups, Adam's first and second moments per parameter, the
/// betas, epsilon and the step count.
struct AdamState {
    groups: Vec<Group>,
    exp_avg: Vec<Vec<Tensor>>,
    exp_avg_sq: Vec<Vec<Tensor>>,
    betas: (f64, f64),
    eps: f64,
    steps: Tensor,
}

impl AdamState {
    fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64, steps: Tensor) -> Self {
        let (exp_avg, exp_avg_sq) = (zeros_like_groups(&groups), zeros_like_groups(&groups));
        Self { groups, exp_avg, exp_avg_sq, betas, eps, steps }
    }

    /// Group `i`'s hyper-parameters at learning rate `lr`.
    fn hyper(&self, i: usize, lr: f64) -> crate::ffi::AdamStep {
        let (beta1, beta2) = self.betas;
        let g = &self.groups[i];
        crate::ffi::AdamStep {
            lr: lr * g.lr_scale,
            beta1,
            beta2,
            eps: self.eps,
            weight_decay: g.decay_at(lr * g.lr_scale),
        }
    }

    /// Group `i`'s parameters with gradients: (params, grads, exp_avg, exp_avg_sq).
    fn select(&self, i: usize) -> (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) {
        let (params, grads, mut sel) = self.groups[i].with_grads(&[&self.exp_avg[i], &self.exp_avg_sq[i]]);
        let v = sel.pop().unwrap_or_default();
        let m = sel.pop().unwrap_or_default();
        (params, grads, m, v)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = named("exp_avg", &self.groups, &self.exp_avg);
        s.extend(named("exp_avg_sq", &self.groups, &self.exp_avg_sq));
        s.push(("step".into(), self.steps.shallow_clone()));
        s
    }
}

/// A step counter kept as a CPU tensor, so it is state like any other (saved, restored by rollbacks).
fn step_counter() -> Tensor {
    Tensor::zeros([], (Kind::Int64, tch::Device::Cpu))
}

#[cfg(test)]
mod tests {
    /// The catalog has one row per optimizer the config accepts.
    #[test]
    fn every_optimizer_has_one_row() {
        use clap::ValueEnum;
        for k in OptKind::value_variants() {
            assert_eq!(OPTIMIZERS.iter().filter(|i| i.kind == *k).count(), 1, "{k:?}");
        }
        assert_eq!(OPTIMIZERS.len(), OptKind::value_variants().len());
    }

    use super::*;
    use crate::model::{ActConfig, ActKind, Arch, ResNet, ResNetConfig};
    use tch::Device;

    #[test]
    fn weight_decay_groups() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ResNetConfig::new(Arch::Resnet18, ActConfig::new(ActKind::Polynorm, 3));
        let _m = crate::model::seeded(0, || ResNet::new(&vs.root(), cfg)).unwrap();
        let groups = Group::split(&vs, WeightDecay::weights_only(1e-4));
        let wd_of = |groups: &[Group], name: &str| {
            groups.iter().find(|g| g.names.iter().any(|n| n == name)).map(|g| g.weight_decay)
        };
        assert_eq!(wd_of(&groups, "layer1.0.conv1.weight"), Some(1e-4));
        assert_eq!(wd_of(&groups, "fc.weight"), Some(1e-4));
        assert_eq!(wd_of(&groups, "fc.bias"), Some(0.0));
        assert_eq!(wd_of(&groups, "bn1.weight"), Some(0.0));
        assert_eq!(wd_of(&groups, "layer2.1.act2.weight"), Some(0.0));
        assert_eq!(wd_of(&groups, "bn1.running_mean"), None, "running statistics are not parameters");
        let n: usize = groups.iter().map(|g| g.params.len()).sum();
        assert_eq!(n, vs.trainable_variables().len());
        let all = WeightDecay { weights: 1e-4, norm: 2e-4, bias: 3e-4, act: 4e-4 };
        let groups = Group::split(&vs, all);
        let decays =
            ["layer1.0.conv1.weight", "bn1.weight", "layer2.0.downsample.1.bias", "fc.bias", "act1.weight"]
                .map(|n| wd_of(&groups, n));
        assert_eq!(decays, [1e-4, 2e-4, 2e-4, 3e-4, 4e-4].map(Some));
    }

    #[test]
    fn the_activation_groups_learning_rate_is_scaled_alone() {
        // One step of each optimizer with the same gradients, the coefficients' lr scaled by
        // 0.25 or not: the coefficients move 0.25x as far (SGD's and RMSpropTF's first steps,
        // Adam, AdamW, LAMB's and Lion's per-element steps are linear in lr; LARS leaves the
        // undecayed coefficients to SGD), everything else the same.
        for kind in [
            OptKind::Momentum,
            OptKind::Adam,
            OptKind::Adamw,
            OptKind::Lamb,
            OptKind::Lars,
            OptKind::Lion,
            OptKind::Rmsproptf,
        ] {
            let cfg = ResNetConfig::new(Arch::Resnet18, ActConfig::new(ActKind::Polyrelu, 2));
            // One init for both runs, copied in: tests in other threads draw from libtorch's
            // generator too, so two seeded inits need not be equal.
            let init = nn::VarStore::new(Device::Cpu);
            let _m = crate::model::seeded(0, || ResNet::new(&init.root(), cfg)).unwrap();
            let moved = |scale: f64| {
                let vs = nn::VarStore::new(Device::Cpu);
                let _m = ResNet::new(&vs.root(), cfg).unwrap();
                let init_vars = init.variables();
                tch::no_grad(|| {
                    for (n, mut t) in vs.variables() {
                        t.copy_(&init_vars[&n]);
                    }
                });
                let before: BTreeMap<String, Tensor> =
                    vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
                let opt_cfg = OptConfig {
                    kind,
                    momentum: 0.9,
                    nesterov: false,
                    weight_decay: WeightDecay::weights_only(0.0),
                    act_lr_scale: scale,
                    eps: None,
                    betas: None,
                    beta3: None,
                    trust_coeff: 0.001,
                };
                let mut opt = create(&opt_cfg, &vs);
                let loss: Tensor = vs.trainable_variables().iter().map(|v| (v * v).sum(Kind::Float)).sum();
                loss.backward();
                opt.step(0.1).unwrap();
                let delta =
                    |name: &str| (vs.variables()[name].detach() - &before[name]).abs().sum(Kind::Double);
                (
                    delta("layer1.0.act2.weight").double_value(&[]),
                    delta("layer1.0.conv1.weight").double_value(&[]),
                )
            };
            let ((act1, conv1), (act_q, conv_q)) = (moved(1.0), moved(0.25));
            assert!(act1 > 0.0 && conv1 > 0.0, "{kind:?}");
            assert!((act_q / act1 - 0.25).abs() < 1e-5, "{kind:?}: coefficients moved {act_q} vs {act1}");
            assert_eq!(conv_q, conv1, "{kind:?}: the other groups are unchanged");
        }
    }
}

#[cfg(test)]
mod golden_tests {
    //! Against tests/golden/train_golden.safetensors (tests/golden/make_train_golden.py):
    //! torch.optim.Adam and AdamW, timm's Lamb, Lars variants, Lion and RMSpropTF on two parameter
    //! groups for three steps.
    use super::*;
    use tch::Device;

    fn golden() -> BTreeMap<String, Tensor> {
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/train_golden.safetensors");
        crate::model::weights::read(&p).expect("golden file reads").tensors
    }

    fn config(kind: OptKind) -> OptConfig {
        OptConfig {
            kind,
            momentum: 0.9,
            nesterov: false,
            weight_decay: WeightDecay::weights_only(0.05),
            act_lr_scale: 1.0,
            eps: None,
            betas: None,
            beta3: None,
            trust_coeff: 0.001,
        }
    }

    /// p1 (2-d: weight decay 0.05) and p2 (1-d: none), as the golden script's two groups.
    fn params(g: &BTreeMap<String, Tensor>) -> (nn::VarStore, Tensor, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let p1 = vs.root().var_copy("p1", &g["opt.p1.init"]);
        let p2 = vs.root().var_copy("p2", &g["opt.p2.init"]);
        (vs, p1, p2)
    }

    /// Sets the gradients to the golden step's (the backward of <p, g>).
    fn backward(g: &BTreeMap<String, Tensor>, t: usize, p1: &Tensor, p2: &Tensor) {
        let loss = (p1 * &g[&format!("opt.p1.grad.{t}")]).sum(Kind::Float)
            + (p2 * &g[&format!("opt.p2.grad.{t}")]).sum(Kind::Float);
        loss.backward();
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn optimizers_match_torch_and_timm() {
        let g = golden();
        let cases = [
            (OptKind::Adam, "adam", 0.001),
            (OptKind::Adamw, "adamw", 0.001),
            (OptKind::Lion, "lion", 0.001),
            (OptKind::Clion, "clion", 0.001),
            (OptKind::Cadamw, "cadamw", 0.001),
            (OptKind::Nadamw, "nadamw", 0.001),
            (OptKind::Cnadamw, "cnadamw", 0.001),
            (OptKind::Adopt, "adopt", 0.001),
            (OptKind::Adoptw, "adoptw", 0.001),
            (OptKind::Cadopt, "cadopt", 0.001),
            (OptKind::Cadoptw, "cadoptw", 0.001),
            (OptKind::Rmsproptf, "rmsproptf", 0.001),
            (OptKind::Sgdw, "sgdw", 0.001),
            (OptKind::Lamb, "lamb", 0.001),
            (OptKind::Lambc, "lambc", 0.001),
            (OptKind::Lars, "lars", 0.001),
            // trust_coeff 0.02: LARC clips at steps 0 and 2, not at step 1.
            (OptKind::Larc, "larc", 0.02),
            (OptKind::Nlars, "nlars", 0.001),
            (OptKind::Nlarc, "nlarc", 0.02),
            (OptKind::Lambw, "lambw", 0.001),
            (OptKind::Lambcw, "lambcw", 0.001),
            (OptKind::Clamb, "clamb", 0.001),
            (OptKind::Clambw, "clambw", 0.001),
            (OptKind::Adan, "adan", 0.001),
            (OptKind::Adanw, "adanw", 0.001),
            (OptKind::Cadan, "cadan", 0.001),
            (OptKind::Cadanw, "cadanw", 0.001),
            (OptKind::Laprop, "laprop", 0.001),
            (OptKind::Claprop, "claprop", 0.001),
        ];
        for (kind, name, trust_coeff) in cases {
            let (vs, p1, p2) = params(&g);
            let mut opt = create(&OptConfig { trust_coeff, ..config(kind) }, &vs);
            for t in 0..3 {
                backward(&g, t, &p1, &p2);
                opt.step(0.01).unwrap();
                opt.zero_grad().unwrap();
                let d1 = max_diff(&p1, &g[&format!("{name}.p1.after.{t}")]);
                let d2 = max_diff(&p2, &g[&format!("{name}.p2.after.{t}")]);
                // float32 arithmetic in a different order: a few ulps of values ~1.
                assert!(d1 < 2e-6 && d2 < 2e-6, "{name} step {t}: max |diff| {d1:.2e} / {d2:.2e}");
            }
        }
    }

    /// Adan with its three betas and eps set (`--opt-betas 0.9,0.8,0.95 --opt-eps 1e-6`).
    #[test]
    fn adan_takes_its_three_betas() {
        let g = golden();
        let (vs, p1, p2) = params(&g);
        let cfg = OptConfig {
            betas: Some((0.9, 0.8)),
            beta3: Some(0.95),
            eps: Some(1e-6),
            ..config(OptKind::Adan)
        };
        let mut opt = create(&cfg, &vs);
        for t in 0..3 {
            backward(&g, t, &p1, &p2);
            opt.step(0.01).unwrap();
            opt.zero_grad().unwrap();
            let d1 = max_diff(&p1, &g[&format!("adan_betas.p1.after.{t}")]);
            let d2 = max_diff(&p2, &g[&format!("adan_betas.p2.after.{t}")]);
            assert!(d1 < 2e-6 && d2 < 2e-6, "adan betas step {t}: max |diff| {d1:.2e} / {d2:.2e}");
        }
        let apart = max_diff(&p1, &g["adan.p1.after.2"]);
        assert!(apart > 1e-5, "the betas changed nothing ({apart:.2e})");
    }

    /// The rectified optimizers (RAdam, rectified AdaBelief) and torch's NAdam over nine steps (the
    /// three golden gradients three times): rectification starts at step 6 (rho_t > 5 at beta2
    /// 0.999), so both of its sides are checked.
    #[test]
    fn rectified_and_nesterov_adams_match_torch_and_timm_over_nine_steps() {
        let g = golden();
        for (kind, name) in [
            (OptKind::Radam, "radam"),
            (OptKind::Radamw, "radamw"),
            (OptKind::Nadam, "nadam"),
            (OptKind::Adabelief, "adabelief"),
            (OptKind::Radabelief, "radabelief"),
        ] {
            let (vs, p1, p2) = params(&g);
            let mut opt = create(&config(kind), &vs);
            for t in 0..9 {
                backward(&g, t % 3, &p1, &p2);
                opt.step(0.01).unwrap();
                opt.zero_grad().unwrap();
                let d1 = max_diff(&p1, &g[&format!("{name}.p1.after.{t}")]);
                let d2 = max_diff(&p2, &g[&format!("{name}.p2.after.{t}")]);
                assert!(d1 < 4e-6 && d2 < 4e-6, "{name} step {t}: max |diff| {d1:.2e} / {d2:.2e}");
            }
        }
    }

    /// timm's corrected weight decay: built at peak lr 0.02, stepped at 0.01 (the golden script's
    /// `at_lower_lr`), against timm's AdamWLegacy / NAdamW / Adopt / Lion with
    /// `corrected_weight_decay=True`; and not the plain decay's result.
    #[test]
    fn corrected_weight_decay_matches_timm() {
        let g = golden();
        for (kind, name, plain) in [
            (OptKind::Adamw, "adamc", "adamw"),
            (OptKind::Nadamw, "nadamc", "nadamw"),
            (OptKind::Adoptw, "adoptc", "adoptw"),
            (OptKind::Sgdw, "sgdc", "sgdw"),
            (OptKind::Lion, "lionc", "lion"),
            (OptKind::Laprop, "lapropc", "laprop"),
        ] {
            assert!(kind.decouples_weight_decay());
            let (vs, p1, p2) = params(&g);
            let mut opt = create(&config(kind), &vs);
            opt.set_corrected_weight_decay(0.02);
            for t in 0..3 {
                backward(&g, t, &p1, &p2);
                opt.step(0.01).unwrap();
                opt.zero_grad().unwrap();
                let d1 = max_diff(&p1, &g[&format!("{name}.p1.after.{t}")]);
                let d2 = max_diff(&p2, &g[&format!("{name}.p2.after.{t}")]);
                assert!(d1 < 2e-6 && d2 < 2e-6, "{name} step {t}: max |diff| {d1:.2e} / {d2:.2e}");
            }
            let apart = max_diff(&p1, &g[&format!("{plain}.p1.after.2")]);
            assert!(apart > 1e-5, "{name}: the corrected decay changed nothing ({apart:.2e})");
        }
    }

    #[test]
    fn optimizer_state_resumes_exactly() {
        let g = golden();
        for kind in [
            OptKind::Momentum,
            OptKind::Sgd,
            OptKind::Adam,
            OptKind::Adamw,
            OptKind::Lamb,
            OptKind::Nlarc,
            OptKind::Lion,
            OptKind::Clion,
            OptKind::Cadamw,
            OptKind::Cnadamw,
            OptKind::Adoptw,
            OptKind::Sgdw,
            OptKind::Rmsproptf,
            OptKind::Clambw,
            OptKind::Cadan,
            OptKind::Adanw,
            OptKind::Claprop,
            OptKind::Radam,
            OptKind::Nadam,
            OptKind::Radabelief,
        ] {
            let (vs, p1, p2) = params(&g);
            let mut a = create(&config(kind), &vs);
            for t in 0..2 {
                backward(&g, t, &p1, &p2);
                a.step(0.01).unwrap();
                a.zero_grad().unwrap();
            }
            // A second optimizer over a copy of the parameters, loaded from the first's state.
            let (vs_b, q1, q2) = params(&g);
            tch::no_grad(|| {
                q1.shallow_clone().copy_(&p1);
                q2.shallow_clone().copy_(&p2);
            });
            let mut b = create(&config(kind), &vs_b);
            let saved: BTreeMap<String, Tensor> = a.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
            b.load_state(&saved).unwrap();
            for (x, y, opt) in [(&p1, &p2, &mut a), (&q1, &q2, &mut b)] {
                backward(&g, 2, x, y);
                opt.step(0.01).unwrap();
            }
            assert!(p1.equal(&q1) && p2.equal(&q2), "{kind:?}: the resumed step differs");
            // A state with a tensor missing is an error naming it.
            let mut partial = saved;
            let missing = partial.keys().last().cloned().unwrap_or_default();
            partial.remove(&missing);
            let err = b.load_state(&partial).unwrap_err().to_string();
            assert!(err.contains(&missing), "{kind:?}: {err}");
        }
    }
}
