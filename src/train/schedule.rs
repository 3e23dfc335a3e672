//! Learning rate as a pure function of the optimizer step, so resuming needs only the step.
//!
//! Three conventions (`schedule_style`); the decay after the warmup is one of `ScheduleKind`:
//! - per-step (the default): a new learning rate every optimizer step; linear warmup from 0 (step
//!   s of W: peak · (s + 1) / W) over the first `warmup_epochs`, then the decay over the remaining
//!   epochs (with `linear` and a warmup: FFCV's triangular schedule).
//! - torchvision (its classification reference's train.py): one change per epoch; warmup by
//!   LinearLR from `lr_warmup_decay` · peak (or ConstantLR at it), then the decay over the
//!   remaining epochs (SequentialLR with CosineAnnealingLR, StepLR, ExponentialLR = StepLR every
//!   epoch, MultiStepLR or PolynomialLR); tests/golden/torchvision_schedules.json holds torch's
//!   own values.
//! - timm (train.py): one change per epoch (every update with `sched_on_updates`), warmup from
//!   `warmup_lr` (t · (peak − warmup_lr) / warmup_t), the decay over all `epochs` counting the
//!   warmup ones (after them with `warmup_prefix`), then `cooldown_epochs` at `min_lr`. This is
//!   timm's CosineLRScheduler / TanhLRScheduler / PolyLRScheduler (`linear`: power 1) with their
//!   cycles and k-decay, StepLRScheduler and MultiStepLRScheduler, each with timm's learning-rate
//!   noise, stepped as train.py steps them; tests/golden/timm_schedules.json holds timm's own
//!   values. Not reproduced: timm's plateau scheduler (driven by the eval metric, not the step)
//!   and its wsd/rsqrt schedules.

use super::config::TrainConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Step,
    Multistep,
    Linear,
    Poly,
    Tanh,
    Constant,
}

impl ScheduleKind {
    /// The kinds that decay to `min_lr` at the end of `epochs` (a cooldown follows them; timm
    /// cycles them).
    pub fn ends_at_min_lr(self) -> bool {
        matches!(self, ScheduleKind::Cosine | ScheduleKind::Linear | ScheduleKind::Poly | ScheduleKind::Tanh)
    }
}

/// The torchvision style's warmup shape (torchvision's `lr_warmup_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WarmupMethod {
    /// LinearLR: from `lr_warmup_decay` x the peak to the peak.
    Linear,
    /// ConstantLR: `lr_warmup_decay` x the peak, then the peak.
    Constant,
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
/// timm train.py's defaults for `--lr-cycle-decay` and `--lr-noise-pct`.
pub const TIMM_CYCLE_DECAY: f64 = 0.5;
pub const TIMM_NOISE_PCT: f64 = 0.67;
/// torchvision's reference default `--lr-warmup-decay`.
pub const TORCHVISION_WARMUP_DECAY: f64 = 0.01;

/// timm's hyperbolic-tangent bounds (TanhLRScheduler's `lb`, `ub`).
const TANH_LB: f64 = -7.0;
const TANH_UB: f64 = 3.0;

/// timm's cycles: restarts of the cosine / tanh / poly decay, and its k-decay.
#[derive(Clone, Debug, PartialEq)]
pub struct Cycles {
    pub limit: usize,
    pub mul: f64,
    pub decay: f64,
    pub k: f64,
}

/// timm's learning-rate noise: lr · (1 + n) on ticks in [from, until).
#[derive(Clone, Debug, PartialEq)]
pub struct Noise {
    pub from: f64,
    pub until: Option<f64>,
    pub pct: f64,
    pub std: f64,
    pub seed: u64,
}

