//! What happens to a training batch on the device before the forward pass: random erasing, then
//! Mixup/CutMix (timm's order: its loader erases, its loop mixes). Built once from the config;
//! every draw is keyed by (seed, step, rank, micro-batch), so a resumed run transforms each batch
//! as the uninterrupted one did, and ranks draw differently.

use super::erasing::{self, ErasingConfig};
use super::mixup::MixupConfig;
use crate::error::Result;
use tch::Tensor;

pub struct BatchTransform {
    pub erasing: Option<ErasingConfig>,
    /// With timm's `resplit`: the batch's first 1/aug_splits (the clean split) is not erased.
    pub spared_splits: Option<usize>,
    pub mixup: Option<MixupConfig>,
    pub seed: u64,
    pub num_classes: i64,
}

/// Where a micro-batch's draws come from.
#[derive(Clone, Copy, Debug)]
pub struct DrawKey {
    pub step: usize,
    pub rank: u64,
    pub micro: usize,
}

impl BatchTransform {
    /// The images to train on and, when mixed, their soft targets (else the labels stand).
    /// `mix`: whether Mixup/CutMix are on this epoch (timm's `mixup_off_epoch`).
    pub fn apply(&self, x: &Tensor, y: &Tensor, key: DrawKey, mix: bool) -> Result<(Tensor, Option<Tensor>)> {
        let DrawKey { step, rank, micro } = key;
        let x = match &self.erasing {
            Some(e) => {
                let spared = self.spared_splits.map_or(0, |s| x.size()[0] / s.max(1) as i64);
                let keys = [self.seed, step as u64, rank, micro as u64, 0xE2A5];
                erasing::erase(e, x, &keys, spared)?
            }
            None => x.shallow_clone(),
        };
        match self.mixup.as_ref().filter(|_| mix) {
            Some(m) => {
                let (n, h, w) = (x.size()[0] as usize, x.size()[2], x.size()[3]);
                let p = m.draw_samples(&[self.seed, step as u64, rank, micro as u64, 0x313D_C0DE], n, h, w);
                let (mixed, targets) = m.apply_samples(&x, y, &p, self.num_classes)?;
                Ok((mixed, Some(targets)))
            }
            None => Ok((x, None)),
        }
    }

    /// Whether any draw uses libtorch's own generator (random erasing's fill values), which the
    /// engine then seeds per step.
    pub fn draws_from_libtorch(&self) -> bool {
        self.erasing.is_some()
    }
}
