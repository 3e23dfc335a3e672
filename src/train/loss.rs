//! Training losses, computed on fp32 logits (autocast or not), as timm's train.py picks them:
//! softmax cross-entropy with label smoothing (timm's LabelSmoothingCrossEntropy, the same as
//! PyTorch's `label_smoothing`), soft-target cross-entropy for mixed targets (timm's
//! SoftTargetCrossEntropy), and timm's BinaryCrossEntropy (one-vs-all sigmoid with smoothed
//! one-hot targets, optionally thresholded; ResNet Strikes Back), and timm's JsdCrossEntropy
//! (AugMix: cross-entropy on the clean split plus the Jensen-Shannon divergence between the
//! splits' predictions).

use crate::error::Result;
use tch::{Kind, Reduction, Tensor};

/// A batch's targets: class indices, or a probability per class (mixup/cutmix).
pub enum Targets<'a> {
    Hard(&'a Tensor),
    Soft(&'a Tensor),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy; hard targets smoothed by `smoothing`, soft targets as given.
    CrossEntropy { smoothing: f64 },
    /// timm's BinaryCrossEntropy: hard targets become smoothed one-hot vectors (off = s / C,
    /// on = 1 - s + off), then optionally `target > thresh`, then mean BCE-with-logits.
    BinaryCrossEntropy { smoothing: f64, target_thresh: Option<f64> },
    /// timm's JsdCrossEntropy (alpha 12, timm's): the batch is `splits` equal splits (clean
    /// first); cross-entropy (smoothed) on the clean split, plus alpha x the mean over splits of
    /// KL(p_split || mixture), the mixture the splits' mean probability clamped to [1e-7, 1].
    Jsd { splits: usize, smoothing: f64 },
}

/// timm's JsdCrossEntropy weight of the divergence term.
const JSD_ALPHA: f64 = 12.0;

impl Loss {
    pub fn new(bce: bool, smoothing: f64, target_thresh: Option<f64>) -> Self {
        if bce {
            Loss::BinaryCrossEntropy { smoothing, target_thresh }
        } else {
            Loss::CrossEntropy { smoothing }
        }
    }

    /// The mean loss over the batch (a 0-d fp32 tensor).
    pub fn compute(&self, logits: &Tensor, targets: Targets) -> Result<Tensor> {
        let x = logits.f_to_kind(Kind::Float)?;
        match (*self, targets) {
            (Loss::CrossEntropy { smoothing }, Targets::Hard(y)) => {
                Ok(x.f_cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, smoothing)?)
            }
            (Loss::CrossEntropy { .. }, Targets::Soft(t)) => Ok((-t.f_to_kind(Kind::Float)?
                * x.f_log_softmax(-1, Kind::Float)?)
            .f_sum_dim_intlist(-1, false, Kind::Float)?
            .f_mean(Kind::Float)?),
            (Loss::Jsd { splits, smoothing }, Targets::Hard(y)) => {
                let n = x.size()[0] / splits as i64;
                if n * splits as i64 != x.size()[0] {
                    return Err(crate::error::Error::Usage(format!(
                        "the JSD loss needs a batch of {splits} equal splits, got {} rows",
                        x.size()[0]
                    )));
                }
                let clean = x.f_narrow(0, 0, n)?;
                let ce = clean.f_cross_entropy_loss(
                    &y.f_narrow(0, 0, n)?,
                    None::<Tensor>,
                    Reduction::Mean,
                    -100,
                    smoothing,
                )?;
                let p = x.f_softmax(-1, Kind::Float)?.f_view([splits as i64, n, -1])?;
                let log_mixture = p.f_mean_dim(0, false, Kind::Float)?.f_clamp(1e-7, 1.0)?.f_log()?;
                // F.kl_div(log_mixture, p, reduction="batchmean") per split: sum(xlogy(p, p) - p
                // log_mixture) / n; summed over the splits, then / splits.
                let kl = (p.f_xlogy(&p)? - &p * log_mixture.f_unsqueeze(0)?).f_sum(Kind::Float)? / n as f64;
                Ok(ce + kl * (JSD_ALPHA / splits as f64))
            }
            (Loss::Jsd { .. }, Targets::Soft(_)) => Err(crate::error::Error::Usage(
                "the JSD loss takes class labels, not mixed targets (Mixup/CutMix)".into(),
            )),
            (Loss::BinaryCrossEntropy { smoothing, target_thresh }, targets) => {
                let num_classes = x.size()[x.dim() - 1];
                let mut t = match targets {
                    Targets::Soft(t) => t.f_to_kind(Kind::Float)?,
                    Targets::Hard(y) => {
                        let off = smoothing / num_classes as f64;
                        let on = 1.0 - smoothing + off;
                        x.f_full_like(off)?.f_scatter_value(1, &y.f_view([-1, 1])?, on)?
                    }
                };
                if let Some(thresh) = target_thresh {
                    t = t.f_gt(thresh)?.f_to_kind(Kind::Float)?;
                }
                Ok(x.f_binary_cross_entropy_with_logits(&t, None::<Tensor>, None::<Tensor>, Reduction::Mean)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against timm's losses and PyTorch's cross-entropy (tests/golden/make_train_golden.py).
    use super::*;

    #[test]
    fn losses_match_timm() {
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/train_golden.safetensors");
        let g = crate::model::weights::read(&p).unwrap().tensors;
        let (x, y, soft) = (&g["loss.logits"], &g["loss.labels"], &g["loss.soft"]);
        let check = |loss: Loss, targets: Targets, key: &str| {
            let got = loss.compute(x, targets).unwrap().double_value(&[]);
            let want = g[key].double_value(&[0]);
            assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "{key}: {got} vs {want}");
        };
        check(Loss::new(false, 0.0, None), Targets::Hard(y), "loss.ce");
        check(Loss::new(false, 0.1, None), Targets::Hard(y), "loss.ce_smooth0.1");
        check(Loss::new(false, 0.1, None), Targets::Soft(soft), "loss.soft_ce");
        check(Loss::new(true, 0.1, None), Targets::Hard(y), "loss.bce_smooth0.1");
        check(Loss::new(true, 0.1, Some(0.2)), Targets::Hard(y), "loss.bce_smooth0.1_thresh0.2");
        check(Loss::new(true, 0.0, Some(0.2)), Targets::Soft(soft), "loss.bce_soft_thresh0.2");
        // AugMix's JSD: 3 splits of 4, the labels repeated per split, as timm's loader gives them.
        let (jx, jy) = (&g["jsd.logits"], &g["jsd.labels"]);
        for (smoothing, key) in [(0.0, "jsd.loss"), (0.1, "jsd.loss_smooth0.1")] {
            let got =
                Loss::Jsd { splits: 3, smoothing }.compute(jx, Targets::Hard(jy)).unwrap().double_value(&[]);
            let want = g[key].double_value(&[0]);
            assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{key}: {got} vs {want}");
        }
        assert!(
            Loss::Jsd { splits: 5, smoothing: 0.0 }.compute(jx, Targets::Hard(jy)).is_err(),
            "12 rows, 5 splits"
        );
        // Under autocast the loss is still computed on fp32 logits.
        let half = x.to_kind(Kind::BFloat16);
        let l = Loss::new(true, 0.1, None).compute(&half, Targets::Hard(y)).unwrap();
        assert_eq!(l.kind(), Kind::Float);
    }
}
