//! The schedule keys of a config: the learning-rate `Schedule` they describe, the epochs they
//! train, where a shorter branch forks, and their consistency. The schedule module itself is
//! pure arithmetic over a `Schedule`; this is the one place that reads the keys.

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::train::step::schedule::{
    Cycles, DecayFn, Noise, Schedule, ScheduleKind, ScheduleStyle, WarmupMethod, Wsd, TIMM_CYCLE_DECAY,
    TIMM_NOISE_PCT, TIMM_WARMUP_LR, TORCHVISION_WARMUP_DECAY, WSD_DECAY_FRACTION,
};

impl TrainConfig {
    /// The learning-rate schedule this config describes, for `steps_per_epoch` optimizer steps per epoch and a
    /// global batch of `global_batch` images (the peak learning rate: `TrainConfig::peak_lr`).
    pub fn lr_schedule(&self, steps_per_epoch: usize, global_batch: usize) -> Schedule {
        let cfg = self;
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
        let peak_lr = cfg.peak_lr(global_batch);
        let length = cfg.epochs * ticks_per_epoch;
        let warmup = (cfg.warmup_epochs * ticks_per_epoch as f64).round() as usize;
        let wsd = cfg.schedule.is_wsd().then(|| {
            // timm fits the stable and decay phases inside `epochs` after the warmup, unless
            // prefixed (create_scheduler_v2's t_sched); so does the per-step style.
            let prefixed = cfg.schedule_style == ScheduleStyle::Timm && cfg.warmup_prefix;
            let span = if prefixed { length } else { length.saturating_sub(warmup) };
            let d = cfg.decay_epochs.unwrap_or(WSD_DECAY_FRACTION);
            let ticks = if d < 1.0 { d * span as f64 } else { d * ticks_per_epoch as f64 };
            Wsd {
                span,
                // Python's round(), half to even; validate() keeps it within 1..=span.
                decay: (ticks.round_ties_even() as usize).clamp(1, span.max(1)),
                decay_fn: cfg.lr_decay_fn.unwrap_or(if cfg.schedule == ScheduleKind::Rsqrt {
                    DecayFn::Linear
                } else {
                    DecayFn::OneMinusSqrt
                }),
                timescale: (cfg.schedule == ScheduleKind::Rsqrt)
                    .then(|| cfg.lr_stable_timescale.map_or(warmup as f64, |s| s * ticks_per_epoch as f64)),
            }
        });
        Schedule {
            kind: cfg.schedule,
            style: cfg.schedule_style,
            peak_lr,
            min_lr: cfg.min_lr,
            steps_per_tick,
            warmup,
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
            wsd,
        }
    }

    /// Where a branch of `budget` epochs forks from a run of this config (see `Schedule::branch_step`), in
    /// optimizer steps of the schedule's clock; None unless the schedule is wsd / rsqrt and the budget
    /// is below `epochs` with a decay that fits it.
    pub fn branch_step(&self, budget: usize, steps_per_epoch: usize, global_batch: usize) -> Option<usize> {
        let cfg = self;
        let shorter = TrainConfig { epochs: budget, stop_before_decay_of: None, ..cfg.clone() };
        shorter.validate().ok().filter(|_| budget < cfg.epochs)?;
        shorter.lr_schedule(steps_per_epoch, global_batch).branch_step()
    }