impl Noise {
    /// timm's `_calculate_noise` at tick t: torch's normal draws from a generator seeded with
    /// seed + t, the first one (times std) within ±pct.
    fn at(&self, t: usize) -> f64 {
        let seed = self.seed.wrapping_add(t as u64);
        let mut n = 16;
        loop {
            // A CPU generator cannot fail to draw; were it to, the step runs without noise.
            let draws = crate::ffi::seeded_randn(seed, n).unwrap_or_default();
            if let Some(v) = draws.iter().map(|d| d * self.std).find(|v| v.abs() < self.pct) {
                return v;
            }
            // validate() keeps pct / std >= 0.01: 65536 draws all outside it has odds < e^-500.
            if draws.is_empty() || n >= 1 << 16 {
                return 0.0;
            }
            n *= 16;
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
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
    /// torchvision: linear warmup from `warmup_lr`, or constant at it.
    pub warmup_method: WarmupMethod,
    /// timm: the decay starts after the warmup instead of counting it.
    pub warmup_prefix: bool,
    /// The decay's length, `epochs` in ticks (the cosine and linear decays end at `min_lr` there).
    pub length: usize,
    /// Step decay: multiply by `gamma` every `step_every` ticks (after warmup)...
    pub step_every: usize,
    pub gamma: f64,
    /// ... multistep: at each of these ticks.
    pub milestones: Vec<usize>,
    /// Poly decay's power (1 for linear).
    pub power: f64,
    /// timm style only (the other styles: one cycle, k = 1, no noise).
    pub cycles: Cycles,
    pub noise: Option<Noise>,
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
        let ticks_per_epoch = steps_per_epoch / steps_per_tick;
        let peak_lr = cfg.lr_scaling.peak_lr(cfg.lr, global_batch);
        let length = cfg.epochs * ticks_per_epoch;
        Self {
            kind: cfg.schedule,
            style: cfg.schedule_style,
            peak_lr,
            min_lr: cfg.min_lr,
            steps_per_tick,
            warmup: (cfg.warmup_epochs * ticks_per_epoch as f64).round() as usize,
            warmup_lr: match cfg.schedule_style {
                ScheduleStyle::Torchvision => {
                    peak_lr * cfg.lr_warmup_decay.unwrap_or(TORCHVISION_WARMUP_DECAY)
                }
                _ => cfg.warmup_lr.unwrap_or(TIMM_WARMUP_LR),
            },
            warmup_method: cfg.lr_warmup_method.unwrap_or(WarmupMethod::Linear),
            warmup_prefix: cfg.warmup_prefix,
            length,
            step_every: cfg.step_epochs * ticks_per_epoch,
            gamma: cfg.step_gamma,
            milestones: cfg.decay_milestones.iter().map(|m| m * ticks_per_epoch).collect(),
            // Linear is poly with power 1 (timm's `linear` is its poly scheduler so).
            power: if cfg.schedule == ScheduleKind::Linear { 1.0 } else { cfg.poly_power },
            cycles: Cycles {
                limit: cfg.lr_cycle_limit.unwrap_or(1),
                mul: cfg.lr_cycle_mul.unwrap_or(1.0),
                decay: cfg.lr_cycle_decay.unwrap_or(TIMM_CYCLE_DECAY),
                k: cfg.lr_k_decay.unwrap_or(1.0),
            },
            // timm's noise range is a fraction of t_initial, `epochs` in ticks.
            noise: cfg.lr_noise.as_ref().map(|range| Noise {
                from: range[0] * length as f64,
                until: range.get(1).map(|u| u * length as f64),
                pct: cfg.lr_noise_pct.unwrap_or(TIMM_NOISE_PCT),
                std: cfg.lr_noise_std.unwrap_or(1.0),
                seed: cfg.seed,
            }),
        }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let t = step / self.steps_per_tick.max(1);
        match self.style {
            ScheduleStyle::Timm => self.timm_lr(t),
            ScheduleStyle::PerStep if t < self.warmup => self.peak_lr * (t + 1) as f64 / self.warmup as f64,
            ScheduleStyle::Torchvision if t < self.warmup => match self.warmup_method {
                // torchvision's LinearLR, peak · (start + (1 − start) · t / W), is timm's line.
                WarmupMethod::Linear => self.linear_warmup(t, self.peak_lr),
                WarmupMethod::Constant => self.warmup_lr,
            },
            _ => self.decay(t - self.warmup, self.length.saturating_sub(self.warmup)),
        }
    }

    /// Linear from warmup_lr towards `target` at tick W, in timm's order of operations.
    fn linear_warmup(&self, t: usize, target: f64) -> f64 {
        self.warmup_lr + t as f64 * ((target - self.warmup_lr) / self.warmup as f64)
    }

    /// Per-step and torchvision styles: the decay `t` ticks into a span of `span` ticks (the final
    /// value from its end on).
    fn decay(&self, t: usize, span: usize) -> f64 {
        let fraction = (t as f64 / span.max(1) as f64).min(1.0);
        let (peak, min) = (self.peak_lr, self.min_lr);
        match self.kind {
            ScheduleKind::Cosine => {
                min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * fraction).cos())
            }
            ScheduleKind::Linear | ScheduleKind::Poly => {
                min + (peak - min) * (1.0 - fraction).powf(self.power)
            }
            ScheduleKind::Tanh if t >= span => min,
            ScheduleKind::Tanh => {
                min + 0.5 * (peak - min) * (1.0 - (TANH_LB * (1.0 - fraction) + TANH_UB * fraction).tanh())
            }
            ScheduleKind::Step => (peak * self.gamma.powi((t / self.step_every.max(1)) as i32)).max(min),
            // torch's MultiStepLR: milestone m applies from tick m on.
            ScheduleKind::Multistep => {
                (peak * self.gamma.powi(self.milestones.iter().filter(|&&m| m <= t).count() as i32)).max(min)
            }
            ScheduleKind::Constant => peak,
        }
    }

    /// timm style at tick t: what timm's scheduler sets after `step(t)` (or `step_update(t)`).
    fn timm_lr(&self, t: usize) -> f64 {
        // train.py's first epoch (or update) runs at the value the scheduler set when it was
        // built: no decay, no noise.
        if t == 0 {
            return if self.warmup > 0 { self.warmup_lr } else { self.peak_lr };
        }
        let lr = if t < self.warmup {
            // timm's tanh scheduler warms up to its value at the warmup's end, unless prefixed.
            let target = match self.kind {
                ScheduleKind::Tanh if !self.warmup_prefix => self.timm_decay(self.warmup),
                _ => self.peak_lr,
            };
            self.linear_warmup(t, target)
        } else {
            self.timm_decay(if self.warmup_prefix { t - self.warmup } else { t })
        };
        match &self.noise {
            Some(noise) if noise.from <= t as f64 && noise.until.is_none_or(|u| (t as f64) < u) => {
                lr + lr * noise.at(t)
            }
            _ => lr,
        }
    }

    /// timm's `_get_lr` after the warmup, term for term in its order of operations.
    fn timm_decay(&self, t: usize) -> f64 {
        let (peak, min) = (self.peak_lr, self.min_lr);
        match self.kind {
            ScheduleKind::Step => peak * self.gamma.powf((t / self.step_every.max(1)) as f64),
            // timm's MultiStepLRScheduler: bisect_right(milestones, t + 1), i.e. milestone m
            // from tick m - 1 on (timm keeps this on purpose).
            ScheduleKind::Multistep => {
                peak * self.gamma.powf(self.milestones.iter().filter(|&&m| m <= t + 1).count() as f64)
            }
            ScheduleKind::Constant => peak,
            ScheduleKind::Cosine | ScheduleKind::Linear | ScheduleKind::Poly | ScheduleKind::Tanh => {
                let c = &self.cycles;
                let t_initial = self.length.max(1) as f64;
                let (i, t_i, t_curr) = if c.mul != 1.0 {
                    let i = ((1.0 - t as f64 / t_initial * (1.0 - c.mul)).ln() / c.mul.ln()).floor();
                    let t_curr = t as f64 - (1.0 - c.mul.powf(i)) / (1.0 - c.mul) * t_initial;
                    (i, c.mul.powf(i) * t_initial, t_curr)
                } else {
                    let i = t / self.length.max(1);
                    (i as f64, t_initial, (t - self.length * i) as f64)
                };
                if i >= c.limit as f64 {
                    return min;
                }
                let lr_max = peak * c.decay.powf(i);
                match self.kind {
                    ScheduleKind::Cosine => {
                        min + 0.5
                            * (lr_max - min)
                            * (1.0 + (std::f64::consts::PI * t_curr.powf(c.k) / t_i.powf(c.k)).cos())
                    }
                    ScheduleKind::Tanh => {
                        let tr = t_curr / t_i;
                        min + 0.5 * (lr_max - min) * (1.0 - (TANH_LB * (1.0 - tr) + TANH_UB * tr).tanh())
                    }
                    _ => min + (lr_max - min) * (1.0 - t_curr.powf(c.k) / t_i.powf(c.k)).powf(self.power),
                }
            }
        }
    }
}

