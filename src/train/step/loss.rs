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
    /// on = 1 - s + off), then optionally `target > thresh`, then BCE-with-logits (see
    /// BceOptions for its reduction and positive weight).
    BinaryCrossEntropy { smoothing: f64, opts: BceOptions },
    /// timm's JsdCrossEntropy (alpha 12, timm's): the batch is `splits` equal splits (clean
    /// first); cross-entropy (smoothed) on the clean split, plus alpha x the mean over splits of
    /// KL(p_split || mixture), the mixture the splits' mean probability clamped to [1e-7, 1].
    Jsd { splits: usize, smoothing: f64 },
}

/// timm's BinaryCrossEntropy options (train.py's `--bce-target-thresh`, `--bce-sum`,
/// `--bce-pos-weight`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BceOptions {
    /// Targets above this become 1, the rest 0.
    pub target_thresh: Option<f64>,
    /// Sum over the classes, then mean over the batch (`sum_classes`), instead of the mean over
    /// every (sample, class): C times larger for C classes.
    pub sum_classes: bool,
    /// The weight of each positive term (`pos_weight`, one value for every class).
    pub pos_weight: Option<f64>,
}

/// timm's JsdCrossEntropy weight of the divergence term.
const JSD_ALPHA: f64 = 12.0;

impl Loss {
    /// timm's BinaryCrossEntropy with `bce`'s options, else softmax cross-entropy.
    pub fn new(bce: Option<BceOptions>, smoothing: f64) -> Self {
        match bce {
            Some(opts) => Loss::BinaryCrossEntropy { smoothing, opts },
            None => Loss::CrossEntropy { smoothing },
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
            (Loss::BinaryCrossEntropy { smoothing, opts }, targets) => {
                let num_classes = x.size()[x.dim() - 1];
                let mut t = match targets {
                    Targets::Soft(t) => t.f_to_kind(Kind::Float)?,
                    Targets::Hard(y) => {
                        let off = smoothing / num_classes as f64;
                        let on = 1.0 - smoothing + off;
                        x.f_full_like(off)?.f_scatter_value(1, &y.f_view([-1, 1])?, on)?
                    }
                };
                if let Some(thresh) = opts.target_thresh {
                    t = t.f_gt(thresh)?.f_to_kind(Kind::Float)?;
                }
                let pos_weight = opts.pos_weight.map(|w| Tensor::from(w as f32).to_device(x.device()));
                if opts.sum_classes {
                    let per_value = x.f_binary_cross_entropy_with_logits(
                        &t,
                        None::<Tensor>,
                        pos_weight,
                        Reduction::None,
                    )?;
                    Ok(per_value.f_sum_dim_intlist(-1, false, Kind::Float)?.f_mean(Kind::Float)?)
                } else {
                    Ok(x.f_binary_cross_entropy_with_logits(&t, None::<Tensor>, pos_weight, Reduction::Mean)?)
                }
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
        let bce = |target_thresh, sum_classes, pos_weight| {
            Some(BceOptions { target_thresh, sum_classes, pos_weight })
        };
        check(Loss::new(None, 0.0), Targets::Hard(y), "loss.ce");
        check(Loss::new(None, 0.1), Targets::Hard(y), "loss.ce_smooth0.1");
        check(Loss::new(None, 0.1), Targets::Soft(soft), "loss.soft_ce");
        check(Loss::new(bce(None, false, None), 0.1), Targets::Hard(y), "loss.bce_smooth0.1");
        check(Loss::new(bce(Some(0.2), false, None), 0.1), Targets::Hard(y), "loss.bce_smooth0.1_thresh0.2");
        check(Loss::new(bce(Some(0.2), false, None), 0.0), Targets::Soft(soft), "loss.bce_soft_thresh0.2");
        check(Loss::new(bce(None, true, None), 0.1), Targets::Hard(y), "loss.bce_sum_smooth0.1");
        check(Loss::new(bce(None, false, Some(2.0)), 0.1), Targets::Hard(y), "loss.bce_pos2_smooth0.1");
        check(
            Loss::new(bce(Some(0.2), true, Some(0.5)), 0.0),
            Targets::Soft(soft),
            "loss.bce_soft_sum_pos0.5_thresh0.2",
        );
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
        let l = Loss::new(Some(BceOptions::default()), 0.1).compute(&half, Targets::Hard(y)).unwrap();
        assert_eq!(l.kind(), Kind::Float);
    }
}
