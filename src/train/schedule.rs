//! Learning rate as a pure function of the optimizer step, so resuming needs only the step:
//! linear warmup from 0 to the peak over `warmup_steps`, then cosine decay to `min_lr` (or a step
//! decay by `gamma` every `step_every` steps, or a linear decay to `min_lr`: with a warmup, FFCV's
//! triangular "cyclic" schedule).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Step,
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Step decay: multiply by `gamma` every `step_every` steps (after warmup).
    pub step_every: usize,
    pub gamma: f64,
}

impl Schedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            ScheduleKind::Linear => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.peak_lr + (self.min_lr - self.peak_lr) * t
            }
            ScheduleKind::Step => {
                let k = (step - self.warmup_steps) / self.step_every.max(1);
                (self.peak_lr * self.gamma.powi(k as i32)).max(self.min_lr)
            }
        }
    }
}
