//! Top-1 / top-5 accuracy and loss over a loader, in the run's precision.

use super::amp::Precision;
use crate::data::loader::Loader;
use crate::data::transform::normalize;
use crate::error::Result;
use crate::model::ResNet;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    /// Percent.
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
}

/// Moves a uint8 batch to the device and normalises it (ImageNet mean/std), channels_last if asked.
pub fn prepare(images: &Tensor, device: Device, channels_last: bool) -> Result<Tensor> {
    let x = normalize(&images.f_to_device(device)?);
    if channels_last {
        crate::ffi::to_channels_last(&x)
    } else {
        Ok(x)
    }
}

pub fn evaluate(
    model: &ResNet,
    loader: &Loader,
    device: Device,
    precision: Precision,
    channels_last: bool,
) -> Result<EvalResult> {
    let (mut loss_sum, mut c1, mut c5, mut n) = (0f64, 0i64, 0i64, 0usize);
    let k = 5.min(model.config().num_classes);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let x = prepare(&batch.images, device, channels_last)?;
        let y = batch.labels.f_to_device(device)?;
        let logits = tch::no_grad(|| -> Result<Tensor> {
            let _ac = precision.autocast(device)?;
            Ok(model.forward_t(&x, false))
        })?
        .to_kind(Kind::Float);
        let loss = logits.f_cross_entropy_loss(&y, None::<Tensor>, tch::Reduction::Sum, -100, 0.0)?;
        let (_, top) = logits.topk(k, 1, true, true);
        let hit = top.eq_tensor(&y.unsqueeze(1));
        c1 += hit.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
        c5 += hit.sum(Kind::Int64).int64_value(&[]);
        loss_sum += loss.double_value(&[]);
        n += y.size()[0] as usize;
    }
    let n_f = n.max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum / n_f,
        top1: 100.0 * c1 as f64 / n_f,
        top5: 100.0 * c5 as f64 / n_f,
        images: n,
    })
}
