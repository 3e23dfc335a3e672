//! The ImageNet transforms with torchvision's and timm's semantics, fused with decoding:
//! train = RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip (timm's
//! RandomResizedCropAndInterpolation when the filter is drawn per image), eval = Resize(floor(size
//! / crop_pct)) + CenterCrop(size); both end as uint8 CHW (normalisation happens on the device).
//!
//! JPEGs are decoded at the smallest DCT scale (num/8) whose output still covers what the crop
//! needs at the target size, and only the region the resampler reads is decoded.

use super::decode;
use super::resize::{self, Axis, Filter};
use crate::error::{Error, Result};
use crate::ffi::jpeg::{self, Region};
use crate::rng::SplitMix64;
use std::path::Path;
use tch::{Kind, Tensor};

/// The largest output size any command accepts (a crop of 2048 x 2048 is 12 MB per image).
pub const MAX_SIZE: usize = 2048;

/// Validates an eval preprocessing (resize the shorter side, center-crop) named by `what`.
pub fn check_eval_sizes(resize: usize, crop: usize, what: &str) -> Result<()> {
    if !(1..=MAX_SIZE).contains(&crop) || !(crop..=2 * MAX_SIZE).contains(&resize) {
        return Err(Error::Usage(format!(
            "{what}: resize {resize} / crop {crop}: the crop must be in 1..={MAX_SIZE} and the resize in crop..={}",
            2 * MAX_SIZE
        )));
    }
    Ok(())
}

pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The train crop's resampling filter (timm's `train_interpolation`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TrainFilter {
    /// Bilinear (torchvision's RandomResizedCrop).
    #[default]
    Bilinear,
    /// Bicubic.
    Bicubic,
    /// Bilinear or bicubic, drawn per image (timm's default, `random`).
    Random,
}

impl TrainFilter {
    /// The filter when it is fixed (None: drawn per image).
    pub fn fixed(self) -> Option<Filter> {
        match self {
            TrainFilter::Bilinear => Some(Filter::Bilinear),
            TrainFilter::Bicubic => Some(Filter::Bicubic),
            TrainFilter::Random => None,
        }
    }
}

/// What to do with each image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// RandomResizedCrop(size, scale, ratio) with log-uniform ratio, then a horizontal flip with
    /// probability `hflip` and a vertical one with probability `vflip` (timm's order); the crop
    /// resized with `filter` (drawn after the crop and the flips when random).
    Train { size: usize, scale: (f64, f64), ratio: (f64, f64), hflip: f64, vflip: f64, filter: TrainFilter },
    /// Resize the shorter side to `resize` with `filter`, then center-crop `size`.
    Eval { size: usize, resize: usize, filter: Filter },
    /// torchvision `resized_crop(top, left, height, width, size, filter)`, then a flip: a fixed train crop.
    Crop { top: usize, left: usize, height: usize, width: usize, size: usize, flip: bool, filter: Filter },
}

/// timm's eval resize for a crop fraction: floor(size / crop_pct) (0.875: 256 for 224; 0.95: 235).
pub fn eval_resize(size: usize, crop_pct: f64) -> usize {
    (size as f64 / crop_pct).floor() as usize
}

impl Transform {
    /// torchvision's RandomResizedCrop(size) + flip, bilinear.
    pub fn train(size: usize) -> Self {
        Transform::Train {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: 0.5,
            vflip: 0.0,
            filter: TrainFilter::Bilinear,
        }
    }

    /// Eval at `size` with timm's crop_pct (`eval_resize`), bilinear.
    pub fn eval(size: usize, crop_pct: f64) -> Self {
        Transform::Eval { size, resize: eval_resize(size, crop_pct), filter: Filter::Bilinear }
    }

    /// The same transform with another filter (a train crop: as its fixed filter).
    pub fn with_filter(self, filter: Filter) -> Self {
        match self {
            Transform::Train { .. } => self.with_train_filter(match filter {
                Filter::Bilinear => TrainFilter::Bilinear,
                Filter::Bicubic => TrainFilter::Bicubic,
            }),
            Transform::Eval { size, resize, .. } => Transform::Eval { size, resize, filter },
            Transform::Crop { top, left, height, width, size, flip, .. } => {
                Transform::Crop { top, left, height, width, size, flip, filter }
            }
        }
    }