/// The epochs a config trains (timm's num_epochs in the timm style): `epochs` (all cycles of
/// them with timm's `lr_cycle_limit`), then `cooldown_epochs` at `min_lr`, and with timm's
/// `warmup_prefix` the warmup's epochs before them.
pub fn total_epochs(cfg: &TrainConfig) -> usize {
    if cfg.schedule_style != ScheduleStyle::Timm {
        return cfg.epochs + cfg.cooldown_epochs;
    }
    let prefix = if cfg.warmup_prefix { cfg.warmup_epochs as usize } else { 0 };
    if !cfg.schedule.ends_at_min_lr() {
        // timm's step schedules have no cycles and no cooldown.
        return cfg.epochs + prefix;
    }
    // timm's get_cycle_length().
    let cycles = cfg.lr_cycle_limit.unwrap_or(1).max(1);
    let mul = cfg.lr_cycle_mul.unwrap_or(1.0);
    let cycled = if mul == 1.0 {
        cfg.epochs * cycles
    } else {
        (-(cfg.epochs as f64) * (mul.powf(cycles as f64) - 1.0) / (1.0 - mul)).floor() as usize
    };
    cycled + prefix + cfg.cooldown_epochs
}

/// The schedule keys' consistency (called by `TrainConfig::validate`).
pub fn validate(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(Error::Usage(m));
    let style = cfg.schedule_style;
    let only = [
        ("--warmup-lr", cfg.warmup_lr.is_some(), ScheduleStyle::Timm),
        ("--warmup-prefix", cfg.warmup_prefix, ScheduleStyle::Timm),
        ("--sched-on-updates", cfg.sched_on_updates, ScheduleStyle::Timm),
        ("--lr-cycle-limit", cfg.lr_cycle_limit.is_some(), ScheduleStyle::Timm),
        ("--lr-cycle-mul", cfg.lr_cycle_mul.is_some(), ScheduleStyle::Timm),
        ("--lr-cycle-decay", cfg.lr_cycle_decay.is_some(), ScheduleStyle::Timm),
        ("--lr-k-decay", cfg.lr_k_decay.is_some(), ScheduleStyle::Timm),
        ("--lr-noise", cfg.lr_noise.is_some(), ScheduleStyle::Timm),
        ("--lr-noise-pct", cfg.lr_noise_pct.is_some(), ScheduleStyle::Timm),
        ("--lr-noise-std", cfg.lr_noise_std.is_some(), ScheduleStyle::Timm),
        ("--lr-warmup-decay", cfg.lr_warmup_decay.is_some(), ScheduleStyle::Torchvision),
        ("--lr-warmup-method", cfg.lr_warmup_method.is_some(), ScheduleStyle::Torchvision),
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
    let kind = format!("{:?}", cfg.schedule).to_lowercase();
    if cfg.cooldown_epochs > 0 && !cfg.schedule.ends_at_min_lr() {
        return bad(format!(
            "--cooldown-epochs applies to the cosine, linear, poly and tanh schedules, which end at --min-lr \
             (the {kind} schedule has no end to cool down after)"
        ));
    }
    let cycled = [
        ("--lr-cycle-limit", cfg.lr_cycle_limit.is_some()),
        ("--lr-cycle-mul", cfg.lr_cycle_mul.is_some()),
        ("--lr-cycle-decay", cfg.lr_cycle_decay.is_some()),
    ];
    if let Some((flag, _)) = cycled.iter().find(|(_, set)| *set && !cfg.schedule.ends_at_min_lr()) {
        return bad(format!(
            "{flag} applies to timm's cycle schedules (cosine, linear, poly, tanh), not {kind}"
        ));
    }
    let k_decayed = matches!(cfg.schedule, ScheduleKind::Cosine | ScheduleKind::Linear | ScheduleKind::Poly);
    if cfg.lr_k_decay.is_some() && !k_decayed {
        return bad(format!(
            "--lr-k-decay applies to the cosine, linear and poly schedules (timm's), not {kind}"
        ));
    }
    let positive = [
        ("--poly-power", Some(cfg.poly_power)),
        ("--lr-cycle-mul", cfg.lr_cycle_mul),
        ("--lr-cycle-decay", cfg.lr_cycle_decay),
        ("--lr-k-decay", cfg.lr_k_decay),
        ("--lr-noise-pct", cfg.lr_noise_pct),
        ("--lr-noise-std", cfg.lr_noise_std),
    ];
    for (flag, v) in positive {
        if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
            return bad(format!("{flag} must be a finite number > 0, got {v}"));
        }
    }
    if cfg.lr_cycle_limit == Some(0) || cfg.lr_cycle_limit.is_some_and(|c| c > 1000) {
        return bad(format!("--lr-cycle-limit must be in 1..=1000, got {:?}", cfg.lr_cycle_limit));
    }
    if let Some(range) = &cfg.lr_noise {
        let ok = match range[..] {
            [from] => (0.0..=1.0).contains(&from),
            [from, until] => (0.0..=1.0).contains(&from) && from < until && until <= 1.0,
            _ => false,
        };
        if !ok {
            return bad(format!(
                "--lr-noise must be one fraction of --epochs (noise from there on) or two, from < until \
                 (0 <= from, until <= 1), got {range:?}"
            ));
        }
        let (pct, std) = (cfg.lr_noise_pct.unwrap_or(TIMM_NOISE_PCT), cfg.lr_noise_std.unwrap_or(1.0));
        if pct / std < 0.01 {
            return bad(format!(
                "--lr-noise-pct / --lr-noise-std must be at least 0.01 (each draw outside it is redrawn), got \
                 {pct} / {std}"
            ));
        }
    }
    if cfg.schedule == ScheduleKind::Multistep {
        let m = &cfg.decay_milestones;
        if m.is_empty() || m[0] == 0 || m.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!("--decay-milestones must be increasing epochs >= 1, got {m:?}"));
        }
    }
    Ok(())
}
