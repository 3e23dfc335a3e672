//! The training guards, asked once per optimizer step with the step's health (loss, whether the
//! gradients are finite, the fp16 loss scale); they answer with a typed `Decision`:
//! - take the step;
//! - skip it (non-finite loss or gradients: no update, counted);
//! - roll back (loss spike: > `spike_factor` x its running mean): the last in-memory snapshot of
//!   the whole training state is restored and the learning rate scaled by `spike_lr_factor`, at
//!   most `max_rollbacks` times;
//! - apply a remedy (divergence: `max_consecutive_skips` skipped steps in a row, or the fp16 loss
//!   scale under `min_loss_scale`): the snapshot is restored and the caller applies the next of
//!   `divergence_remedies`;
//! - stop, with the reason (the caller adds the diagnosis of where the activations blew up).
//!
//! What the guards track between steps is `GuardState`, saved in checkpoints.

use super::stability::Remedy;
use crate::error::Result;
use crate::train::config::TrainConfig;
use crate::train::run::state::{Named, Snapshot};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The guards' settings (from the training config).
#[derive(Clone, Debug, PartialEq)]
pub struct GuardConfig {
    pub spike_factor: f64,
    pub spike_lr_factor: f64,
    pub max_rollbacks: usize,
    pub spike_warmup: usize,
    pub snapshot_every: usize,
    pub max_consecutive_skips: usize,
    pub min_loss_scale: f64,
    pub remedies: Vec<Remedy>,
    /// Fault injection: the loss seen at this step is multiplied by 1000.
    pub inject_spike_at: Option<usize>,
}

impl GuardConfig {
    pub fn from_config(c: &TrainConfig) -> Self {
        Self {
            spike_factor: c.spike_factor,
            spike_lr_factor: c.spike_lr_factor,
            max_rollbacks: c.max_rollbacks,
            spike_warmup: c.spike_warmup,
            snapshot_every: c.snapshot_every,
            max_consecutive_skips: c.max_consecutive_skips,
            min_loss_scale: c.min_loss_scale,
            remedies: c.divergence_remedies.clone(),
            inject_spike_at: c.inject_spike_at,
        }
    }
}

/// The loss-spike guard's running mean, rollbacks and learning-rate reduction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpikeState {
    /// Exponential moving average of the loss (0.98), once `spike_warmup` steps were seen.
    pub loss_ema: Option<f64>,
    pub seen: usize,
    pub rollbacks: usize,
    /// Product of the learning-rate reductions so far.
    #[serde(default = "one")]
    pub lr_scale: f64,
}

fn one() -> f64 {
    1.0
}

impl SpikeState {
    pub fn new() -> Self {
        Self { lr_scale: 1.0, ..Default::default() }
    }
}

/// What the guards carry from step to step (saved in checkpoints, so a resumed run behaves the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    pub skipped_steps: usize,
    /// Skipped steps in a row, up to now.
    #[serde(default)]
    pub consecutive_skips: usize,
    #[serde(default = "SpikeState::new")]
    pub spike: SpikeState,
    /// Remedies the divergence guard has applied, in order (re-applied on resume).
    #[serde(default)]
    pub remedies: Vec<Remedy>,
}

impl Default for GuardState {
    fn default() -> Self {
        Self { skipped_steps: 0, consecutive_skips: 0, spike: SpikeState::new(), remedies: Vec::new() }
    }
}

/// One optimizer step's health, as the guards see it.
#[derive(Clone, Copy, Debug)]
pub struct StepHealth {
    pub step: usize,
    pub loss: f64,
    /// False when the loss scaler found inf/NaN or the gradient norm is not finite.
    pub grads_finite: bool,
    /// The fp16 loss scale after this step's update (None without a loss scaler).
    pub loss_scale: Option<f64>,
}

/// Why a run stops.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// Loss spikes beyond `max_rollbacks`: the full message.
    Spikes(String),
    /// Divergence with no remedy left: the reason, for the caller's diagnosis.
    Diverged(String),
}

/// The guards' verdict on one step.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Take,
    Skip,
    RolledBack {
        step: usize,
        loss: f64,
        mean: f64,
        to: usize,
        rollbacks: usize,
        lr_factor: f64,
        lr_scale: f64,
        factor: f64,
    },
    ApplyRemedy {
        step: usize,
        why: String,
        remedy: Remedy,
        to: usize,
    },
    Stop(Stop),
}

impl Decision {
    /// Whether the optimizer updates the weights.
    pub fn takes_step(&self) -> bool {
        matches!(self, Decision::Take)
    }

