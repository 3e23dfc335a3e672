//! Exponential moving average of the weights, with timm's ModelEmaV3 semantics: after optimizer
//! update t, ema = lerp(ema, live, 1 - decay(t)) over the parameters (foreach), where decay(1) = 0
//! (the first update copies), and with warmup decay(t) = min(decay, 1 - (1 + t - 1)^(-2/3)).
//! BN running statistics are copied from the live model (timm's `exclude_buffers`) or averaged
//! like the parameters (timm's default). The EMA is a second model, evaluated next to the raw one.
//! torchvision's reference (`style = torchvision`): every `every` steps with a decay of its own
//! (derived from the global batch and epochs, `TrainConfig::ema_config`), buffers averaged, and
//! the average restarted (a copy) at every update of the lr warmup.

use crate::error::Result;
use crate::ffi::{foreach_copy, foreach_lerp};
use crate::model::{ResNet, ResNetConfig};
use crate::train::run::state::Named;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// What happens to the BN running statistics at an EMA update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EmaBuffers {
    /// Copied from the live model (timm ModelEmaV3 with exclude_buffers=True).
    Copy,
    /// Averaged like the parameters (timm ModelEmaV3's default).
    Average,
}

/// Whose EMA: timm's ModelEmaV3 or torchvision's reference (`ExponentialMovingAverage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EmaStyle {
    /// timm: `model_ema_decay` per optimizer step (decay^N every N steps).
    Timm,
    /// torchvision's reference: `model_ema_decay` adjusted to the global batch and epochs, once
    /// per update every `model_ema_every` steps; buffers averaged; restarted during the warmup.
    Torchvision,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaConfig {
    pub decay: f64,
    pub warmup: bool,
    /// Update every N optimizer steps, with decay^N (or `decay` itself: `per_update`).
    pub every: usize,
    pub buffers: EmaBuffers,
    /// `decay` is per update, not per optimizer step (torchvision).
    pub per_update: bool,
    /// An update that follows one at or before this optimizer step copies the live model
    /// (torchvision resets its average during the lr warmup); 0: none.
    pub restart_until: usize,
}

pub struct ModelEma {
    pub vs: nn::VarStore,
    pub model: ResNet,
    cfg: EmaConfig,
    /// The EMA model's variables by name.
    named: Named,
    /// (EMA, live) tensors averaged at each update, and those copied.
    lerp: (Vec<Tensor>, Vec<Tensor>),
    copy: (Vec<Tensor>, Vec<Tensor>),
    /// Optimizer updates seen (timm's `step` argument).
    updates: Tensor,
}

