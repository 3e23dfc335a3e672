//! Stability monitors: per activation site, the largest |output| and the count of non-finite
//! values, sampled every `monitor_every` steps from the training forward pass itself (no extra
//! forward). The reductions stay on the device and are read back with one transfer. Also the
//! remedies (what a stability fix changes); the guards that act on them are in `guards`.

use crate::error::Result;
use crate::model::ResNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::{Kind, Tensor};

/// One site's statistics for one sampled step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteStats {
    pub site: String,
    pub max_abs: f64,
    pub nonfinite: i64,
}

/// Runs the training forward pass of `model` on `x`, and when `monitor` is set also collects the
/// statistics of every activation site, in forward order.
pub fn forward_monitored(model: &ResNet, x: &Tensor, monitor: bool) -> Result<(Tensor, Vec<SiteStats>)> {
    if !monitor {
        return Ok((model.forward_t(x, true), Vec::new()));
    }
    let mut sites = Vec::new();
    let mut reductions = Vec::new();
    let logits = model.forward_observed(x, true, &mut |site, t| {
        let t = t.detach();
        // max |x| over finite values (NaN would poison max); inf counts as non-finite.
        let finite = t.isfinite();
        let max_abs = t.abs().where_self(&finite, &t.zeros_like()).max().to_kind(Kind::Double);
        let nonfinite = finite.logical_not().sum(Kind::Int64).to_kind(Kind::Double);
        sites.push(site.to_string());
        reductions.push(Tensor::stack(&[max_abs, nonfinite], 0));
    });
    let all = Tensor::stack(&reductions, 0).f_to_device(tch::Device::Cpu)?;
    let values: Vec<f64> = Vec::try_from(all.flatten(0, -1))?;
    let stats = sites
        .into_iter()
        .zip(values.chunks(2))
        .map(|(site, v)| SiteStats { site, max_abs: v[0], nonfinite: v[1] as i64 })
        .collect();
    Ok((logits, stats))
}

/// The first site, in forward order, with a non-finite value.
pub fn first_nonfinite(stats: &[SiteStats]) -> Option<&SiteStats> {
    stats.iter().find(|s| s.nonfinite > 0)
}

/// Largest finite float16 value: activations beyond it overflow under fp16 autocast.
pub const FP16_MAX: f64 = 65504.0;

/// The first site, in forward order, that is non-finite or whose |x| exceeds `limit`
/// (e.g. `FP16_MAX`: where an fp16 run would overflow first).
pub fn first_beyond(stats: &[SiteStats], limit: f64) -> Option<&SiteStats> {
    stats.iter().find(|s| s.nonfinite > 0 || s.max_abs > limit)
}

/// A stability remedy: a change to the training config (an ablation cell's variant, or what the
/// divergence guard applies before it continues).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Remedy {
    None,
    /// Clamp the polynomial's input to [-C, C] (`--act-clamp C`).
    Clamp(f64),
    /// Compute the activations in fp32 under autocast (`--act-fp32 true`, the default).
    ActFp32,
    /// Compute the activations in the autocast dtype (`--act-fp32 false`): what CPU autocast or
    /// a hand-written fp16 kernel does.
    ActLowp,
    /// Clip the gradient norm to C (`--clip-grad C`).
    Clip(f64),
}

/// The settings a remedy changes, and the only part of a run's config that changes while it
/// runs: the engine holds them next to its fixed copy of the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiveSettings {
    pub act_clamp: Option<f64>,
    pub act_fp32: bool,
    pub clip_grad: f64,
    pub clip_mode: super::clip::ClipMode,
}

impl LiveSettings {
    pub fn apply(&mut self, r: Remedy) {
        match r {
            Remedy::None => {}
            Remedy::Clamp(v) => self.act_clamp = Some(v),
            Remedy::ActFp32 => self.act_fp32 = true,
            Remedy::ActLowp => self.act_fp32 = false,
            // The remedy clips the global norm, whatever mode the run clipped with.
            Remedy::Clip(v) => (self.clip_grad, self.clip_mode) = (v, super::clip::ClipMode::Norm),
        }
    }
}

impl FromStr for Remedy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let value = |v: &str| match v.parse::<f64>() {
            Ok(c) if c > 0.0 && c.is_finite() => Ok(c),
            _ => Err(format!("remedy {s:?}: {v:?} is not a positive number")),
        };
        match s.split_once(':') {
            None if s == "none" => Ok(Remedy::None),
            None if s == "act-fp32" => Ok(Remedy::ActFp32),
            None if s == "act-lowp" => Ok(Remedy::ActLowp),
            Some(("clamp", v)) => value(v).map(Remedy::Clamp),
            Some(("clip", v)) => value(v).map(Remedy::Clip),
            _ => Err(format!("unknown remedy {s:?}: use none, act-fp32, act-lowp, clamp:C or clip:C")),
        }
    }
}

impl TryFrom<String> for Remedy {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Remedy::None => write!(f, "none"),
            Remedy::ActFp32 => write!(f, "act-fp32"),
            Remedy::ActLowp => write!(f, "act-lowp"),
            Remedy::Clamp(c) => write!(f, "clamp:{c}"),
            Remedy::Clip(c) => write!(f, "clip:{c}"),
        }
    }
}

impl From<Remedy> for String {
    fn from(r: Remedy) -> String {
        r.to_string()
    }
}
