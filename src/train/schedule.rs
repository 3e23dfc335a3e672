//! Learning rate as a pure function of the optimizer step, so resuming needs only the step.
//!
//! Three conventions (`schedule_style`); the decay after the warmup is cosine to `min_lr`, step
//! decay by `step_gamma` every `step_epochs`, or linear to `min_lr`:
//! - per-step (the default): a new learning rate every optimizer step; linear warmup from 0 (step
//!   s of W: peak · (s + 1) / W) over the first `warmup_epochs`, then the decay over the remaining
//!   epochs (with `linear` and a warmup: FFCV's triangular schedule).
//! - torchvision (its classification reference's train.py): one change per epoch; warmup by
//!   LinearLR from `lr_warmup_decay` · peak, then the decay over the remaining epochs
//!   (SequentialLR with CosineAnnealingLR or StepLR); tests/golden/torchvision_schedules.json
//!   holds torch's own values.
//! - timm (train.py): one change per epoch (every update with `sched_on_updates`), warmup from
//!   `warmup_lr` (t · (peak − warmup_lr) / warmup_t), the decay over all `epochs` counting the
//!   warmup ones (after them with `warmup_prefix`), then `cooldown_epochs` at `min_lr`. This is
//!   timm's CosineLRScheduler / StepLRScheduler / PolyLRScheduler (power 1 for `linear`) with one
//!   cycle, no noise and k_decay 1, stepped as train.py steps it; tests/golden/timm_schedules.json
//!   holds timm's own values.

use super::config::TrainConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Step,
    Linear,
}

/// Whose schedule semantics (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleStyle {
    PerStep,
    Torchvision,
    Timm,
}

impl ScheduleStyle {
    pub fn name(self) -> &'static str {
        match self {
            ScheduleStyle::PerStep => "per-step",
            ScheduleStyle::Torchvision => "torchvision",
            ScheduleStyle::Timm => "timm",
        }
    }
}

/// How `lr` turns into the learning rate at the run's global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// lr x global batch / 256 (Goyal et al.; torchvision's and timm's `lr_base` for SGD).
    Linear,
    /// lr x sqrt(global batch / 256) (timm's `lr_base` default for Adam-family and LAMB).
    Sqrt,
    /// `lr` as given, at any batch (timm's explicit `--lr`).
    None,
}

impl LrScaling {
    /// The peak learning rate for `lr` at a global batch of `global_batch` images.
    pub fn peak_lr(self, lr: f64, global_batch: usize) -> f64 {
        let ratio = global_batch as f64 / 256.0;
        match self {
            LrScaling::Linear => lr * ratio,
            LrScaling::Sqrt => lr * ratio.sqrt(),
            LrScaling::None => lr,
        }
    }
}

/// timm train.py's default `--warmup-lr`.
pub const TIMM_WARMUP_LR: f64 = 1e-5;
/// torchvision's reference default `--lr-warmup-decay`.
pub const TORCHVISION_WARMUP_DECAY: f64 = 0.01;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub style: ScheduleStyle,
    pub peak_lr: f64,
    pub min_lr: f64,
    /// Optimizer steps per tick of the schedule's clock: 1 (a change every step) or the steps of
    /// an epoch (torchvision's and timm's default, one change per epoch). Lengths count ticks.
    pub steps_per_tick: usize,
    pub warmup: usize,
    /// torchvision and timm: the warmup's first learning rate (per-step's warmup starts from 0
    /// and reaches the peak on its last step).
    pub warmup_lr: f64,
    /// timm: the decay starts after the warmup instead of counting it.
    pub warmup_prefix: bool,
    /// The decay's length, `epochs` in ticks (the cosine and linear decays end at `min_lr` there).
    pub length: usize,
    /// Step decay: multiply by `gamma` every `step_every` ticks (after warmup).
    pub step_every: usize,
    pub gamma: f64,
}

