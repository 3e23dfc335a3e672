//! The model and everything one training step updates — optimizer, loss scaler, EMA, guards —
//! and the step itself: the micro-batches forward under autocast and backward through the loss
//! scaler, unscale, clip, then one call into the guards, whose decision is carried out (update,
//! skip, rollback, remedy, stop). `trainer` drives it over epochs; `bench` times this same step.

use super::amp::{GradScaler, Precision};
use super::clip::clip_gradients;
use super::ema::{EmaConfig, ModelEma};
use super::guards::{Decision, GuardConfig, GuardState, Guards, LiveState, StepHealth, Stop};
use super::loss::{Loss, Targets};
use super::optim::{self, OptConfig, Optimizer, WeightDecay};
use super::stability::{
    first_beyond, first_nonfinite, forward_monitored, LiveSettings, Remedy, SiteStats, FP16_MAX,
};
use crate::data::batch_transform::{BatchTransform, DrawKey};
use crate::dist::Dist;
use crate::error::Result;
use crate::ffi::dist::ReduceOp;
use crate::model::weights::{self, WeightsFile};
use crate::model::{ResNet, ResNetConfig};
use crate::train::config::TrainConfig;
use crate::train::run::checkpoint::STATE_PREFIX;
use crate::train::run::state::{copy_into, prefixed, under, Named};
use std::path::Path;
use std::rc::Rc;
use tch::{nn, Device, Tensor};

pub struct Engine {
    /// The run's config, fixed for the run (`config()`).
    cfg: TrainConfig,
    /// What the divergence guard's remedies change: the activations' compute and the clipping.
    live: LiveSettings,
    pub device: Device,
    pub num_classes: i64,
    pub vs: nn::VarStore,
    pub model: ResNet,
    pub optimizer: Box<dyn Optimizer>,
    pub scaler: GradScaler,
    pub ema: Option<ModelEma>,
    loss: Loss,
    guards: Guards,
    /// The data-parallel job this process is a rank of (None: one process).
    pub dist: Option<Rc<Dist>>,
    /// Whether Mixup/CutMix (when configured) mix this epoch: the trainer turns them off from
    /// `mixup_off_epoch` on (timm's).
    pub mixup_enabled: bool,
    /// DDP's overlap of the gradient all-reduce with backward (made at the first step of a
    /// data-parallel run with `dist_overlap`).
    reducer: Option<crate::ffi::dist::GradReducer>,
    /// Optimizer steps per epoch (0 until the trainer's plan knows them).
    steps_per_epoch: usize,
    /// Random erasing and Mixup/CutMix, applied to each micro-batch on the device.
    batch_transform: BatchTransform,
}

/// What one optimizer step did.
pub struct StepResult {
    /// Mean loss over the micro-batches.
    pub loss: f64,
    pub grad_norm: f64,
    pub loss_scale: f64,
    /// Per-site activation statistics (monitored steps only).
    pub activations: Vec<SiteStats>,
    /// The PolyReLU/PolyNorm coefficients after this step (monitored steps only; none for ReLU).
    pub coefficients: Vec<crate::model::SiteCoefficients>,
    /// The guards' decision, carried out; `Stop` holds the full diagnosis.
    pub decision: Decision,
}

impl Engine {
    /// With DDP's overlap on: (buckets whose all-reduce started during the last backward, buckets,
    /// parameters whose gradient was a bucket slice after the last step's reduction).
    pub fn overlap_stats(&self) -> Option<(usize, usize, usize)> {
        self.reducer.as_ref().map(|r| (r.launched_in_backward(), r.buckets(), r.grads_as_views()))
    }
}

impl StepResult {
    pub fn skipped(&self) -> bool {
        !self.decision.takes_step()
    }
}

/// Every live tensor training updates, by name (model variables under `model.`).
fn live_state(
    vs: &nn::VarStore,
    optimizer: &dyn Optimizer,
    scaler: &GradScaler,
    ema: Option<&ModelEma>,
) -> Named {
    let mut s = prefixed("model", vs.variables().into_iter().collect());
    s.extend(train_state(optimizer, scaler, ema));
    s
}