    /// The epochs this config trains (timm's num_epochs in the timm style): `epochs` (all cycles of
    /// them with timm's `lr_cycle_limit`), then `cooldown_epochs` at `min_lr`, and with timm's
    /// `warmup_prefix` the warmup's epochs before them.
    pub fn total_epochs(&self) -> usize {
        let cfg = self;
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
}

/// The schedule keys' consistency (called by `TrainConfig::validate`).
pub(super) fn validate(cfg: &TrainConfig) -> Result<()> {
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
    let prefixed = style == ScheduleStyle::Timm && cfg.warmup_prefix;
    if !prefixed && cfg.warmup_epochs > cfg.epochs as f64 {
        return bad(format!(
            "--warmup-epochs {} is longer than the run (--epochs {}): it would end inside its warmup, before the \
             peak learning rate",
            cfg.warmup_epochs, cfg.epochs
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
    let kind = cfg.schedule.name();
    validate_wsd(cfg, &kind)?;
    if cfg.cooldown_epochs > 0 && !cfg.schedule.ends_at_min_lr() {
        return bad(format!(
            "--cooldown-epochs applies to the {} schedules, which end at --min-lr (the {kind} schedule has no end \
             to cool down after)",
            ScheduleKind::names_where(ScheduleKind::ends_at_min_lr)
        ));
    }
    let cycled = [
        ("--lr-cycle-limit", cfg.lr_cycle_limit.is_some()),
        ("--lr-cycle-mul", cfg.lr_cycle_mul.is_some()),
        ("--lr-cycle-decay", cfg.lr_cycle_decay.is_some()),
    ];
    if let Some((flag, _)) = cycled.iter().find(|(_, set)| *set && !cfg.schedule.cycles()) {
        return bad(format!(
            "{flag} applies to timm's cycle schedules ({}), not {kind}",
            ScheduleKind::names_where(ScheduleKind::cycles)
        ));
    }
    if cfg.lr_k_decay.is_some() && !cfg.schedule.k_decays() {
        return bad(format!(
            "--lr-k-decay applies to the {} schedules (timm's), not {kind}",
            ScheduleKind::names_where(ScheduleKind::k_decays)
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

/// The wsd / rsqrt keys: theirs only, and a final decay that fits the phase after the warmup
/// (create_scheduler_v2's checks, in epochs).
fn validate_wsd(cfg: &TrainConfig, kind: &str) -> Result<()> {
    let bad = |m: String| Err(Error::Usage(m));
    let wsd_keys = [
        ("--decay-epochs", cfg.decay_epochs.is_some(), cfg.schedule.is_wsd()),
        ("--lr-decay-fn", cfg.lr_decay_fn.is_some(), cfg.schedule.is_wsd()),
        ("--lr-stable-timescale", cfg.lr_stable_timescale.is_some(), cfg.schedule == ScheduleKind::Rsqrt),
    ];
    if let Some((flag, ..)) = wsd_keys.iter().find(|(_, set, applies)| *set && !applies) {
        let owner =
            if *flag == "--lr-stable-timescale" { "rsqrt schedule" } else { "wsd and rsqrt schedules" };
        let step =
            if *flag == "--decay-epochs" { " (the step schedule's interval is --step-epochs)" } else { "" };
        return bad(format!("{flag} applies to the {owner}, not {kind}{step}"));
    }
    if !cfg.schedule.is_wsd() {
        return Ok(());
    }
    if cfg.schedule_style == ScheduleStyle::Torchvision {
        return bad(format!(
            "the {kind} schedule is timm's (WSDLRScheduler): torchvision's reference has none; use --schedule-style timm \
             or per-step"
        ));
    }
    let prefixed = cfg.schedule_style == ScheduleStyle::Timm && cfg.warmup_prefix;
    let span = if prefixed { cfg.epochs as f64 } else { cfg.epochs as f64 - cfg.warmup_epochs };
    let after = if prefixed { "--epochs" } else { "--epochs - --warmup-epochs" };
    if span <= 0.0 {
        return bad(format!(
            "the {kind} schedule needs epochs after its warmup: --epochs {} with --warmup-epochs {} leaves none",
            cfg.epochs, cfg.warmup_epochs
        ));
    }
    let d = cfg.decay_epochs.unwrap_or(WSD_DECAY_FRACTION);
    // An epoch clock rounds the decay to whole epochs (Python's round, half to even), which may
    // leave none; a step clock keeps at least one step.
    let epoch_clock = cfg.schedule_style == ScheduleStyle::Timm && !cfg.sched_on_updates;
    let decay = if d < 1.0 { d * span } else { d };
    let decay = if epoch_clock { decay.round_ties_even() } else { decay };
    if !(d > 0.0 && d.is_finite()) || decay <= 0.0 || decay > span {
        return bad(format!(
            "--decay-epochs must be a fraction in (0, 1) of {after} ({span}) or epochs >= 1, giving a final decay \
             of {}at most {span} epochs; got {d}",
            if epoch_clock { "at least one whole epoch and " } else { "" }
        ));
    }
    if let Some(s) = cfg.lr_stable_timescale.filter(|s| !(*s > 0.0 && s.is_finite())) {
        return bad(format!("--lr-stable-timescale must be a positive number of epochs, got {s}"));
    }
    if cfg.schedule == ScheduleKind::Rsqrt && cfg.lr_stable_timescale.is_none() && cfg.warmup_epochs == 0.0 {
        return bad(
            "the rsqrt schedule's timescale defaults to --warmup-epochs, which is 0: set --lr-stable-timescale \
             (epochs) or a warmup"
                .into(),
        );
    }
    Ok(())
}
