//! Gradient clipping, timm's three `clip_mode`s: the global norm (torch.nn.utils.clip_grad_norm_),
//! each value (clip_grad_value_), or adaptive and unit-wise (timm's adaptive_clip_grad, from
//! NFNets: each output unit's gradient norm at most `clip` x that unit's weight norm).

use super::optim::Group;
use crate::error::Result;
use crate::ffi::foreach_clip_grad_norm;
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClipMode {
    Norm,
    Value,
    Agc,
}

/// AGC's floor on a unit's weight norm (timm's `eps`): zero-initialised weights can still move.
const AGC_EPS: f64 = 1e-3;
/// The classifier's parameters, which timm's train.py leaves out of AGC (`exclude_head`).
const HEAD_PREFIX: &str = "fc.";

/// Clips the gradients of the groups' parameters by `mode` at `clip` (0: no clipping) and returns
/// the total gradient norm before clipping (inf/NaN if any gradient is: the guards read it).
pub fn clip_gradients(mode: ClipMode, clip: f64, groups: &[Group]) -> Result<f64> {
    let named: Vec<(&str, &Tensor, Tensor)> = groups
        .iter()
        .flat_map(|g| g.names.iter().zip(&g.params))
        .map(|(name, p)| (name.as_str(), p, p.grad()))
        .filter(|(_, _, grad)| grad.defined())
        .collect();
    let grads: Vec<Tensor> = named.iter().map(|(_, _, g)| g.shallow_clone()).collect();
    let norm_clip = if mode == ClipMode::Norm { clip } else { 0.0 };
    let total_norm = foreach_clip_grad_norm(&grads, norm_clip)?.double_value(&[]);
    if clip <= 0.0 {
        return Ok(total_norm);
    }
    let _no_grad = tch::no_grad_guard();
    match mode {
        ClipMode::Norm => {}
        ClipMode::Value => {
            for g in &grads {
                let _ = g.shallow_clone().f_clamp_(-clip, clip)?;
            }
        }
        ClipMode::Agc => {
            for (_, p, g) in named.iter().filter(|(name, _, _)| !name.starts_with(HEAD_PREFIX)) {
                adaptive_clip(p, g, clip)?;
            }
        }
    }
    Ok(total_norm)
}

/// timm's adaptive_clip_grad for one parameter, in its order of operations: the gradient of each
/// output unit (the first axis; the whole tensor for 0-d and 1-d parameters) is scaled down to
/// clip x max(|unit's weights|, eps) where its norm exceeds that.
fn adaptive_clip(p: &Tensor, g: &Tensor, clip: f64) -> Result<()> {
    let max_norm = unitwise_norm(&p.detach())?.f_clamp_min(AGC_EPS)? * clip;
    let grad_norm = unitwise_norm(g)?;
    let clipped = g * (&max_norm / grad_norm.f_clamp_min(1e-6)?);
    let kept = grad_norm.f_lt_tensor(&max_norm)?;
    g.shallow_clone().f_copy_(&g.f_where_self(&kept, &clipped)?)?;
    Ok(())
}

/// The L2 norm per output unit (over every axis but the first, kept), or of the whole tensor.
fn unitwise_norm(x: &Tensor) -> Result<Tensor> {
    if x.dim() <= 1 {
        return Ok(x.f_norm()?);
    }
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    Ok(x.f_norm_scalaropt_dim(2.0, dims.as_slice(), true)?)
}

#[cfg(test)]
mod tests {
    //! Against tests/golden/train_golden.safetensors (tests/golden/make_train_golden.py): timm's
    //! dispatch_clip_grad in each mode, called as timm's train.py calls it.
    use super::*;
    use tch::{nn, Device, Kind};

    const NAMES: [&str; 6] =
        ["conv1.weight", "bn1.weight", "layer1.0.act1.weight", "layer1.0.act1.bias", "fc.weight", "fc.bias"];

    #[test]
    fn clip_modes_match_timm() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/train_golden.safetensors");
        let golden = crate::model::weights::read(&path).expect("golden file reads").tensors;
        for (mode, value) in [(ClipMode::Norm, 1.5), (ClipMode::Value, 0.5), (ClipMode::Agc, 0.05)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for name in NAMES {
                let (dirs, leaf) = name.rsplit_once('.').unwrap();
                let path = dirs.split('.').fold(vs.root(), |p, d| p / d);
                let p = path.var_copy(leaf, &golden[&format!("clip.{name}.param")]);
                loss += (&p * &golden[&format!("clip.{name}.grad")]).sum(Kind::Float);
            }
            loss.backward();
            let groups = Group::split(&vs, crate::train::step::optim::WeightDecay::weights_only(0.0));
            let norm = clip_gradients(mode, value, &groups).unwrap();
            let want_norm = NAMES
                .iter()
                .map(|n| golden[&format!("clip.{n}.grad")].square().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            assert!((norm - want_norm).abs() < 1e-5 * want_norm, "{mode:?}: norm {norm} vs {want_norm}");
            let vars = vs.variables();
            for name in NAMES {
                let got = vars[name].grad();
                let want = &golden[&format!("clip.{mode:?}.{name}.grad").to_lowercase()];
                let err = (&got - want).abs().max().double_value(&[]);
                let scale = want.abs().max().double_value(&[]);
                assert!(err <= 1e-6 * scale, "{mode:?} {name}: max error {err} (scale {scale})");
            }
            // What clipping changed, so that the comparison above means something.
            let untouched = |n: &str| vars[n].grad().equal(&golden[&format!("clip.{n}.grad")]);
            match mode {
                ClipMode::Agc => assert!(!untouched("conv1.weight") && untouched("fc.weight")),
                _ => assert!(!untouched("conv1.weight") && !untouched("fc.weight")),
            }
        }
    }
}