/// The components' state (everything but the model), by component.
fn train_state(optimizer: &dyn Optimizer, scaler: &GradScaler, ema: Option<&ModelEma>) -> Named {
    let mut s = prefixed("optimizer", optimizer.state());
    s.extend(prefixed("scaler", scaler.state()));
    if let Some(e) = ema {
        s.extend(prefixed("ema", e.state()));
    }
    s
}

impl Engine {
    /// The EMA's settings for this run (its world size and steps per epoch).
    fn ema_config(&self) -> EmaConfig {
        self.cfg.ema_config(self.dist.as_ref().map_or(1, |d| d.world()), self.steps_per_epoch)
    }

    /// The run's steps per epoch, once the data is open: the EMA's torchvision warmup is in steps.
    pub fn set_steps_per_epoch(&mut self, steps: usize) {
        self.steps_per_epoch = steps;
        let cfg = self.ema_config();
        if let Some(e) = &mut self.ema {
            e.set_config(cfg);
        }
    }

    /// A freshly initialised model (seeded) with its optimizer, scaler, EMA and guards.
    pub fn new(cfg: TrainConfig, device: Device, num_classes: i64) -> Result<Self> {
        let model_cfg = cfg.model(num_classes);
        let vs = nn::VarStore::new(device);
        let model = crate::model::seeded(cfg.seed as i64, || ResNet::new(&vs.root(), model_cfg))?;
        if cfg.channels_last {
            // Before the optimizer and EMA copy the layout into their buffers.
            crate::model::to_channels_last(&vs)?;
        }
        if cfg.act_lr_scale == 0.0 {
            // Frozen coefficients get no gradients: nothing to update, to all-reduce, or to count
            // in the clipped norm (PolyReLU's are the largest there is).
            for (name, t) in vs.variables() {
                if crate::model::resnet::param_group(&name, &t.size()) == crate::model::ParamGroup::Activation
                {
                    let _ = t.set_requires_grad(false);
                }
            }
        }
        let opt = OptConfig {
            kind: cfg.opt,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            weight_decay: WeightDecay {
                weights: cfg.weight_decay,
                norm: cfg.norm_weight_decay.unwrap_or(0.0),
                bias: cfg.bias_weight_decay.unwrap_or(0.0),
                act: if cfg.act_weight_decay { cfg.weight_decay } else { 0.0 },
            },
            act_lr_scale: cfg.act_lr_scale,
            eps: cfg.opt_eps,
            betas: cfg.opt_betas.as_deref().and_then(|b| Some((*b.first()?, *b.get(1)?))),
            beta3: cfg.opt_betas.as_deref().and_then(|b| b.get(2).copied()),
            trust_coeff: cfg.trust_coeff.unwrap_or(0.001),
        };
        let optimizer = optim::create(&opt, &vs);
        let scaler = GradScaler::new(cfg.precision == Precision::Fp16, device);
        let ema = cfg.model_ema.then(|| ModelEma::new(&vs, model_cfg, cfg.ema_config(1, 0))).transpose()?;
        let loss = if cfg.jsd_loss {
            Loss::Jsd { splits: cfg.aug_splits, smoothing: cfg.smoothing }
        } else {
            let bce = super::loss::BceOptions {
                target_thresh: cfg.bce_target_thresh,
                sum_classes: cfg.bce_sum,
                pos_weight: cfg.bce_pos_weight,
            };
            Loss::new(cfg.bce_loss.then_some(bce), cfg.smoothing)
        };
        let guards = Guards::new(GuardConfig::from_config(&cfg));
        let batch_transform = BatchTransform {
            erasing: cfg.erasing_config(),
            spared_splits: cfg.resplit.then_some(cfg.aug_splits),
            mixup: cfg.mixup_config(),
            seed: cfg.seed,
            num_classes,
        };
        Ok(Self {
            live: cfg.live(),
            cfg,
            device,
            num_classes,
            vs,
            model,
            optimizer,
            scaler,
            ema,
            loss,
            guards,
            dist: None,
            mixup_enabled: true,
            reducer: None,
            steps_per_epoch: 0,
            batch_transform,
        })
    }

