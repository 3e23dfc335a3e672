//! torchvision's eval preprocessing: Resize(shorter side, bilinear, antialias) -> CenterCrop ->
//! ToTensor -> Normalize(ImageNet mean/std).

use super::decode::RgbImage;
use crate::error::Result;
use tch::{Kind, Tensor};

pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer one
/// `int(size * long / short)` (truncated). Returns (height, width).
pub fn resize_shorter_side(height: usize, width: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// torchvision `CenterCrop`: offsets `int(round((in - out) / 2))`, Python's round (ties to even).
pub fn center_crop_offset(input: usize, output: usize) -> usize {
    ((input as f64 - output as f64) / 2.0).round_ties_even().max(0.0) as usize
}

/// Eval preprocessing of one image up to uint8: a CHW `crop x crop` tensor, with the resize
/// target `resize` (256 for 224 at crop_pct 0.875). Pixels are rounded back to uint8 after the
/// antialiased bilinear resize, as PIL does.
pub fn eval_uint8(img: &RgbImage, resize: usize, crop: usize) -> Result<Tensor> {
    let hwc = Tensor::f_from_data_size(&img.pixels, &[img.height as i64, img.width as i64, 3], Kind::Uint8)?;
    let chw = hwc.f_permute([2, 0, 1])?.f_to_kind(Kind::Float)?.f_unsqueeze(0)?;
    let (h, w) = resize_shorter_side(img.height, img.width, resize);
    let resized = chw
        .f_internal_upsample_bilinear2d_aa([h as i64, w as i64], false, None, None)?
        .f_round()?
        .f_clamp(0.0, 255.0)?;
    let (top, left) = (center_crop_offset(h, crop), center_crop_offset(w, crop));
    let cropped = resized.f_narrow(2, top as i64, crop as i64)?.f_narrow(3, left as i64, crop as i64)?;
    Ok(cropped.f_squeeze_dim(0)?.f_to_kind(Kind::Uint8)?)
}

/// ToTensor + Normalize(ImageNet mean/std) of a uint8 NCHW or CHW batch, on its device.
pub fn normalize(x: &Tensor) -> Tensor {
    let shape: &[i64] = if x.dim() == 4 { &[1, 3, 1, 1] } else { &[3, 1, 1] };
    let mean = (Tensor::from_slice(&IMAGENET_MEAN) * 255.0).to_kind(Kind::Float).view(shape).to_device(x.device());
    let std = (Tensor::from_slice(&IMAGENET_STD) * 255.0).to_kind(Kind::Float).view(shape).to_device(x.device());
    (x.to_kind(Kind::Float) - mean) / std
}
