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
//!   values, as it does for timm's WSDLRScheduler (`wsd`, `rsqrt`). Not reproduced: timm's plateau
//!   scheduler (driven by the eval metric, not the step; deprecated in timm 1.0.31, whose docs
//!   recommend wsd instead).
//!
//! `wsd` (warmup-stable-decay, MiniCPM) holds the peak after the warmup and decays to `min_lr`
//! over the last `decay_epochs` only; `rsqrt` (Big Vision) decays as (1 + t / timescale)^-1/2
//! after the warmup, then the same final decay. Both are timm's WSDLRScheduler: lr = min + (peak ·
//! stable(t) − min) · decay(fraction of the final decay), in the per-step and timm styles.

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
    Wsd,
    Rsqrt,
}

impl ScheduleKind {
    /// The kinds that decay to `min_lr` at the end of `epochs` (a cooldown may follow them).
    pub fn ends_at_min_lr(self) -> bool {
        self.cycles() || self.is_wsd()
    }

    /// The kinds timm restarts in cycles.
    pub fn cycles(self) -> bool {
        matches!(self, ScheduleKind::Cosine | ScheduleKind::Linear | ScheduleKind::Poly | ScheduleKind::Tanh)
    }

    /// timm's WSDLRScheduler: a stable phase, then a decay over the last `decay_epochs`.
    pub fn is_wsd(self) -> bool {
        matches!(self, ScheduleKind::Wsd | ScheduleKind::Rsqrt)
    }

    /// The kinds timm's `k_decay` shapes (its cosine and poly schedulers).
    pub fn k_decays(self) -> bool {
        matches!(self, ScheduleKind::Cosine | ScheduleKind::Linear | ScheduleKind::Poly)
    }

    /// The kind's name, as the config and the flag spell it.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string())
    }

    /// The names of the kinds for which `pred` holds, for messages ("cosine, linear and poly").
    pub fn names_where(pred: impl Fn(Self) -> bool) -> String {
        use clap::ValueEnum;
        let names: Vec<String> =
            Self::value_variants().iter().filter(|k| pred(**k)).map(|k| k.name()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }
}

/// The shape of the wsd / rsqrt schedules' final decay, from 1 to 0 over its fraction f (timm's
/// WSDLRScheduler `decay_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecayFn {
    /// 1 − f (the trapezoidal schedule; rsqrt's default, Big Vision's cooldown).
    Linear,
    /// 1 − √f (wsd's default; Hägele et al. 2024's best cooldown).
    #[serde(rename = "1-sqrt")]
    #[value(name = "1-sqrt")]
    OneMinusSqrt,
    /// (1 + cos πf) / 2.
    Cosine,
    /// 1 − f^0.5 (timm's `power` at its fixed decay_power 0.5).
    Power,
    /// (r^f − r) / (1 − r), r = 0.1 (timm's `exp` at its fixed decay_ratio).
    Exp,
}

impl DecayFn {
    /// timm's `_decay(frac)`, term for term.
    fn at(self, f: f64) -> f64 {
        match self {
            DecayFn::Linear => 1.0 - f,
            DecayFn::OneMinusSqrt => 1.0 - f.sqrt(),
            DecayFn::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * f).cos()),
            DecayFn::Power => 1.0 - f.powf(WSD_DECAY_POWER),
            DecayFn::Exp => (WSD_DECAY_RATIO.powf(f) - WSD_DECAY_RATIO) / (1.0 - WSD_DECAY_RATIO),
        }
    }
}

/// timm's WSDLRScheduler defaults that its create_scheduler_v2 (and so train.py) never changes.
const WSD_DECAY_POWER: f64 = 0.5;
const WSD_DECAY_RATIO: f64 = 0.1;
/// timm's default `decay_epochs` for wsd / rsqrt: the last fifth of the stable + decay phases.
pub const WSD_DECAY_FRACTION: f64 = 0.2;

/// The wsd / rsqrt phases after the warmup, in ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct Wsd {
    /// The stable and decay phases together (timm's `t_initial` of WSDLRScheduler).
    pub span: usize,
    /// The final decay, the last `decay` ticks of `span`.
    pub decay: usize,
    pub decay_fn: DecayFn,
    /// rsqrt's timescale: the stable phase is (1 + t / timescale)^-1/2 (None: wsd, constant).
    pub timescale: Option<f64>,
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

/// How `lr_base` scales to the run's global batch when `lr` is not given (timm's `lr_base_scale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// lr_base x global batch / lr_base_size (Goyal et al.; timm's default for SGD-like optimizers).
    Linear,
    /// lr_base x sqrt(global batch / lr_base_size) (timm's default for Adam-family and LAMB).
    Sqrt,
}

impl LrScaling {
    /// timm train.py's choice when `lr_base_scale` is not given: sqrt where the optimizer's name
    /// contains "ada" or "lamb" (Adam-family, LAMB), linear otherwise.
    pub fn timm_default(opt_name: &str) -> Self {
        let name = opt_name.to_ascii_lowercase();
        if name.contains("ada") || name.contains("lamb") {
            LrScaling::Sqrt
        } else {
            LrScaling::Linear
        }
    }

    /// `lr_base` scaled from a batch of `base_size` images to `global_batch` images.
    pub fn scale(self, lr_base: f64, base_size: usize, global_batch: usize) -> f64 {
        let ratio = global_batch as f64 / base_size.max(1) as f64;
        match self {
            LrScaling::Linear => lr_base * ratio,
            LrScaling::Sqrt => lr_base * ratio.sqrt(),
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
    /// wsd and rsqrt only.
    pub wsd: Option<Wsd>,
}

impl Schedule {
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
            _ if self.wsd.is_some() => self.wsd_lr(t - self.warmup),
            _ => self.decay(t - self.warmup, self.length.saturating_sub(self.warmup)),
        }
    }

    /// wsd / rsqrt: where a branch for this schedule's budget is taken, in optimizer steps of the
    /// schedule's clock: the first step of the stable phase's last tick (it and every step before
    /// it run at the stable learning rate; the decay starts at the next tick).
    pub fn branch_step(&self) -> Option<usize> {
        let w = self.wsd.as_ref()?;
        Some((self.warmup + w.span - w.decay) * self.steps_per_tick.max(1))
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
            // (wsd and rsqrt: wsd_lr.)
            ScheduleKind::Constant | ScheduleKind::Wsd | ScheduleKind::Rsqrt => peak,
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
        } else if self.wsd.is_some() {
            // WSD's warmup is always a prefix of its stable phase.
            self.wsd_lr(t - self.warmup)
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

    /// wsd / rsqrt `t_s` ticks after the warmup: timm WSDLRScheduler's `_get_lr`, term for term.
    fn wsd_lr(&self, t_s: usize) -> f64 {
        let Some(w) = &self.wsd else { return self.peak_lr };
        let stable = w.timescale.map_or(1.0, |s| (1.0 + t_s as f64 / s).powf(-0.5));
        // A decaying stable phase stays at or above min_lr (the decay then has nothing to do).
        let stable_lr = (self.peak_lr * stable).max(self.min_lr);
        let into_decay = t_s as f64 - (w.span as f64 - w.decay as f64);
        if into_decay <= 0.0 {
            return stable_lr;
        }
        let fraction = (into_decay / w.decay as f64).min(1.0);
        self.min_lr + (stable_lr - self.min_lr) * w.decay_fn.at(fraction)
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
            // (wsd and rsqrt: wsd_lr.)
            ScheduleKind::Constant | ScheduleKind::Wsd | ScheduleKind::Rsqrt => peak,
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