    /// A train transform with another crop filter (other transforms: unchanged).
    pub fn with_train_filter(self, filter: TrainFilter) -> Self {
        match self {
            Transform::Train { size, scale, ratio, hflip, vflip, .. } => {
                Transform::Train { size, scale, ratio, hflip, vflip, filter }
            }
            t => t,
        }
    }

    /// The same transform at another output size.
    pub fn with_size(self, new: usize) -> Self {
        match self {
            Transform::Train { scale, ratio, hflip, vflip, filter, .. } => {
                Transform::Train { size: new, scale, ratio, hflip, vflip, filter }
            }
            Transform::Eval { size, resize, filter } => Transform::Eval {
                size: new,
                resize: (resize as f64 * new as f64 / size as f64).round() as usize,
                filter,
            },
            Transform::Crop { top, left, height, width, flip, filter, .. } => {
                Transform::Crop { top, left, height, width, size: new, flip, filter }
            }
        }
    }

    pub fn size(&self) -> usize {
        match *self {
            Transform::Train { size, .. } | Transform::Eval { size, .. } | Transform::Crop { size, .. } => {
                size
            }
        }
    }
}

/// FFCV's progressive resizing: the train resolution `min_res` up to `start_ramp`, `max_res` from
/// `end_ramp` on, linear in between rounded to a multiple of 32 (`get_resolution`; epochs from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResSchedule {
    pub min_res: usize,
    pub max_res: usize,
    pub start_ramp: u64,
    pub end_ramp: u64,
}

impl ResSchedule {
    pub fn size_at(&self, epoch: u64) -> usize {
        if epoch <= self.start_ramp {
            return self.min_res;
        }
        if epoch >= self.end_ramp {
            return self.max_res;
        }
        let t = (epoch - self.start_ramp) as f64 / (self.end_ramp - self.start_ramp) as f64;
        let interp = self.min_res as f64 + t * (self.max_res as f64 - self.min_res as f64);
        (interp / 32.0).round_ties_even() as usize * 32
    }
}

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

/// torchvision `CenterCrop`: offset `int(round((in - out) / 2))`, Python's round (ties to even).
pub fn center_crop_offset(input: usize, output: usize) -> usize {
    ((input as f64 - output as f64) / 2.0).round_ties_even().max(0.0) as usize
}