    /// Replaces the fresh init with the weights of `path` (`initial_checkpoint`; see
    /// `weights::load_initial`; `classes`: the data's), before any step: the EMA restarts from
    /// them. Returns what was kept at its init or differs.
    pub fn load_initial(&mut self, path: &Path, classes: &[String]) -> Result<Vec<String>> {
        let model_cfg = self.model_config();
        let notes = weights::load_initial(&mut self.vs, &model_cfg, classes, path)?;
        if self.cfg.model_ema {
            self.ema = Some(ModelEma::new(&self.vs, model_cfg, self.ema_config())?);
        }
        Ok(notes)
    }

    /// timm's `head_init_scale` / `head_init_bias`: the classifier's weight and bias multiplied by
    /// `scale`, then its bias set to `bias`, before any step (after `load_initial`, as timm does
    /// after loading `initial_checkpoint`); the EMA restarts from the result.
    pub fn init_head(&mut self, scale: Option<f64>, bias: Option<f64>) -> Result<()> {
        if scale.is_none() && bias.is_none() {
            return Ok(());
        }
        let vars = self.vs.variables();
        let (Some(w), Some(b)) = (vars.get("fc.weight"), vars.get("fc.bias")) else {
            return Err(crate::error::Error::Usage(
                "--head-init-*: the model has no fc.weight / fc.bias".into(),
            ));
        };
        tch::no_grad(|| -> Result<()> {
            if let Some(s) = scale {
                let _ = w.shallow_clone().f_mul_scalar_(s)?;
                let _ = b.shallow_clone().f_mul_scalar_(s)?;
            }
            if let Some(v) = bias {
                let _ = b.shallow_clone().f_fill_(v)?;
            }
            Ok(())
        })?;
        if self.cfg.model_ema {
            self.ema = Some(ModelEma::new(&self.vs, self.model_config(), self.ema_config())?);
        }
        Ok(())
    }

    /// The model's variables by name.
    pub fn model_state(&self) -> Named {
        self.vs.variables().into_iter().collect()
    }

    /// The EMA weights by model name, if there is an EMA.
    pub fn ema_weights(&self) -> Option<Named> {
        self.ema.as_ref().map(|e| e.vs.variables().into_iter().collect())
    }

    /// Everything but the model, by component (`optimizer.`, `scaler.`, `ema.`).
    pub fn train_state(&self) -> Named {
        train_state(self.optimizer.as_ref(), &self.scaler, self.ema.as_ref())
    }

    /// Loads a `last` checkpoint's model and component state (the guards' remedies are re-applied
    /// by the caller first, so the model matches).
    pub fn load(&mut self, file: &WeightsFile, path: &Path) -> Result<()> {
        weights::load_into(&mut self.vs, file, path)?;
        let saved = under(STATE_PREFIX, &file.tensors);
        let in_file = |e: crate::error::Error| crate::error::Error::file(path, e.to_string());
        self.optimizer.load_state(&under("optimizer", &saved)).map_err(in_file)?;
        copy_into(&self.scaler.state(), &under("scaler", &saved), "loss scaler").map_err(in_file)?;
        let ema_cfg = self.ema_config();
        if let Some(ema) = &mut self.ema {
            let ema_saved = under("ema", &saved);
            if ema_saved.is_empty() {
                // EMA switched on at resume: it starts from the current weights.
                eprintln!("note: {} has no EMA state; the EMA starts from its weights", path.display());
                *ema = ModelEma::new(&self.vs, *self.model.config(), ema_cfg)?;
            } else {
                copy_into(&ema.state(), &ema_saved, "EMA").map_err(in_file)?;
            }
        }
        Ok(())
    }

