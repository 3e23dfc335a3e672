//! BatchNorm over every rank's batch (SyncBatchNorm, `--sync-bn`): in training mode inside the
//! engine's `SyncBnScope`, each BN layer normalises with the mean and variance of the global
//! batch and updates its running statistics with them, as PyTorch's `nn.SyncBatchNorm` does;
//! otherwise (and in eval mode) it is libtorch's BatchNorm.
//!
//! Each rank contributes (count, mean, M2) per channel, computed locally in two passes; one
//! differentiable all-reduce gathers every rank's row (the sum of a [world, 2C + 1] table that
//! only holds this rank's row), and Chan's parallel formula combines them without the
//! cancellation of E[x^2] - E[x]^2. The all-reduce's backward sums the gradients over the ranks,
//! so each rank's gradient includes the other ranks' share, as SyncBatchNorm's backward does.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// A BN layer's running-statistics momentum and variance epsilon (timm's `--bn-momentum`,
/// `--bn-eps`; torch.nn.BatchNorm2d's 0.1 and 1e-5 by default). Declared with the operator that
/// both the local and the synced path run, so that batch_norm.rs's layers depend on this module
/// and not the reverse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BnSettings {
    /// running = (1 - momentum) * running + momentum * batch statistic.
    pub momentum: f64,
    /// y = (x - mean) / sqrt(var + eps) * gamma + beta.
    pub eps: f64,
}

impl Default for BnSettings {
    fn default() -> Self {
        Self { momentum: 0.1, eps: 1e-5 }
    }
}

/// `bn`'s tensors and settings as the fused BatchNorm + activation operator takes them.
pub fn args(bn: &nn::BatchNorm, settings: BnSettings, train: bool) -> crate::ffi::BatchNormArgs<'_> {
    crate::ffi::BatchNormArgs {
        gamma: bn.ws.as_ref(),
        beta: bn.bs.as_ref(),
        running_mean: &bn.running_mean,
        running_var: &bn.running_var,
        train,
        momentum: settings.momentum,
        eps: settings.eps,
    }
}

/// `bn.forward_t(x, train)`, over all ranks when a SyncBatchNorm scope is active and `train`.
pub fn batch_norm(bn: &nn::BatchNorm, settings: BnSettings, x: &Tensor, train: bool) -> Tensor {
    if train {
        if let Some(y) = synced(bn, settings, x) {
            return y;
        }
    }
    bn.forward_t(x, train)
}

fn synced(bn: &nn::BatchNorm, settings: BnSettings, x: &Tensor) -> Option<Tensor> {
    let (rank, world) = crate::dist::sync_bn_ranks()?;
    let c = x.size()[1];
    let dims: &[i64] = &[0, 2, 3];
    let xf = x.to_kind(Kind::Float);
    let mean_r = xf.mean_dim(dims, false, Kind::Float);
    let m2_r = (&xf - mean_r.view([1, c, 1, 1])).square().sum_dim_intlist(dims, false, Kind::Float);
    let count = Tensor::from_slice(&[(x.numel() as i64 / c) as f32]).to_device(x.device());
    let row = Tensor::cat(&[count, mean_r, m2_r], 0).unsqueeze(0);
    // Only this rank's row is non-zero: the sum over ranks is every rank's row.
    let rows: Vec<Tensor> =
        (0..world).map(|r| if r == rank { row.shallow_clone() } else { row.zeros_like() }).collect();
    let all = match crate::dist::sync_bn_sum(&Tensor::cat(&rows, 0))? {
        Ok(t) => t,
        Err(e) => {
            crate::dist::record_sync_bn_error(&e);
            return Some(x.shallow_clone());
        }
    };
    debug_assert_eq!(all.size(), vec![world as i64, 2 * c + 1]);
    let n = all.narrow(1, 0, 1); // [world, 1]
    let means = all.narrow(1, 1, c);
    let m2s = all.narrow(1, 1 + c, c);
    let total = n.sum(Kind::Float);
    let mean = (&means * &n).sum_dim_intlist([0].as_slice(), false, Kind::Float) / &total;
    let spread = (&means - mean.unsqueeze(0)).square() * &n;
    let m2 = m2s.sum_dim_intlist([0].as_slice(), false, Kind::Float)
        + spread.sum_dim_intlist([0].as_slice(), false, Kind::Float);
    let var = &m2 / &total;
    tch::no_grad(|| {
        // Running statistics: the global batch's mean and unbiased variance, as BatchNorm2d.
        let unbiased = &var * (&total / (&total - 1.0).clamp_min(1.0));
        let mut rm = bn.running_mean.shallow_clone();
        let mut rv = bn.running_var.shallow_clone();
        let new_mean = &rm * (1.0 - settings.momentum) + mean.detach() * settings.momentum;
        let new_var = &rv * (1.0 - settings.momentum) + unbiased.detach() * settings.momentum;
        rm.copy_(&new_mean);
        rv.copy_(&new_var);
    });
    let scale = (&var + settings.eps).rsqrt();
    let scale = match &bn.ws {
        Some(w) => scale * w,
        None => scale,
    };
    let y = (xf - mean.view([1, c, 1, 1])) * scale.view([1, c, 1, 1]);
    let y = match &bn.bs {
        Some(b) => y + b.view([1, c, 1, 1]),
        None => y,
    };
    Some(y.to_kind(x.kind()))
}