/// torchvision `RandomResizedCrop.get_params`: (top, left, height, width) of the crop.
pub fn random_resized_crop(
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SplitMix64,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    // Fallback: the central crop at the nearest allowed ratio.
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0 {
        ((width as f64 / ratio.0).round_ties_even() as usize, width)
    } else if in_ratio > ratio.1 {
        (height, (height as f64 * ratio.1).round_ties_even() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Per-thread scratch buffers, reused across images.
#[derive(Default)]
pub struct Worker {
    decoded: Vec<u8>,
    tmp: Vec<u8>,
    pub augment: super::augment::Scratch,
}

/// Where the resampler reads: axes in the coordinates of the (scaled) image, and the DCT scale.
struct Plan {
    num: usize,
    h: Axis,
    v: Axis,
    flip: bool,
    /// Reverse the rows of the output (a vertical flip: cheaper on the small output than in the
    /// resampler, and exact either way).
    vflip: bool,
    /// Train crops take the cheaper pass order; eval keeps Pillow's for parity with torchvision.
    vertical_first: bool,
}

/// How much larger than the target the DCT-scaled image must stay for eval. At 1 the scaled
/// IDCT does the whole downscale, with weaker antialiasing than Pillow's filter (mean pixel
/// differences up to 1.6 on real images); at 2 the resampler still does at least a 2x reduction
/// and the eval transform stays within 0.4 of torchvision's (tests/preprocess.rs).
const EVAL_DCT_MIN_RATIO: usize = 2;
/// For random train crops the scaled IDCT may do the whole downscale (as DALI's and FFCV's
/// decode-with-downscale do): augmentation is random anyway, and it saves IDCT and resampling.
const TRAIN_DCT_MIN_RATIO: usize = 1;
/// A bicubic crop keeps at least a 2x reduction for the cubic filter itself: the DCT's own
/// downscale is smooth, and at ratio 1 a large crop loses the sharpness bicubic is chosen for
/// (mean patch difference 1.06 against torchvision on a 1200 x 1500 crop, 0.48 at 2).
const BICUBIC_DCT_MIN_RATIO: usize = 2;

/// Smallest DCT scale num/8 at which `extent` source pixels still give `ratio x need`.
fn dct_num(extent: usize, need: usize, ratio: usize) -> usize {
    (1..=8).find(|&num| extent * num >= ratio * need * 8).unwrap_or(8)
}

fn plan(height: usize, width: usize, t: &Transform, rng: &mut SplitMix64, scaling: bool) -> Plan {
    match *t {
        Transform::Train { size, scale, ratio, hflip, vflip, filter } => {
            let (top, left, h, w) = random_resized_crop(height, width, scale, ratio, rng);
            let flip = rng.uniform() < hflip;
            // Drawn only when on, so that runs without it keep their crops.
            let vertical = vflip > 0.0 && rng.uniform() < vflip;
            // timm's `random.choice((BILINEAR, BICUBIC))`; a fixed filter draws nothing.
            let filter = filter.fixed().unwrap_or_else(|| {
                if rng.below(2) == 0 {
                    Filter::Bilinear
                } else {
                    Filter::Bicubic
                }
            });
            let crop = Transform::Crop { top, left, height: h, width: w, size, flip, filter };
            Plan { vflip: vertical, ..plan(height, width, &crop, rng, scaling) }
        }
        Transform::Crop { top, left, height: h, width: w, size, flip, filter } => {
            let (top, left) = (top.min(height - 1), left.min(width - 1));
            let (h, w) = (h.clamp(1, height - top), w.clamp(1, width - left));
            let ratio = if filter == Filter::Bicubic { BICUBIC_DCT_MIN_RATIO } else { TRAIN_DCT_MIN_RATIO };
            let num = if scaling { dct_num(h.min(w), size, ratio) } else { 8 };
            let s = num as f64 / 8.0;
            let axis = |lo: usize, len: usize, full: usize| {
                let (b0, b1) = (lo as f64 * s, (lo + len) as f64 * s);
                let hi = (b1.ceil() as usize).min(jpeg::scaled(full, num));
                Axis::new(filter, b0.floor() as usize, hi, b0, b1, size, 0..size)
            };
            let (h_axis, v_axis) = (axis(left, w, width), axis(top, h, height));
            let (lo, hi) = v_axis.source_range();
            Plan { num, vertical_first: hi - lo > size, h: h_axis, v: v_axis, flip, vflip: false }
        }
        Transform::Eval { size, resize, filter } => {
            let (rh, rw) = resize_shorter_side(height, width, resize);
            let num = if scaling { dct_num(height.min(width), resize, EVAL_DCT_MIN_RATIO) } else { 8 };
            let s = num as f64 / 8.0;
            let (top, left) = (center_crop_offset(rh, size), center_crop_offset(rw, size));
            let (sh, sw) = (jpeg::scaled(height, num), jpeg::scaled(width, num));
            let h = Axis::new(filter, 0, sw, 0.0, width as f64 * s, rw, left..left + size.min(rw));
            let v = Axis::new(filter, 0, sh, 0.0, height as f64 * s, rh, top..top + size.min(rh));
            Plan { num, h, v, flip: false, vflip: false, vertical_first: false }
        }
    }
}

/// Decodes `bytes` and applies `t`, writing `3 x size x size` uint8 CHW into `dst`.
/// `rng` is the sample's own generator. JPEGs go through libjpeg-turbo (scaled, partial decode);
/// everything else, and JPEGs libjpeg-turbo refuses (CMYK), through the `image` crate.
pub fn apply(
    worker: &mut Worker,
    bytes: &[u8],
    path: &Path,
    t: &Transform,
    rng: &mut SplitMix64,
    dst: &mut [u8],
) -> Result<()> {
    let size = t.size();
    if dst.len() != 3 * size * size {
        return Err(Error::Usage(format!("output buffer of {} bytes for a {size}px image", dst.len())));
    }
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
    if is_jpeg {
        if let Ok(header) = jpeg::header(bytes) {
            decode::check_pixels(header.width, header.height, path)?;
            // Draw the plan from a copy so a fallback below draws the same crop.
            let mut r = rng.clone();
            let p = plan(header.height, header.width, t, &mut r, true);
            let ((x0, x1), (y0, y1)) = (p.h.source_range(), p.v.source_range());
            let want = Region { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
            match jpeg::decode(bytes, &header, p.num, Some(want), &mut worker.decoded) {
                Ok(region) => {
                    let src = resize::Source {
                        pixels: &worker.decoded,
                        stride: region.width * 3,
                        x0: region.x,
                        y0: region.y,
                    };
                    resize::resample(&src, &p.h, &p.v, p.flip, p.vertical_first, &mut worker.tmp, dst);
                    if p.vflip {
                        flip_rows(dst, size);
                    }
                    *rng = r;
                    return Ok(());
                }
                // A truncated file is bad (PIL refuses it); a lenient fallback must not rescue it.
                Err(msg) if msg.contains("truncated") => return Err(Error::file(path, msg)),
                Err(_) => {} // e.g. CMYK: the `image` crate handles it below
            }
        }
    }
    let img = decode::decode_bytes(bytes, path)?;
    let p = plan(img.height, img.width, t, rng, false);
    let src = resize::Source { pixels: &img.pixels, stride: img.width * 3, x0: 0, y0: 0 };
    resize::resample(&src, &p.h, &p.v, p.flip, p.vertical_first, &mut worker.tmp, dst);
    if p.vflip {
        flip_rows(dst, size);
    }
    Ok(())
}

/// Reverses the row order of each plane of a `3 x size x size` image (RandomVerticalFlip).
fn flip_rows(chw: &mut [u8], size: usize) {
    for plane in chw.chunks_exact_mut(size * size) {
        for top in 0..size / 2 {
            let (upper, lower) = plane.split_at_mut((size - 1 - top) * size);
            upper[top * size..(top + 1) * size].swap_with_slice(&mut lower[..size]);
        }
    }
}

/// Reads and transforms one file into a new `[3, size, size]` uint8 tensor.
pub fn load_tensor(path: &Path, t: &Transform, rng: &mut SplitMix64) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let size = t.size();
    let mut out = vec![0u8; 3 * size * size];
    apply(&mut Worker::default(), &bytes, path, t, rng, &mut out)?;
    Ok(Tensor::f_from_data_size(&out, &[3, size as i64, size as i64], Kind::Uint8)?)
}

/// The per-channel mean and standard deviation (of RGB values in [0, 1]) inputs are normalised
/// with: ImageNet's unless the run says otherwise (timm's `mean`/`std`); recorded in model files.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Default for Normalization {
    fn default() -> Self {
        Self { mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }
}

impl Normalization {
    /// ToTensor + Normalize(mean, std) of a uint8 NCHW or CHW batch, on its device, as float.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let shape: &[i64] = if x.dim() == 4 { &[1, 3, 1, 1] } else { &[3, 1, 1] };
        let scaled = |v: &[f64; 3]| {
            (Tensor::from_slice(v) * 255.0).to_kind(Kind::Float).view(shape).to_device(x.device())
        };
        (x.to_kind(Kind::Float) - scaled(&self.mean)) / scaled(&self.std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FFCV's `get_resolution` (values from numpy's interp and round, half to even).
    #[test]
    fn progressive_resizing_follows_ffcv() {
        let rn50_88 = ResSchedule { min_res: 160, max_res: 192, start_ramp: 65, end_ramp: 76 };
        let got: Vec<usize> = (60..80).map(|e| rn50_88.size_at(e)).collect();
        let mut want = vec![160; 11];
        want.extend([192; 9]);
        assert_eq!(got, want);
        let rn50_16 = ResSchedule { min_res: 160, max_res: 192, start_ramp: 11, end_ramp: 13 };
        assert_eq!((0..16).map(|e| rn50_16.size_at(e)).collect::<Vec<_>>()[10..14], [160, 160, 192, 192]);
        let wide = ResSchedule { min_res: 128, max_res: 224, start_ramp: 10, end_ramp: 20 };
        assert_eq!(
            (8..22).map(|e| wide.size_at(e)).collect::<Vec<_>>(),
            [128, 128, 128, 128, 160, 160, 160, 192, 192, 192, 192, 224, 224, 224]
        );
    }
}