impl Schedule {
    /// The schedule a config describes, for `steps_per_epoch` optimizer steps per epoch and a
    /// global batch of `global_batch` images (`lr` scaled to it by `lr_scaling`).
    pub fn new(cfg: &TrainConfig, steps_per_epoch: usize, global_batch: usize) -> Self {
        let steps_per_tick = match cfg.schedule_style {
            ScheduleStyle::PerStep => 1,
            ScheduleStyle::Torchvision => steps_per_epoch,
            ScheduleStyle::Timm => {
                if cfg.sched_on_updates {
                    1
                } else {
                    steps_per_epoch
                }
            }
        };
        let ticks_per_epoch = (steps_per_epoch / steps_per_tick) as f64;
        let peak_lr = cfg.lr_scaling.peak_lr(cfg.lr, global_batch);
        Self {
            kind: cfg.schedule,
            style: cfg.schedule_style,
            peak_lr,
            min_lr: cfg.min_lr,
            steps_per_tick,
            warmup: (cfg.warmup_epochs * ticks_per_epoch).round() as usize,
            warmup_lr: match cfg.schedule_style {
                ScheduleStyle::Torchvision => {
                    peak_lr * cfg.lr_warmup_decay.unwrap_or(TORCHVISION_WARMUP_DECAY)
                }
                _ => cfg.warmup_lr.unwrap_or(TIMM_WARMUP_LR),
            },
            warmup_prefix: cfg.warmup_prefix,
            length: cfg.epochs * steps_per_epoch / steps_per_tick,
            step_every: cfg.step_epochs * steps_per_epoch / steps_per_tick,
            gamma: cfg.step_gamma,
        }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let t = step / self.steps_per_tick.max(1);
        if t < self.warmup {
            return match self.style {
                ScheduleStyle::PerStep => self.peak_lr * (t + 1) as f64 / self.warmup as f64,
                // Linear from warmup_lr, in timm's order of operations (torchvision's LinearLR,
                // peak · (start + (1 − start) · t / W), is the same line).
                _ => self.warmup_lr + t as f64 * ((self.peak_lr - self.warmup_lr) / self.warmup as f64),
            };
        }
        match self.style {
            ScheduleStyle::Timm => {
                self.decay(if self.warmup_prefix { t - self.warmup } else { t }, self.length)
            }
            _ => self.decay(t - self.warmup, self.length.saturating_sub(self.warmup)),
        }
    }

    /// The decay `t` ticks into a span of `span` ticks (the final value from its end on).
    fn decay(&self, t: usize, span: usize) -> f64 {
        let fraction = (t as f64 / span.max(1) as f64).min(1.0);
        match self.kind {
            ScheduleKind::Cosine => {
                self.min_lr
                    + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * fraction).cos())
            }
            ScheduleKind::Linear => self.min_lr + (self.peak_lr - self.min_lr) * (1.0 - fraction),
            ScheduleKind::Step => {
                let k = t / self.step_every.max(1);
                (self.peak_lr * self.gamma.powi(k as i32)).max(self.min_lr)
            }
        }
    }
}

/// The epochs a config trains: `epochs`, then `cooldown_epochs` at `min_lr`, and with timm's
/// `warmup_prefix` the warmup's epochs before them (timm's num_epochs).
pub fn total_epochs(cfg: &TrainConfig) -> usize {
    let prefix = cfg.schedule_style == ScheduleStyle::Timm && cfg.warmup_prefix;
    cfg.epochs + cfg.cooldown_epochs + if prefix { cfg.warmup_epochs as usize } else { 0 }
}

/// The schedule keys' consistency (called by `TrainConfig::validate`).
pub fn validate(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(Error::Usage(m));
    let style = cfg.schedule_style;
    let only = [
        ("--warmup-lr", cfg.warmup_lr.is_some(), ScheduleStyle::Timm),
        ("--warmup-prefix", cfg.warmup_prefix, ScheduleStyle::Timm),
        ("--sched-on-updates", cfg.sched_on_updates, ScheduleStyle::Timm),
        ("--lr-warmup-decay", cfg.lr_warmup_decay.is_some(), ScheduleStyle::Torchvision),
    ];
    if let Some((flag, _, owner)) = only.iter().find(|(_, set, owner)| *set && *owner != style) {
        return bad(format!(
            "{flag} is {0}'s schedule semantics: add --schedule-style {0} (this run's style is {1})",
            owner.name(),
            style.name()
        ));
    }
    if style != ScheduleStyle::PerStep && cfg.warmup_epochs.fract() != 0.0 {
        return bad(format!(
            "--warmup-epochs must be a whole number with --schedule-style {} (one change per epoch), got {}",
            style.name(),
            cfg.warmup_epochs
        ));
    }
    if let Some(w) = cfg.warmup_lr {
        if !(w >= 0.0 && w.is_finite()) {
            return bad(format!("--warmup-lr must be a finite number >= 0, got {w}"));
        }
    }
    if let Some(d) = cfg.lr_warmup_decay {
        if !(d > 0.0 && d <= 1.0) {
            return bad(format!("--lr-warmup-decay must be in (0, 1], got {d}"));
        }
    }
    if cfg.cooldown_epochs > 0 && cfg.schedule == ScheduleKind::Step {
        return bad(
            "--cooldown-epochs applies to the cosine and linear schedules, which end at --min-lr (the step \
             schedule has no end to cool down after)"
                .into(),
        );
    }
    Ok(())
}