    /// The event to log, in words (a rollback or a remedy).
    pub fn event(&self) -> Option<String> {
        matches!(self, Decision::RolledBack { .. } | Decision::ApplyRemedy { .. }).then(|| self.to_string())
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Decision::Take => write!(f, "step taken"),
            Decision::Skip => write!(f, "skipped: non-finite loss or gradients"),
            Decision::RolledBack { step, loss, mean, to, rollbacks, lr_factor, lr_scale, factor } => write!(
                f,
                "rollback {rollbacks}: step {step} loss {loss:.4} > {factor} x running mean {mean:.4}; restored the \
                 snapshot of step {to}; learning rate x{lr_factor} (now x{lr_scale})"
            ),
            Decision::ApplyRemedy { step, why, remedy, to } => write!(
                f,
                "divergence guard at step {step}: {why}; applied remedy {remedy} and restored the snapshot of step \
                 {to} (weights, BN statistics, optimizer state, loss scale)"
            ),
            Decision::Stop(Stop::Spikes(m) | Stop::Diverged(m)) => write!(f, "stopped: {m}"),
        }
    }
}

const EMA_BETA: f64 = 0.98;

/// The live training state by name, built only when a guard needs it (to restore a snapshot or
/// take one), not on every step: a closure over the components, or a list of tensors.
pub trait LiveState {
    fn named(&self) -> Named;
}

impl LiveState for Named {
    fn named(&self) -> Named {
        self.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }
}

impl<F: Fn() -> Named> LiveState for F {
    fn named(&self) -> Named {
        self()
    }
}

pub struct Guards {
    cfg: GuardConfig,
    snapshot: Option<Snapshot>,
}

impl Guards {
    pub fn new(cfg: GuardConfig) -> Self {
        Self { cfg, snapshot: None }
    }

    fn spike_check_on(&self) -> bool {
        self.cfg.spike_factor > 0.0
    }

    /// Takes a snapshot of `live` when one is due (every `snapshot_every` steps, or when there is
    /// none) and something may need it (the spike check, or divergence remedies).
    pub fn maybe_snapshot(&mut self, step: usize, live: &dyn LiveState) {
        let wanted = self.spike_check_on() || !self.cfg.remedies.is_empty();
        let due = self.snapshot.is_none()
            || (self.cfg.snapshot_every > 0 && step.is_multiple_of(self.cfg.snapshot_every));
        if wanted && due {
            self.snapshot = Some(Snapshot::take(step, &live.named()));
        }
    }

    /// Whether `loss` is a spike; otherwise folds it into the running mean.
    fn is_spike(&self, s: &mut SpikeState, loss: f64) -> bool {
        if !self.spike_check_on() || !loss.is_finite() {
            return false;
        }
        if let Some(ema) = s.loss_ema {
            if s.seen >= self.cfg.spike_warmup && loss > self.cfg.spike_factor * ema {
                return true;
            }
            s.loss_ema = Some(EMA_BETA * ema + (1.0 - EMA_BETA) * loss);
        } else {
            s.loss_ema = Some(loss);
        }
        s.seen += 1;
        false
    }