    /// Data-parallel runs: every rank takes rank 0's model (all variables with `all`, else the
    /// buffers only: BatchNorm's running statistics, which each rank updates from its own
    /// batches) and EMA, as DDP's broadcast of rank 0's buffers does. A no-op in one process.
    pub fn sync_from_main(&self, all: bool) -> Result<()> {
        let Some(d) = &self.dist else { return Ok(()) };
        if !all && self.cfg.dist_bn == crate::dist::DistBn::Reduce {
            // timm's distribute_bn(reduce=True): every rank takes the mean of the ranks' running
            // statistics (the model's and the EMA's), then the broadcast below changes nothing.
            d.average(&self.bn_statistics())?;
        }
        let trainable: std::collections::HashSet<usize> =
            self.vs.trainable_variables().iter().map(|t| t.data_ptr() as usize).collect();
        // By name: the same order on every rank (the var stores are hash maps).
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| all || !trainable.contains(&(t.data_ptr() as usize)))
            .collect();
        if let Some(e) = &self.ema {
            named.extend(e.vs.variables().into_iter().map(|(k, t)| (format!("ema.{k}"), t)));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let ts: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
        d.broadcast_from_main(&ts)
    }

    /// BatchNorm's running means and variances, the model's then the EMA's, by name (the same
    /// order on every rank).
    pub fn bn_statistics(&self) -> Vec<Tensor> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        if let Some(e) = &self.ema {
            named.extend(e.vs.variables().into_iter().map(|(k, t)| (format!("ema.{k}"), t)));
        }
        named.retain(|(k, _)| k.ends_with(".running_mean") || k.ends_with(".running_var"));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, t)| t).collect()
    }

    /// The run's config (the remedies applied so far are in `live`, not here).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model as it runs now: the config's, with the remedies' activation settings.
    pub fn model_config(&self) -> ResNetConfig {
        let mut m = self.cfg.model(self.num_classes);
        (m.act.clamp, m.act.fp32) = (self.live.act_clamp, self.live.act_fp32);
        m
    }

    /// Applies a stability remedy to the live settings, the model and the EMA model.
    pub fn apply_remedy(&mut self, r: Remedy) {
        self.live.apply(r);
        let act = self.model_config().act;
        self.model.set_act_compute(act.clamp, act.fp32);
        if let Some(e) = &mut self.ema {
            e.set_act_compute(act.clamp, act.fp32);
        }
    }

    /// Takes the guards' snapshot of the whole training state when one is due.
    pub fn snapshot_if_due(&mut self, step: usize) {
        let (vs, optimizer, scaler, ema) = (&self.vs, &self.optimizer, &self.scaler, &self.ema);
        let live = || live_state(vs, optimizer.as_ref(), scaler, ema.as_ref());
        self.guards.maybe_snapshot(step, &live as &dyn LiveState);
    }

    /// One optimizer step at learning rate `lr` over `micro` (input, label) batches (gradient
    /// accumulation), the step's number being `step`: the batches transformed and trained on
    /// (forward, backward), the gradients and loss reduced over the ranks, then unscaled and
    /// clipped, and the guards' decision applied.
    pub fn step(
        &mut self,
        micro: &[(Tensor, Tensor)],
        lr: f64,
        step: usize,
        gs: &mut GuardState,
    ) -> Result<StepResult> {
        let monitor = self.cfg.monitor_every > 0 && step.is_multiple_of(self.cfg.monitor_every);
        self.prepare_step(step)?;
        let (loss, activations) = self.forward_backward(micro, step, monitor)?;
        let (loss, activations) = self.reduce_over_ranks(loss, activations, monitor)?;
        let (grad_norm, decision) = self.check(step, loss, gs)?;
        let decision = self.apply(decision, micro, lr, step)?;
        self.optimizer.zero_grad()?;
        let coefficients = if monitor {
            let vars = self.vs.variables();
            self.model.config().act_coefficients(&|name| vars.get(name).map(|t| t.shallow_clone()))?
        } else {
            Vec::new()
        };
        Ok(StepResult {
            loss,
            grad_norm,
            loss_scale: self.scaler.scale_value(),
            activations,
            coefficients,
            decision,
        })
    }

    fn rank(&self) -> u64 {
        self.dist.as_ref().map_or(0, |d| d.rank()) as u64
    }

    /// Seeds libtorch's generator for the step's own draws, and makes DDP's reducer at the first.
    fn prepare_step(&mut self, step: usize) -> Result<()> {
        if self.cfg.drop_path > 0.0 || self.batch_transform.draws_from_libtorch() {
            // Stochastic depth and random erasing's fill values draw from libtorch's generator:
            // seeded by (seed, step, rank), so a resumed run draws what the uninterrupted one
            // drew, and ranks draw differently.
            let key = crate::rng::SplitMix64::keyed(&[self.cfg.seed, step as u64, self.rank(), 0xD809_0A7E])
                .next_u64();
            tch::manual_seed((key >> 1) as i64);
        }
        if let (Some(d), None, true) = (&self.dist, &self.reducer, self.cfg.dist_overlap) {
            let params: Vec<Tensor> = self
                .optimizer
                .groups()
                .iter()
                .flat_map(|g| g.params.iter().map(|p| p.shallow_clone()))
                .collect();
            self.reducer = Some(d.reducer(&params)?);
        }
        Ok(())
    }

    /// Forward and backward over the micro-batches: their mean loss (the backward of each scaled
    /// by 1/n accumulates the mean's gradient) and the first one's activation statistics.
    fn forward_backward(
        &mut self,
        micro: &[(Tensor, Tensor)],
        step: usize,
        monitor: bool,
    ) -> Result<(f64, Vec<SiteStats>)> {
        let n = micro.len().max(1) as f64;
        let (mut loss_mean, mut activations) = (0.0, Vec::new());
        let rank = self.rank();
        // SyncBatchNorm: BN layers reduce their statistics over the ranks during these forwards.
        let sync_bn = match &self.dist {
            Some(d) if self.cfg.sync_bn => Some(crate::dist::SyncBnScope::enter(d.clone())),
            _ => None,
        };
        for (i, (x, y)) in micro.iter().enumerate() {
            let key = DrawKey { step, rank, micro: i };
            let (x, soft) = self.batch_transform.apply(x, y, key, self.mixup_enabled)?;
            let targets = match &soft {
                Some(t) => Targets::Soft(t),
                None => Targets::Hard(y),
            };
            let (loss, stats) = {
                let _autocast = self.cfg.precision.autocast(self.device)?;
                let (logits, stats) = forward_monitored(&self.model, &x, monitor && i == 0)?;
                (self.loss.compute(&logits, targets)?, stats)
            };
            if let Some(scope) = &sync_bn {
                scope.take_error()?;
            }
            if let Some(s) = first_nonfinite(&stats) {
                eprintln!(
                    "warning: step {step}: first non-finite activation at {} ({} values; largest finite |x| {:.3e})",
                    s.site, s.nonfinite, s.max_abs
                );
            }
            if i == 0 {
                activations = stats;
            }
            if i + 1 == micro.len() {
                if let Some(r) = &self.reducer {
                    r.arm()?; // the gradients of this backward are complete: reduce them as they come
                }
            }
            self.scaler.scale_loss(&(&loss / n)).f_backward()?;
            loss_mean += loss.double_value(&[]) / n;
        }
        Ok((loss_mean, activations))
    }

    /// DDP: every rank goes on with the mean gradient and the mean loss, so the scaler, the clip
    /// and the guards see the same numbers, and decide the same, on every rank.
    fn reduce_over_ranks(
        &self,
        loss_mean: f64,
        mut activations: Vec<SiteStats>,
        monitor: bool,
    ) -> Result<(f64, Vec<SiteStats>)> {
        let Some(d) = &self.dist else { return Ok((loss_mean, activations)) };
        match &self.reducer {
            // The gradients are now slices of the buckets: read them after this.
            Some(r) => r.finish()?,
            None => d.average(&self.optimizer.grads())?,
        }
        let loss_mean = d.reduce_f64(&[loss_mean], ReduceOp::Sum)?[0] / d.world() as f64;
        if monitor && !activations.is_empty() {
            // The activation monitors report the job: the largest |x| and the non-finite
            // count over all ranks' batches, site by site (every rank has the same sites).
            let max: Vec<f64> = activations.iter().map(|s| s.max_abs).collect();
            let bad: Vec<f64> = activations.iter().map(|s| s.nonfinite as f64).collect();
            let (max, bad) = (d.reduce_f64(&max, ReduceOp::Max)?, d.reduce_f64(&bad, ReduceOp::Sum)?);
            for (s, (m, b)) in activations.iter_mut().zip(max.into_iter().zip(bad)) {
                (s.max_abs, s.nonfinite) = (m, b as i64);
            }
        }
        Ok((loss_mean, activations))
    }

    /// Unscale (fp16: finds inf/NaN), clip (the norm finds inf/NaN in every precision), adapt
    /// the loss scale; then the guards decide. Returns the gradient norm and the decision.
    fn check(&mut self, step: usize, loss: f64, gs: &mut GuardState) -> Result<(f64, Decision)> {
        let grads = self.optimizer.grads();
        let found_inf = self.scaler.unscale(&grads)?;
        let grad_norm = clip_gradients(self.live.clip_mode, self.live.clip_grad, self.optimizer.groups())?;
        self.scaler.update()?;
        let health = StepHealth {
            step,
            loss,
            grads_finite: !found_inf && grad_norm.is_finite(),
            loss_scale: self.scaler.enabled.then(|| self.scaler.scale_value()),
        };
        // The live state is built only if the guards restore a snapshot.
        let (vs, optimizer, scaler, ema) = (&self.vs, &self.optimizer, &self.scaler, &self.ema);
        let live = || live_state(vs, optimizer.as_ref(), scaler, ema.as_ref());
        Ok((grad_norm, self.guards.check(gs, health, &live as &dyn LiveState)?))
    }

    /// Carries out the guards' decision: the update (and the EMA's, and a snapshot when due), a
    /// remedy, or the diagnosis of a stop.
    fn apply(
        &mut self,
        decision: Decision,
        micro: &[(Tensor, Tensor)],
        lr: f64,
        step: usize,
    ) -> Result<Decision> {
        match &decision {
            Decision::Take => {
                self.optimizer.step(lr)?;
                if let Some(e) = &mut self.ema {
                    e.update()?;
                }
                self.snapshot_if_due(step + 1);
            }
            Decision::ApplyRemedy { remedy, .. } => self.apply_remedy(*remedy),
            Decision::Stop(Stop::Diverged(why)) => {
                let msg = match micro.last() {
                    Some((x, _)) => self.diagnose(&x.shallow_clone(), step, why)?,
                    None => why.clone(),
                };
                return Ok(Decision::Stop(Stop::Diverged(msg)));
            }
            Decision::Skip | Decision::RolledBack { .. } | Decision::Stop(Stop::Spikes(_)) => {}
        }
        Ok(decision)
    }

    /// The message of a run stopped by the divergence guard: where the activations blow up on
    /// `x` (the first site that is non-finite or beyond the precision's range) and the remedies.
    fn diagnose(&self, x: &Tensor, step: usize, why: &str) -> Result<String> {
        let precision = self.cfg.precision;
        let (_, stats) = tch::no_grad(|| -> Result<_> {
            let _autocast = precision.autocast(self.device)?;
            forward_monitored(&self.model, x, true)
        })?;
        let limit = if precision == Precision::Fp16 { FP16_MAX } else { f64::MAX };
        let site = match first_beyond(&stats, limit) {
            Some(s) if s.nonfinite > 0 => format!(
                "the first activation site with non-finite values is {} ({} values; largest finite |x| {:.3e})",
                s.site, s.nonfinite, s.max_abs
            ),
            Some(s) => format!("the first activation site beyond the {precision:?} range is {} (|x| = {:.3e})", s.site, s.max_abs),
            None => {
                let worst = stats.iter().max_by(|a, b| a.max_abs.total_cmp(&b.max_abs));
                worst.map_or("no activation site overflowed on this batch".to_string(), |s| {
                    format!(
                        "no activation overflowed on this batch (largest |x| {:.3e} at {}): the gradients did",
                        s.max_abs, s.site
                    )
                })
            }
        };
        Ok(format!(
            "at step {step}, {why}; {site}. Remedies: --act-init relu-like, --act-clamp C, {}--clip-grad, a lower \
             --lr, --precision bf16/fp32, or --divergence-remedies to apply them automatically",
            if self.live.act_fp32 { "" } else { "--act-fp32 true, " }
        ))
    }
}
