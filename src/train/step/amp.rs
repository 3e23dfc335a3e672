//! Precision: fp32, tf32, and bf16/fp16 under libtorch's autocast (through the shim, on CPU and
//! CUDA alike); fp16 with a dynamic loss scaler with PyTorch GradScaler's semantics, built on
//! libtorch's `_amp_foreach_non_finite_check_and_unscale_` / `_amp_update_scale_` kernels.

use crate::error::Result;
use crate::ffi::{self, foreach_unscale, AutocastGuard};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// fp32 storage, TF32 tensor-core matmuls and convolutions (CUDA only; same as fp32 on CPU).
    Tf32,
    Bf16,
    Fp16,
}

impl Precision {
    /// The autocast dtype, if any.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
            _ => None,
        }
    }

    /// Enables the process-wide settings of this precision (TF32 on or off).
    pub fn configure(self) -> Result<()> {
        ffi::set_allow_tf32(self == Precision::Tf32)
    }

    /// Autocast for the forward pass and loss, when this precision uses it.
    pub fn autocast(self, device: Device) -> Result<Option<AutocastGuard>> {
        self.autocast_kind().map(|k| AutocastGuard::new(device, k)).transpose()
    }
}

/// GradScaler's default `init_scale`.
pub const INIT_SCALE: f64 = 65536.0;

/// torch.amp.GradScaler: scale the loss, unscale the gradients (finding inf/NaN), skip the step
/// on overflow, and adapt the scale: x0.5 on overflow, x2 after `growth_interval` good steps.
pub struct GradScaler {
    pub enabled: bool,
    /// Current scale (1-element float tensor on the device).
    pub scale: Tensor,
    /// Consecutive good steps (1-element int tensor on the device).
    pub growth_tracker: Tensor,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
    found_inf: Tensor,
}

impl GradScaler {
    pub fn new(enabled: bool, device: Device) -> Self {
        let init = if enabled { INIT_SCALE } else { 1.0 };
        Self {
            enabled,
            scale: Tensor::full([1], init, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// The loss to call backward on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * &self.scale.to_kind(loss.kind())
        } else {
            loss.shallow_clone()
        }
    }

    /// Unscales the gradients in place and reports whether any is inf/NaN. Disabled (fp32, tf32,
    /// bf16), it does nothing and reports false: the caller detects non-finite gradients from the
    /// gradient norm it computes anyway, saving a pass over every gradient.
    pub fn unscale(&mut self, grads: &[Tensor]) -> Result<bool> {
        if !self.enabled {
            return Ok(false);
        }
        let _ = self.found_inf.zero_();
        let inv = self.scale.reciprocal();
        foreach_unscale(grads, &self.found_inf, &inv)?;
        Ok(self.found_inf.double_value(&[0]) != 0.0)
    }

    /// Adapts the scale after a step attempt (uses the overflow flag of the last `unscale`).
    pub fn update(&mut self) -> Result<()> {
        if self.enabled {
            let _ = self.scale.f_internal_amp_update_scale_(
                &self.growth_tracker,
                &self.found_inf,
                self.growth_factor,
                self.backoff_factor,
                self.growth_interval,
            )?;
        }
        Ok(())
    }

    pub fn scale_value(&self) -> f64 {
        self.scale.double_value(&[0])
    }

    /// The live state tensors by name (checkpoints and snapshots).
    pub fn state(&self) -> crate::train::run::state::Named {
        vec![
            ("scale".to_string(), self.scale.shallow_clone()),
            ("growth_tracker".to_string(), self.growth_tracker.shallow_clone()),
        ]
    }
}