    /// The verdict on one step; restores `live` from the snapshot when it rolls back or applies a
    /// remedy (the caller then applies the remedy to the config and model).
    pub fn check(&mut self, st: &mut GuardState, h: StepHealth, live: &dyn LiveState) -> Result<Decision> {
        let c = &self.cfg;
        let loss = if c.inject_spike_at == Some(h.step) { h.loss * 1000.0 } else { h.loss };
        if self.is_spike(&mut st.spike, loss) {
            let mean = st.spike.loss_ema.unwrap_or(f64::NAN);
            let c = &self.cfg;
            if st.spike.rollbacks >= c.max_rollbacks {
                return Ok(Decision::Stop(Stop::Spikes(format!(
                    "at step {}, loss {loss:.4} is over {} x its running mean {mean:.4} after {} rollbacks \
                     (--max-rollbacks); try a lower --lr or --clip-grad",
                    h.step, c.spike_factor, st.spike.rollbacks
                ))));
            }
            if let Some(snap) = &self.snapshot {
                snap.restore(&live.named())?;
                st.spike.rollbacks += 1;
                st.spike.lr_scale *= c.spike_lr_factor;
                st.skipped_steps += 1;
                return Ok(Decision::RolledBack {
                    step: h.step,
                    loss,
                    mean,
                    to: snap.step,
                    rollbacks: st.spike.rollbacks,
                    lr_factor: c.spike_lr_factor,
                    lr_scale: st.spike.lr_scale,
                    factor: c.spike_factor,
                });
            }
        }
        if h.grads_finite && h.loss.is_finite() {
            st.consecutive_skips = 0;
            return Ok(Decision::Take);
        }
        st.skipped_steps += 1;
        st.consecutive_skips += 1;
        let c = &self.cfg;
        let too_many = c.max_consecutive_skips > 0 && st.consecutive_skips >= c.max_consecutive_skips;
        let scale_floor = h.loss_scale.filter(|s| *s < c.min_loss_scale);
        if !too_many && scale_floor.is_none() {
            return Ok(Decision::Skip);
        }
        let why = match scale_floor {
            Some(s) if !too_many => {
                format!("the fp16 loss scale fell to {s:.3e} (floor {:.1e})", c.min_loss_scale)
            }
            _ => format!("{} consecutive steps had non-finite loss or gradients", st.consecutive_skips),
        };
        let next = c.remedies.get(st.remedies.len()).copied();
        // The snapshot is restored only when there is a remedy to continue with: a stopped run is
        // diagnosed as it is.
        match (next, &self.snapshot) {
            (Some(remedy), Some(snap)) => {
                snap.restore(&live.named())?;
                st.remedies.push(remedy);
                st.consecutive_skips = 0;
                Ok(Decision::ApplyRemedy { step: h.step, why, remedy, to: snap.step })
            }
            _ => {
                let applied = if st.remedies.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = st.remedies.iter().map(|r| r.to_string()).collect();
                    format!(" (after the remedies {})", names.join(", "))
                };
                Ok(Decision::Stop(Stop::Diverged(format!("{why}{applied}"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn cfg() -> GuardConfig {
        let mut c = GuardConfig::from_config(&TrainConfig::default());
        c.spike_warmup = 2;
        c.max_rollbacks = 1;
        c
    }

    fn health(step: usize, loss: f64) -> StepHealth {
        StepHealth { step, loss, grads_finite: true, loss_scale: None }
    }

    #[test]
    fn rollback_restores_the_exact_snapshot_and_is_bounded() {
        let live: Named = vec![
            ("w".into(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("s".into(), Tensor::from_slice(&[65536.0f32])),
        ];
        let mut g = Guards::new(cfg());
        g.maybe_snapshot(0, &live);
        let before: Vec<Tensor> = live.iter().map(|(_, t)| t.copy()).collect();
        let mut st = GuardState::default();
        // No verdict during warmup, then a spike is > factor x the running mean.
        assert_eq!(g.check(&mut st, health(0, 2.0), &live).unwrap(), Decision::Take);
        assert_eq!(g.check(&mut st, health(1, 2.0), &live).unwrap(), Decision::Take);
        assert_eq!(g.check(&mut st, health(2, 5.9), &live).unwrap(), Decision::Take, "below 3 x 2.0");
        tch::no_grad(|| {
            for (_, t) in &live {
                let _ = t.shallow_clone().g_add_scalar_(1.5);
            }
        });
        let d = g.check(&mut st, health(3, 100.0), &live).unwrap();
        assert!(matches!(d, Decision::RolledBack { to: 0, rollbacks: 1, .. }), "{d:?}");
        assert!(d.event().unwrap().contains("restored the snapshot of step 0"));
        assert!(
            live.iter().zip(&before).all(|((_, a), b)| a.equal(b)),
            "every tensor is restored bit for bit"
        );
        assert_eq!((st.spike.lr_scale, st.skipped_steps), (0.5, 1));
        let d = g.check(&mut st, health(4, 100.0), &live).unwrap();
        assert!(matches!(&d, Decision::Stop(Stop::Spikes(m)) if m.contains("--max-rollbacks")), "{d:?}");
        // Non-finite losses are the skip guard's business, not the spike check's.
        assert_eq!(g.check(&mut st, health(5, f64::NAN), &live).unwrap(), Decision::Skip);
    }

    #[test]
    fn divergence_applies_remedies_in_order_then_stops() {
        let live: Named = vec![("w".into(), Tensor::from_slice(&[1.0f32]))];
        let mut c = cfg();
        c.spike_factor = 0.0;
        c.max_consecutive_skips = 2;
        c.remedies = vec![Remedy::Clamp(1.0)];
        let mut g = Guards::new(c);
        g.maybe_snapshot(0, &live);
        let mut st = GuardState::default();
        let bad = StepHealth { step: 0, loss: 1.0, grads_finite: false, loss_scale: Some(1.0) };
        assert_eq!(g.check(&mut st, bad, &live).unwrap(), Decision::Skip);
        let d = g.check(&mut st, StepHealth { step: 1, ..bad }, &live).unwrap();
        assert!(matches!(d, Decision::ApplyRemedy { remedy: Remedy::Clamp(_), to: 0, .. }), "{d:?}");
        assert_eq!((st.remedies.len(), st.consecutive_skips, st.skipped_steps), (1, 0, 2));
        g.check(&mut st, StepHealth { step: 2, ..bad }, &live).unwrap();
        let d = g.check(&mut st, StepHealth { step: 3, ..bad }, &live).unwrap();
        assert!(
            matches!(&d, Decision::Stop(Stop::Diverged(m)) if m.contains("after the remedies clamp:1")),
            "{d:?}"
        );
        // The fp16 loss scale floor.
        let mut g = Guards::new(cfg());
        let mut st = GuardState::default();
        let low = StepHealth { step: 0, loss: 1.0, grads_finite: false, loss_scale: Some(1e-5) };
        let d = g.check(&mut st, low, &live).unwrap();
        assert!(matches!(&d, Decision::Stop(Stop::Diverged(m)) if m.contains("loss scale fell")), "{d:?}");
    }
}