impl ModelEma {
    /// A copy of the model in `live`, built from the same config on the same device.
    pub fn new(live: &nn::VarStore, model_cfg: ResNetConfig, cfg: EmaConfig) -> Result<Self> {
        let mut vs = nn::VarStore::new(live.device());
        // Its initial values are overwritten below, but building draws from libtorch's global
        // generator: under the seeding lock, so it cannot shift another thread's seeded init.
        let model = crate::model::seeded(0, || ResNet::new(&vs.root(), model_cfg))?;
        // Its own tensors are not trained: the EMA model only runs forward passes.
        vs.freeze();
        let live_vars = live.variables();
        let mut named: Named = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut lerp, mut copy) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (name, e) in &named {
            let l = live_vars
                .get(name)
                .ok_or_else(|| crate::error::Error::Torch(format!("EMA: the live model has no {name}")))?
                .detach();
            tch::no_grad(|| e.shallow_clone().f_copy_(&l))?;
            let average = live_vars[name].requires_grad() || cfg.buffers == EmaBuffers::Average;
            let side = if average { &mut lerp } else { &mut copy };
            side.0.push(e.shallow_clone());
            side.1.push(l);
        }
        let updates = Tensor::zeros([], (Kind::Int64, tch::Device::Cpu));
        Ok(Self { vs, model, cfg, named, lerp, copy, updates })
    }

    /// timm's `get_decay(step)` (update_after_step 0, min_decay 0, warmup gamma 1, power 2/3).
    pub fn decay_at(&self, step: usize) -> f64 {
        let step = step.saturating_sub(1) as f64;
        if step <= 0.0 {
            return 0.0;
        }
        if self.cfg.warmup {
            (1.0 - (1.0 + step).powf(-2.0 / 3.0)).clamp(0.0, self.cfg.decay)
        } else {
            self.cfg.decay
        }
    }

    /// Call after every optimizer update; averages every `every` updates.
    pub fn update(&mut self) -> Result<()> {
        let _ = self.updates.g_add_scalar_(1);
        let t = self.updates.int64_value(&[]) as usize;
        if !t.is_multiple_of(self.cfg.every) {
            return Ok(());
        }
        let restarted = self.cfg.per_update && t - self.cfg.every <= self.cfg.restart_until;
        let decay = match (restarted, self.cfg.per_update) {
            // torchvision's AveragedModel copies at its first update (n_averaged 0).
            (true, _) => 0.0,
            (false, true) => self.cfg.decay,
            (false, false) => self.decay_at(t).powi(self.cfg.every as i32),
        };
        foreach_lerp(&self.lerp.0, &self.lerp.1, 1.0 - decay)?;
        foreach_copy(&self.copy.0, &self.copy.1)
    }

    /// The EMA weights by model name, and the update counter.
    pub fn state(&self) -> Named {
        let mut s: Named = self.named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        s.push(("updates".into(), self.updates.shallow_clone()));
        s
    }

    /// Its schedule, once the run's global batch and steps per epoch are known (the average kept).
    pub fn set_config(&mut self, cfg: EmaConfig) {
        self.cfg = cfg;
    }

    /// Applies a stability remedy's activation settings to the EMA model too.
    pub fn set_act_compute(&mut self, clamp: Option<f64>, fp32: bool) {
        self.model.set_act_compute(clamp, fp32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn decay_follows_timm_get_decay() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ResNetConfig::new(
            crate::model::Arch::Resnet18,
            crate::model::ActConfig::new(crate::model::ActKind::Relu, 1),
        );
        let _m = crate::model::seeded(0, || ResNet::new(&vs.root(), cfg)).unwrap();
        let e = ModelEma::new(
            &vs,
            cfg,
            EmaConfig {
                decay: 0.999,
                warmup: true,
                every: 1,
                buffers: EmaBuffers::Copy,
                per_update: false,
                restart_until: 0,
            },
        )
        .unwrap();
        assert_eq!(e.decay_at(1), 0.0, "the first update copies");
        assert_eq!(e.decay_at(1_000_000), 0.999, "capped at the decay");
        // timm's ModelEmaV3.get_decay (tests/golden/make_train_golden.py), with and without warmup.
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/train_golden.safetensors");
        let g = crate::model::weights::read(&p).unwrap().tensors;
        let steps: Vec<f64> = Vec::try_from(&g["ema.steps"]).unwrap();
        for warmup in [false, true] {
            let cfg = EmaConfig {
                decay: 0.9998,
                warmup,
                every: 1,
                buffers: EmaBuffers::Copy,
                per_update: false,
                restart_until: 0,
            };
            let e = ModelEma::new(&vs, *e.model.config(), cfg).unwrap();
            let want: Vec<f64> = Vec::try_from(&g[&format!("ema.decay.warmup{}", warmup as u8)]).unwrap();
            for (s, w) in steps.iter().zip(want) {
                assert!(
                    (e.decay_at(*s as usize) - w).abs() < 1e-12,
                    "warmup {warmup} step {s}: {} vs {w}",
                    e.decay_at(*s as usize)
                );
            }
        }
        // Names line up with the EMA model's own variables.
        let names: Vec<String> = e.state().into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"layer1.0.bn1.running_var".to_string()) && names.last().unwrap() == "updates"
        );
        let vars = e.vs.variables();
        for (n, t) in e.state().into_iter().filter(|(n, _)| n != "updates") {
            assert!(vars[&n].equal(&t), "{n}");
        }
    }

    #[test]
    fn updates_average_parameters_and_copy_or_average_buffers() {
        let cfg = ResNetConfig::new(
            crate::model::Arch::Resnet18,
            crate::model::ActConfig::new(crate::model::ActKind::Polynorm, 2),
        );
        for buffers in [EmaBuffers::Copy, EmaBuffers::Average] {
            let vs = nn::VarStore::new(Device::Cpu);
            let _m = crate::model::seeded(0, || ResNet::new(&vs.root(), cfg)).unwrap();
            let ec = EmaConfig {
                decay: 0.75,
                warmup: false,
                every: 1,
                buffers,
                per_update: false,
                restart_until: 0,
            };
            let mut e = ModelEma::new(&vs, cfg, ec).unwrap();
            let live = vs.variables();
            let shift = |by: f64| {
                tch::no_grad(|| {
                    for t in live.values() {
                        let _ = t.shallow_clone().g_add_scalar_(by);
                    }
                })
            };
            let (w, rv) = ("layer1.0.conv1.weight", "layer1.0.bn1.running_var");
            let (w0, rv0) = (live[w].copy(), live[rv].copy());
            shift(1.0);
            e.update().unwrap(); // update 1: decay 0, a copy
            let ema = e.vs.variables();
            assert!(ema[w].allclose(&(&w0 + 1.0), 0.0, 1e-6, false));
            shift(1.0);
            e.update().unwrap(); // update 2: ema = 0.75 ema + 0.25 live
            assert!(ema[w].allclose(&(&w0 + 1.25), 0.0, 1e-6, false), "parameters are averaged");
            let want_rv = if buffers == EmaBuffers::Copy { &rv0 + 2.0 } else { &rv0 + 1.25 };
            assert!(ema[rv].allclose(&want_rv, 0.0, 1e-6, false), "{buffers:?}");
            assert!(!ema[w].requires_grad(), "the EMA model is not trained");
        }
    }

    /// torchvision's reference: `ExponentialMovingAverage` (an AveragedModel with use_buffers)
    /// updated every `every` steps with its adjusted decay; an update with n_averaged = 0 copies,
    /// and during the warmup n_averaged is reset after every update.
    #[test]
    fn the_torchvision_style_follows_its_averaged_model() {
        let cfg = ResNetConfig::new(
            crate::model::Arch::Resnet18,
            crate::model::ActConfig::new(crate::model::ActKind::Relu, 1),
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = crate::model::seeded(0, || ResNet::new(&vs.root(), cfg)).unwrap();
        let (every, warmup_steps, decay) = (2, 4, 0.75);
        let ec = EmaConfig {
            decay,
            warmup: false,
            every,
            buffers: EmaBuffers::Average,
            per_update: true,
            restart_until: warmup_steps,
        };
        let mut e = ModelEma::new(&vs, cfg, ec).unwrap();
        let live = vs.variables();
        let (w, rv) = ("layer1.0.conv1.weight", "layer1.0.bn1.running_var");
        let (w0, rv0) = (live[w].copy(), live[rv].copy());
        // torchvision's loop, on the offset the live model has moved by (live = start + t).
        let (mut avg, mut n_averaged) = (0.0f64, 0);
        for t in 1..=12usize {
            tch::no_grad(|| {
                for v in live.values() {
                    let _ = v.shallow_clone().g_add_scalar_(1.0);
                }
            });
            e.update().unwrap();
            if t % every == 0 {
                avg = if n_averaged == 0 { t as f64 } else { decay * avg + (1.0 - decay) * t as f64 };
                n_averaged += 1;
                if t <= warmup_steps {
                    n_averaged = 0;
                }
            }
            let ema = e.vs.variables();
            if t >= every {
                assert!(ema[w].allclose(&(&w0 + avg), 0.0, 1e-5, false), "step {t}: weights");
                assert!(ema[rv].allclose(&(&rv0 + avg), 0.0, 1e-5, false), "step {t}: buffers averaged");
            }
        }
        // Copies at steps 2, 4 (warmup) and 6 (the first update after it), then averaged.
        assert_eq!(avg, 0.75 * (0.75 * (0.75 * 6.0 + 0.25 * 8.0) + 0.25 * 10.0) + 0.25 * 12.0);
    }
}
