//! Augmentation policies, applied in the decode workers to each uint8 crop after the flip, where
//! torchvision's and timm's train transforms apply them to the PIL image:
//!
//! - torchvision (`aa = "randaugment"`, `"trivialaugment"` / timm's `"ta_wide"`, `"autoaugment"`):
//!   `RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31)`, `TrivialAugmentWide()`,
//!   `AutoAugment(IMAGENET)`: their magnitude tables (torch's float32 linspace), op choice, signs,
//!   nearest resampling and black fill.
//! - timm (`aa = "rand-m9-mstd0.5-inc1"` ..., `"v0"`, `"original"`): `rand_augment_transform` and
//!   `auto_augment_transform`: each op applied with its probability, magnitude noise (mstd),
//!   timm's level-to-argument rules, bilinear or bicubic at random, fill = the ImageNet mean.
//! - timm's AugMix (`aa = "augmix-m3-w3"` ...): `augment_and_mix_transform`: `width` chains of 1-3
//!   ops from its 13, mixed with Dirichlet weights in float32 and blended with the crop by a
//!   Beta(alpha, alpha) factor.
//! - `color_jitter`: torchvision's `ColorJitter(brightness, contrast, saturation)` in a random order,
//!   with probability `color_jitter_prob` when set; then timm's `grayscale_prob`
//!   (`RandomGrayscale`) and `gaussian_blur_prob` (`GaussianBlur(23, sigma=(0.1, 2))`).
//!
//! The ops themselves follow Pillow's arithmetic (augment_ops.rs). Every draw comes from the
//! sample's own generator (keyed by seed, epoch, index), so batches are identical for any number of
//! threads and after a resume.

pub use super::augment_ops::Scratch;
use super::augment_ops::{self as ops, Interp, Planes};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use tch::{Device, Kind, Tensor};

/// torchvision's op names (`_apply_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TvOp {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    Invert,
}

/// timm's op names (`NAME_TO_OP` / `LEVEL_TO_ARG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimmOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    PosterizeOriginal,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

/// timm's AutoAugment policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimmAutoPolicy {
    V0,
    Original,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// torchvision `RandAugment(num_ops, magnitude, num_magnitude_bins)`.
    RandAugment { num_ops: usize, magnitude: usize, bins: usize },
    /// torchvision `TrivialAugmentWide(num_magnitude_bins)`.
    TrivialAugmentWide { bins: usize },
    /// torchvision `AutoAugment(AutoAugmentPolicy.IMAGENET)`.
    AutoAugment,
    /// timm `rand-m{M}-n{N}-mstd{S}-mmax{X}-inc{0|1}-p{P}`.
    TimmRand { magnitude: f64, num_layers: usize, mstd: f64, mmax: f64, prob: f64, increasing: bool },
    /// timm `v0` / `original` (optionally `-mstd{S}`).
    TimmAuto { policy: TimmAutoPolicy, mstd: f64 },
    /// timm `augmix-m{M}-w{W}-d{D}-a{A}-mstd{S}`: severity M, width W chains, each D ops deep
    /// (D <= 0: 1 to 3 at random), Dirichlet/Beta alpha A, magnitude noise S (inf: uniform in
    /// [0, M], timm's default).
    AugMix { magnitude: f64, width: usize, depth: i64, alpha: f64, mstd: f64 },
}

/// timm's fill: `tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN)`.
pub const TIMM_FILL: [u8; 3] = [124, 116, 104];

const TV_OPS: [TvOp; 14] = [
    TvOp::Identity,
    TvOp::ShearX,
    TvOp::ShearY,
    TvOp::TranslateX,
    TvOp::TranslateY,
    TvOp::Rotate,
    TvOp::Brightness,
    TvOp::Color,
    TvOp::Contrast,
    TvOp::Sharpness,
    TvOp::Posterize,
    TvOp::Solarize,
    TvOp::AutoContrast,
    TvOp::Equalize,
];

/// torchvision's AutoAugment ImageNet policy: (op, probability, magnitude bin).
const TV_AUTO_IMAGENET: [[(TvOp, f64, Option<usize>); 2]; 25] = {
    use TvOp::*;
    [
        [(Posterize, 0.4, Some(8)), (Rotate, 0.6, Some(9))],
        [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
        [(Equalize, 0.8, None), (Equalize, 0.6, None)],
        [(Posterize, 0.6, Some(7)), (Posterize, 0.6, Some(6))],
        [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
        [(Equalize, 0.4, None), (Rotate, 0.8, Some(8))],
        [(Solarize, 0.6, Some(3)), (Equalize, 0.6, None)],
        [(Posterize, 0.8, Some(5)), (Equalize, 1.0, None)],
        [(Rotate, 0.2, Some(3)), (Solarize, 0.6, Some(8))],
        [(Equalize, 0.6, None), (Posterize, 0.4, Some(6))],
        [(Rotate, 0.8, Some(8)), (Color, 0.4, Some(0))],
        [(Rotate, 0.4, Some(9)), (Equalize, 0.6, None)],
        [(Equalize, 0.0, None), (Equalize, 0.8, None)],
        [(Invert, 0.6, None), (Equalize, 1.0, None)],
        [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
        [(Rotate, 0.8, Some(8)), (Color, 1.0, Some(2))],
        [(Color, 0.8, Some(8)), (Solarize, 0.8, Some(7))],
        [(Sharpness, 0.4, Some(7)), (Invert, 0.6, None)],
        [(ShearX, 0.6, Some(5)), (Equalize, 1.0, None)],
        [(Color, 0.4, Some(0)), (Equalize, 0.6, None)],
        [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
        [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
        [(Invert, 0.6, None), (Equalize, 1.0, None)],
        [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
        [(Equalize, 0.8, None), (Equalize, 0.6, None)],
    ]
};

const TIMM_RAND: [TimmOp; 15] = {
    use TimmOp::*;
    [
        AutoContrast,
        Equalize,
        Invert,
        Rotate,
        Posterize,
        Solarize,
        SolarizeAdd,
        Color,
        Contrast,
        Brightness,
        Sharpness,
        ShearX,
        ShearY,
        TranslateXRel,
        TranslateYRel,
    ]
};

const TIMM_RAND_INCREASING: [TimmOp; 15] = {
    use TimmOp::*;
    [
        AutoContrast,
        Equalize,
        Invert,
        Rotate,
        PosterizeIncreasing,
        SolarizeIncreasing,
        SolarizeAdd,
        ColorIncreasing,
        ContrastIncreasing,
        BrightnessIncreasing,
        SharpnessIncreasing,
        ShearX,
        ShearY,
        TranslateXRel,
        TranslateYRel,
    ]
};

/// timm's `_AUGMIX_TRANSFORMS`.
const TIMM_AUGMIX: [TimmOp; 13] = {
    use TimmOp::*;
    [
        AutoContrast,
        ColorIncreasing,
        ContrastIncreasing,
        BrightnessIncreasing,
        SharpnessIncreasing,
        Equalize,
        Rotate,
        PosterizeIncreasing,
        SolarizeIncreasing,
        ShearX,
        ShearY,
        TranslateXRel,
        TranslateYRel,
    ]
};

type TimmSub = [(TimmOp, f64, f64); 2];

/// timm's `auto_augment_policy_v0` (the EfficientNet TPU policy).
const TIMM_V0: [TimmSub; 25] = {
    use TimmOp::*;
    [
        [(Equalize, 0.8, 1.0), (ShearY, 0.8, 4.0)],
        [(Color, 0.4, 9.0), (Equalize, 0.6, 3.0)],
        [(Color, 0.4, 1.0), (Rotate, 0.6, 8.0)],
        [(Solarize, 0.8, 3.0), (Equalize, 0.4, 7.0)],
        [(Solarize, 0.4, 2.0), (Solarize, 0.6, 2.0)],
        [(Color, 0.2, 0.0), (Equalize, 0.8, 8.0)],
        [(Equalize, 0.4, 8.0), (SolarizeAdd, 0.8, 3.0)],
        [(ShearX, 0.2, 9.0), (Rotate, 0.6, 8.0)],
        [(Color, 0.6, 1.0), (Equalize, 1.0, 2.0)],
        [(Invert, 0.4, 9.0), (Rotate, 0.6, 0.0)],
        [(Equalize, 1.0, 9.0), (ShearY, 0.6, 3.0)],
        [(Color, 0.4, 7.0), (Equalize, 0.6, 0.0)],
        [(Posterize, 0.4, 6.0), (AutoContrast, 0.4, 7.0)],
        [(Solarize, 0.6, 8.0), (Color, 0.6, 9.0)],
        [(Solarize, 0.2, 4.0), (Rotate, 0.8, 9.0)],
        [(Rotate, 1.0, 7.0), (TranslateYRel, 0.8, 9.0)],
        [(ShearX, 0.0, 0.0), (Solarize, 0.8, 4.0)],
        [(ShearY, 0.8, 0.0), (Color, 0.6, 4.0)],
        [(Color, 1.0, 0.0), (Rotate, 0.6, 2.0)],
        [(Equalize, 0.8, 4.0), (Equalize, 0.0, 8.0)],
        [(Equalize, 1.0, 4.0), (AutoContrast, 0.6, 2.0)],
        [(ShearY, 0.4, 7.0), (SolarizeAdd, 0.6, 7.0)],
        [(Posterize, 0.8, 2.0), (Solarize, 0.6, 10.0)],
        [(Solarize, 0.6, 8.0), (Equalize, 0.6, 1.0)],
        [(Color, 0.8, 6.0), (Rotate, 0.4, 5.0)],
    ]
};

/// timm's `auto_augment_policy_original` (the AutoAugment paper's ImageNet policy).
const TIMM_ORIGINAL: [TimmSub; 25] = {
    use TimmOp::*;
    [
        [(PosterizeOriginal, 0.4, 8.0), (Rotate, 0.6, 9.0)],
        [(Solarize, 0.6, 5.0), (AutoContrast, 0.6, 5.0)],
        [(Equalize, 0.8, 8.0), (Equalize, 0.6, 3.0)],
        [(PosterizeOriginal, 0.6, 7.0), (PosterizeOriginal, 0.6, 6.0)],
        [(Equalize, 0.4, 7.0), (Solarize, 0.2, 4.0)],
        [(Equalize, 0.4, 4.0), (Rotate, 0.8, 8.0)],
        [(Solarize, 0.6, 3.0), (Equalize, 0.6, 7.0)],
        [(PosterizeOriginal, 0.8, 5.0), (Equalize, 1.0, 2.0)],
        [(Rotate, 0.2, 3.0), (Solarize, 0.6, 8.0)],
        [(Equalize, 0.6, 8.0), (PosterizeOriginal, 0.4, 6.0)],
        [(Rotate, 0.8, 8.0), (Color, 0.4, 0.0)],
        [(Rotate, 0.4, 9.0), (Equalize, 0.6, 2.0)],
        [(Equalize, 0.0, 7.0), (Equalize, 0.8, 8.0)],
        [(Invert, 0.6, 4.0), (Equalize, 1.0, 8.0)],
        [(Color, 0.6, 4.0), (Contrast, 1.0, 8.0)],
        [(Rotate, 0.8, 8.0), (Color, 1.0, 2.0)],
        [(Color, 0.8, 8.0), (Solarize, 0.8, 7.0)],
        [(Sharpness, 0.4, 7.0), (Invert, 0.6, 8.0)],
        [(ShearX, 0.6, 5.0), (Equalize, 1.0, 9.0)],
        [(Color, 0.4, 0.0), (Equalize, 0.6, 3.0)],
        [(Equalize, 0.4, 7.0), (Solarize, 0.2, 4.0)],
        [(Solarize, 0.6, 5.0), (AutoContrast, 0.6, 5.0)],
        [(Invert, 0.6, 4.0), (Equalize, 1.0, 8.0)],
        [(Color, 0.6, 4.0), (Contrast, 1.0, 8.0)],
        [(Equalize, 0.8, 8.0), (Equalize, 0.6, 3.0)],
    ]
};

/// One family of `aa` values: the names that select it, its `-`-separated sections (each a
/// key and a number), an example, and whose policy it is.
pub struct PolicyInfo {
    pub names: &'static [&'static str],
    pub sections: &'static [&'static str],
    pub example: &'static str,
    pub what: &'static str,
}

/// Every policy family `aa` accepts: the parser's error messages and the tests derive from it.
pub const POLICIES: [PolicyInfo; 6] = [
    PolicyInfo {
        names: &["randaugment"],
        sections: &["n", "m", "b"],
        example: "randaugment-n2-m9",
        what: "torchvision's RandAugment",
    },
    PolicyInfo {
        names: &["trivialaugment", "ta_wide"],
        sections: &[],
        example: "trivialaugment",
        what: "torchvision's TrivialAugmentWide",
    },
    PolicyInfo {
        names: &["autoaugment"],
        sections: &[],
        example: "autoaugment",
        what: "torchvision's AutoAugment (ImageNet policy)",
    },
    PolicyInfo {
        names: &["rand"],
        sections: &["m", "n", "mstd", "mmax", "inc", "p"],
        example: "rand-m9-mstd0.5-inc1",
        what: "timm's RandAugment",
    },
    PolicyInfo {
        names: &["v0", "original"],
        sections: &["mstd"],
        example: "v0-mstd0.5",
        what: "timm's AutoAugment policies",
    },
    PolicyInfo {
        names: &["augmix"],
        sections: &["m", "w", "d", "a", "b", "mstd"],
        example: "augmix-m3-w3",
        what: "timm's AugMix",
    },
];

/// The family a policy name selects.
fn family(head: &str) -> Option<&'static PolicyInfo> {
    POLICIES.iter().find(|p| p.names.contains(&head))
}

fn bad_aa(s: &str, why: &str) -> Error {
    let expected: Vec<String> = POLICIES.iter().map(|p| format!("{} (e.g. {})", p.what, p.example)).collect();
    Error::Usage(format!("--aa {s:?}: {why}; expected none or one of: {}", expected.join(", ")))
}

/// An unknown section of a policy of family `head`.
fn unknown_section(s: &str, head: &str, key: &str) -> Error {
    let known = family(head).map_or(String::new(), |p| p.sections.join(", "));
    bad_aa(s, &format!("unknown section {key:?} ({known})"))
}

impl Policy {
    /// Parses an `aa` value (timm's names, plus torchvision's); "" and "none" mean no policy.
    pub fn parse(s: &str) -> Result<Option<Policy>> {
        let t = s.trim();
        let mut parts = t.split('-');
        let head = parts.next().unwrap_or("");
        let sections: Vec<&str> = parts.collect();
        // `key` + number sections, as timm's re.split(r'(\d.*)', c).
        let split = |c: &str| -> Result<(String, f64)> {
            let at = c
                .find(|ch: char| ch.is_ascii_digit())
                .ok_or_else(|| bad_aa(s, &format!("section {c:?} has no number")))?;
            let v = c[at..].parse::<f64>().map_err(|_| bad_aa(s, &format!("section {c:?}: bad number")))?;
            Ok((c[..at].to_string(), v))
        };
        let policy = match head {
            "" | "none" if sections.is_empty() => return Ok(None),
            "randaugment" => {
                let (mut num_ops, mut magnitude, mut bins) = (2, 9, 31);
                for c in &sections {
                    match split(c)? {
                        (k, v) if k == "n" => num_ops = v as usize,
                        (k, v) if k == "m" => magnitude = v as usize,
                        (k, v) if k == "b" => bins = v as usize,
                        (k, _) => return Err(unknown_section(s, head, &k)),
                    }
                }
                if bins < 2 || magnitude >= bins {
                    return Err(bad_aa(s, "the magnitude must be below the number of bins (b, at least 2)"));
                }
                Policy::RandAugment { num_ops, magnitude, bins }
            }
            "trivialaugment" | "ta_wide" if sections.is_empty() => Policy::TrivialAugmentWide { bins: 31 },
            _ if family(head).is_some_and(|p| p.sections.is_empty()) && !sections.is_empty() => {
                return Err(bad_aa(s, &format!("{head} takes no sections")))
            }
            "autoaugment" if sections.is_empty() => Policy::AutoAugment,
            "rand" => {
                let (mut magnitude, mut num_layers, mut mstd, mut mmax, mut prob, mut increasing) =
                    (10.0, 2, 0.0, 10.0, 0.5, false);
                for c in &sections {
                    if c.starts_with('t') {
                        return Err(bad_aa(s, "timm's t<choices> sections (weights, 3a) are not supported"));
                    }
                    let (k, v) = split(c)?;
                    match k.as_str() {
                        "m" => magnitude = v.trunc(),
                        "n" => num_layers = v as usize,
                        "mstd" => mstd = if v > 100.0 { f64::INFINITY } else { v },
                        "mmax" => mmax = v.trunc(),
                        "inc" => increasing = v != 0.0,
                        "p" => prob = v,
                        _ => return Err(unknown_section(s, head, &k)),
                    }
                }
                if !(0.0..=1.0).contains(&prob) {
                    return Err(bad_aa(s, "p must be in [0, 1]"));
                }
                Policy::TimmRand { magnitude, num_layers, mstd, mmax, prob, increasing }
            }
            "v0" | "original" => {
                let mut mstd = 0.0;
                for c in &sections {
                    match split(c)? {
                        (k, v) if k == "mstd" => mstd = v,
                        (k, _) => return Err(unknown_section(s, head, &k)),
                    }
                }
                let policy = if head == "v0" { TimmAutoPolicy::V0 } else { TimmAutoPolicy::Original };
                Policy::TimmAuto { policy, mstd }
            }
            "augmix" => {
                let (mut magnitude, mut width, mut depth, mut alpha, mut mstd) =
                    (3.0, 3, -1, 1.0, f64::INFINITY);
                for c in &sections {
                    // An empty section (two dashes) is skipped, as timm skips it.
                    if c.is_empty() {
                        continue;
                    }
                    let (k, v) = split(c)?;
                    match k.as_str() {
                        "m" => magnitude = v.trunc(),
                        "w" => width = v as usize,
                        "d" => depth = v as i64,
                        "a" => alpha = v,
                        "mstd" => mstd = v,
                        "b" if v == 0.0 => {}
                        "b" => {
                            return Err(bad_aa(
                                s,
                                "timm's blended AugMix (b1, 'not well tested' in timm) is not supported",
                            ))
                        }
                        _ => return Err(unknown_section(s, head, &k)),
                    }
                }
                if !(1..=16).contains(&width) || depth > 16 || !(alpha > 0.0 && alpha.is_finite()) {
                    return Err(bad_aa(s, "w must be 1..=16, d at most 16 and a positive"));
                }
                Policy::AugMix { magnitude, width, depth, alpha, mstd }
            }
            _ => return Err(bad_aa(s, "unknown policy")),
        };
        Ok(Some(policy))
    }
}

/// torchvision's magnitude spaces: RandAugment's and AutoAugment's, or TrivialAugmentWide's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    Standard,
    Wide,
}

/// torchvision's `_augmentation_space(num_bins, (h, w))`: the float32 magnitudes of `op` and
/// whether their sign is random; an empty table means the op has no magnitude.
fn tv_magnitudes(space: Space, op: TvOp, bins: usize, h: usize, w: usize) -> (Vec<f64>, bool) {
    let linspace = |start: f64, end: f64| -> Vec<f64> {
        let t = Tensor::linspace(start, end, bins as i64, (Kind::Float, Device::Cpu));
        Vec::<f32>::try_from(&t).unwrap_or_default().into_iter().map(f64::from).collect()
    };
    let lin = |end: f64| linspace(0.0, end);
    let wide = space == Space::Wide;
    match op {
        TvOp::ShearX | TvOp::ShearY => (lin(if wide { 0.99 } else { 0.3 }), true),
        TvOp::TranslateX => (lin(if wide { 32.0 } else { 150.0 / 331.0 * w as f64 }), true),
        TvOp::TranslateY => (lin(if wide { 32.0 } else { 150.0 / 331.0 * h as f64 }), true),
        TvOp::Rotate => (lin(if wide { 135.0 } else { 30.0 }), true),
        TvOp::Brightness | TvOp::Color | TvOp::Contrast | TvOp::Sharpness => {
            (lin(if wide { 0.99 } else { 0.9 }), true)
        }
        TvOp::Posterize => {
            // 8 - (torch.arange(num_bins) / ((num_bins - 1) / k)).round().int()
            let k = if wide { 6.0 } else { 4.0 };
            let t = Tensor::arange(bins as i64, (Kind::Int64, Device::Cpu)) / ((bins as f64 - 1.0) / k);
            let r = Vec::<f32>::try_from(&t.round()).unwrap_or_default();
            (r.into_iter().map(|v| 8.0 - v as i64 as f64).collect(), false)
        }
        TvOp::Solarize => (linspace(255.0, 0.0), false),
        TvOp::Identity | TvOp::AutoContrast | TvOp::Equalize | TvOp::Invert => (Vec::new(), false),
    }
}

/// Magnitude tables of every torchvision op for one image size.
#[derive(Clone, Debug)]
struct TvTables {
    h: usize,
    w: usize,
    table: Vec<(TvOp, Vec<f64>, bool)>,
}

impl TvTables {
    fn new(space: Space, bins: usize, h: usize, w: usize) -> Self {
        let mut ops = TV_OPS.to_vec();
        ops.push(TvOp::Invert);
        let table = ops
            .into_iter()
            .map(|op| {
                let (m, s) = tv_magnitudes(space, op, bins, h, w);
                (op, m, s)
            })
            .collect();
        Self { h, w, table }
    }

    fn get(&self, op: TvOp) -> (&[f64], bool) {
        let (_, m, s) = self.table.iter().find(|(o, _, _)| *o == op).expect("every op has a table");
        (m, *s)
    }
}

/// torchvision's `_apply_op(img, op, magnitude, interpolation, fill)` on a PIL image.
pub fn tv_apply(img: &mut Planes, op: TvOp, magnitude: f64, interp: Interp, fill: [u8; 3], s: &mut Scratch) {
    let (h, w) = (img.h as f64, img.w as f64);
    let affine =
        |img: &mut Planes, s: &mut Scratch, center: [f64; 2], translate: [f64; 2], shear: [f64; 2]| {
            let m = ops::inverse_affine_matrix(center, 0.0, translate, 1.0, shear);
            ops::affine(img, m, interp, fill, s);
        };
    match op {
        TvOp::Identity => {}
        TvOp::ShearX => affine(img, s, [0.0, 0.0], [0.0, 0.0], [magnitude.atan().to_degrees(), 0.0]),
        TvOp::ShearY => affine(img, s, [0.0, 0.0], [0.0, 0.0], [0.0, magnitude.atan().to_degrees()]),
        TvOp::TranslateX => affine(img, s, [w * 0.5, h * 0.5], [magnitude.trunc(), 0.0], [0.0, 0.0]),
        TvOp::TranslateY => affine(img, s, [w * 0.5, h * 0.5], [0.0, magnitude.trunc()], [0.0, 0.0]),
        TvOp::Rotate => ops::rotate(img, magnitude, interp, fill, s),
        TvOp::Brightness => ops::brightness(img, 1.0 + magnitude),
        TvOp::Color => ops::color(img, 1.0 + magnitude, s),
        TvOp::Contrast => ops::contrast(img, 1.0 + magnitude, s),
        TvOp::Sharpness => ops::sharpness(img, 1.0 + magnitude, s),
        TvOp::Posterize => ops::posterize(img, magnitude as i64),
        TvOp::Solarize => ops::solarize(img, magnitude),
        TvOp::AutoContrast => ops::autocontrast(img),
        TvOp::Equalize => ops::equalize(img),
        TvOp::Invert => ops::invert(img),
    }
}

/// timm's `_randomly_negate`: negative when `random.random() > 0.5`.
fn randomly_negate(v: f64, rng: &mut SplitMix64) -> f64 {
    if rng.uniform() > 0.5 {
        -v
    } else {
        v
    }
}

/// timm's default `translate_pct` (hparams) of TranslateXRel / TranslateYRel at level 10.
pub const TIMM_TRANSLATE_PCT: f64 = 0.45;
/// What timm's transform factory sets for AugMix instead (`aa_params['translate_pct'] = 0.3`).
pub const AUGMIX_TRANSLATE_PCT: f64 = 0.3;

/// timm's `LEVEL_TO_ARG[op](magnitude, hparams)` (the level is on timm's 0..10 scale;
/// `translate_pct`: the hparams' value); None: no argument.
pub fn timm_level(op: TimmOp, level: f64, translate_pct: f64, rng: &mut SplitMix64) -> Option<f64> {
    use TimmOp::*;
    let l = level / 10.0;
    Some(match op {
        AutoContrast | Equalize | Invert => return None,
        Rotate => randomly_negate(l * 30.0, rng),
        Posterize => (l * 4.0).trunc(),
        PosterizeIncreasing => 4.0 - (l * 4.0).trunc(),
        PosterizeOriginal => (l * 4.0).trunc() + 4.0,
        Solarize => (l * 256.0).trunc().min(256.0),
        SolarizeIncreasing => 256.0 - (l * 256.0).trunc().min(256.0),
        SolarizeAdd => (l * 110.0).trunc().min(128.0),
        Color | Contrast | Brightness | Sharpness => l * 1.8 + 0.1,
        ColorIncreasing | ContrastIncreasing | BrightnessIncreasing | SharpnessIncreasing => {
            (1.0 + randomly_negate(l * 0.9, rng)).max(0.1)
        }
        ShearX | ShearY => randomly_negate(l * 0.3, rng),
        TranslateXRel | TranslateYRel => randomly_negate(l * translate_pct, rng),
    })
}

/// timm's `NAME_TO_OP[op](img, arg, resample=interp, fillcolor=fill)`.
pub fn timm_apply(
    img: &mut Planes,
    op: TimmOp,
    arg: Option<f64>,
    interp: Interp,
    fill: [u8; 3],
    s: &mut Scratch,
) {
    use TimmOp::*;
    let v = arg.unwrap_or(0.0);
    let (h, w) = (img.h as f64, img.w as f64);
    match op {
        AutoContrast => ops::autocontrast(img),
        Equalize => ops::equalize(img),
        Invert => ops::invert(img),
        Rotate => ops::rotate(img, v, interp, fill, s),
        Posterize | PosterizeIncreasing | PosterizeOriginal => ops::posterize(img, v as i64),
        Solarize | SolarizeIncreasing => ops::solarize(img, v),
        SolarizeAdd => ops::solarize_add(img, v as i64, 128),
        Color | ColorIncreasing => ops::color(img, v, s),
        Contrast | ContrastIncreasing => ops::contrast(img, v, s),
        Brightness | BrightnessIncreasing => ops::brightness(img, v),
        Sharpness | SharpnessIncreasing => ops::sharpness(img, v, s),
        ShearX => ops::affine(img, [1.0, v, 0.0, 0.0, 1.0, 0.0], interp, fill, s),
        ShearY => ops::affine(img, [1.0, 0.0, 0.0, v, 1.0, 0.0], interp, fill, s),
        TranslateXRel => ops::affine(img, [1.0, 0.0, v * w, 0.0, 1.0, 0.0], interp, fill, s),
        TranslateYRel => ops::affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, v * h], interp, fill, s),
    }
}

/// timm's `gaussian_blur_prob` blur: `transforms.GaussianBlur(kernel_size=23)` ("hardcoded for
/// now" in timm's transforms_factory.py), sigma drawn in [0.1, 2].
pub const GAUSSIAN_BLUR_KERNEL: usize = 23;

/// What the decode workers apply after the crop and flip.
#[derive(Clone, Debug)]
pub struct Augment {
    pub policy: Option<Policy>,
    /// ColorJitter (brightness, contrast, saturation, hue) strengths.
    pub jitter: Option<[f64; 4]>,
    /// timm's `color_jitter_prob`: the jitter applies with this probability (None: always).
    pub jitter_prob: Option<f64>,
    /// timm's `grayscale_prob`: torchvision's `RandomGrayscale(p)` after the jitter.
    pub grayscale_prob: f64,
    /// timm's `gaussian_blur_prob`: `RandomApply([GaussianBlur(23, sigma=(0.1, 2))], p)` last.
    pub blur_prob: f64,
    /// The filter of timm's geometric ops: fixed when timm's `train_interpolation` is
    /// bilinear or bicubic, drawn per op when it is `random` (None, timm's default).
    pub timm_filter: Option<Interp>,
    tables: Option<TvTables>,
}

impl Augment {
    /// `size`: the square crops it will see (tables for other sizes are computed when needed).
    pub fn new(policy: Option<Policy>, jitter: Option<[f64; 4]>, size: usize) -> Self {
        let tables = Self::tables_for(&policy, size, size);
        Self {
            policy,
            jitter,
            jitter_prob: None,
            grayscale_prob: 0.0,
            blur_prob: 0.0,
            timm_filter: None,
            tables,
        }
    }

    /// timm's SimCLR-style options: the jitter's probability, then grayscale and blur.
    pub fn with_probabilities(
        mut self,
        jitter_prob: Option<f64>,
        grayscale_prob: f64,
        blur_prob: f64,
    ) -> Self {
        (self.jitter_prob, self.grayscale_prob, self.blur_prob) = (jitter_prob, grayscale_prob, blur_prob);
        self
    }

    /// timm's ops with this fixed filter (None: drawn per op), as timm passes a fixed
    /// `train_interpolation` to its augmentations.
    pub fn with_timm_filter(mut self, filter: Option<crate::data::resize::Filter>) -> Self {
        use crate::data::resize::Filter;
        self.timm_filter = filter.map(|f| match f {
            Filter::Bilinear => Interp::Bilinear,
            Filter::Bicubic => Interp::Bicubic,
        });
        self
    }

    /// The same augmentation for `size`-pixel crops.
    pub fn resized(&self, size: usize) -> Self {
        let mut a = Self::new(self.policy.clone(), self.jitter, size).with_probabilities(
            self.jitter_prob,
            self.grayscale_prob,
            self.blur_prob,
        );
        a.timm_filter = self.timm_filter;
        a
    }

    fn tables_for(policy: &Option<Policy>, h: usize, w: usize) -> Option<TvTables> {
        match *policy {
            Some(Policy::RandAugment { bins, .. }) => Some(TvTables::new(Space::Standard, bins, h, w)),
            Some(Policy::TrivialAugmentWide { bins }) => Some(TvTables::new(Space::Wide, bins, h, w)),
            Some(Policy::AutoAugment) => Some(TvTables::new(Space::Standard, 10, h, w)),
            _ => None,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.policy.is_none() && self.jitter.is_none() && self.grayscale_prob <= 0.0 && self.blur_prob <= 0.0
    }

    /// Augments one planar RGB image in place, drawing from the sample's generator.
    pub fn apply(&self, img: &mut Planes, rng: &mut SplitMix64, s: &mut Scratch) {
        if let Some(policy) = &self.policy {
            let fresh;
            let tables = match &self.tables {
                Some(t) if t.h == img.h && t.w == img.w => Some(t),
                Some(_) => {
                    fresh = Self::tables_for(&self.policy, img.h, img.w);
                    fresh.as_ref()
                }
                None => None,
            };
            self.apply_policy(policy, tables, img, rng, s);
        }
        if let Some(j) = self.jitter {
            // torchvision's RandomApply: skipped when p < rand().
            if self.jitter_prob.is_none_or(|p| rng.uniform() <= p) {
                color_jitter(img, j, rng, s);
            }
        }
        if self.grayscale_prob > 0.0 && rng.uniform() < self.grayscale_prob {
            ops::grayscale(img, s);
        }
        if self.blur_prob > 0.0 && rng.uniform() <= self.blur_prob {
            // GaussianBlur's sigma: torch.empty(1).uniform_(0.1, 2.0), a float32.
            let sigma = rng.range(0.1, 2.0) as f32;
            ops::gaussian_blur(img, GAUSSIAN_BLUR_KERNEL, sigma, s);
        }
    }

    fn apply_policy(
        &self,
        policy: &Policy,
        tables: Option<&TvTables>,
        img: &mut Planes,
        rng: &mut SplitMix64,
        s: &mut Scratch,
    ) {
        let tv = |img: &mut Planes, rng: &mut SplitMix64, s: &mut Scratch, op: TvOp, bin: Option<usize>| {
            let (mags, signed) = tables.map_or((&[][..], false), |t| t.get(op));
            let mut m = match bin {
                Some(b) if !mags.is_empty() => mags[b.min(mags.len() - 1)],
                _ => 0.0,
            };
            if signed && rng.below(2) == 1 {
                m = -m;
            }
            tv_apply(img, op, m, Interp::Nearest, [0; 3], s);
        };
        match *policy {
            Policy::RandAugment { num_ops, magnitude, .. } => {
                for _ in 0..num_ops {
                    let op = TV_OPS[rng.below(TV_OPS.len() as u64) as usize];
                    tv(img, rng, s, op, Some(magnitude));
                }
            }
            Policy::TrivialAugmentWide { bins } => {
                let op = TV_OPS[rng.below(TV_OPS.len() as u64) as usize];
                let bin = rng.below(bins as u64) as usize;
                tv(img, rng, s, op, Some(bin));
            }
            Policy::AutoAugment => {
                let sub = &TV_AUTO_IMAGENET[rng.below(TV_AUTO_IMAGENET.len() as u64) as usize];
                // torchvision draws both probabilities and both signs up front.
                let (p, signs) = ([rng.uniform(), rng.uniform()], [rng.below(2), rng.below(2)]);
                for (i, &(op, prob, bin)) in sub.iter().enumerate() {
                    if p[i] <= prob {
                        let (mags, signed) = tables.map_or((&[][..], false), |t| t.get(op));
                        let mut m = match bin {
                            Some(b) if !mags.is_empty() => mags[b],
                            _ => 0.0,
                        };
                        if signed && signs[i] == 0 {
                            m = -m;
                        }
                        tv_apply(img, op, m, Interp::Nearest, [0; 3], s);
                    }
                }
            }
            Policy::TimmRand { magnitude, num_layers, mstd, mmax, prob, increasing } => {
                let choices: &[TimmOp] = if increasing { &TIMM_RAND_INCREASING } else { &TIMM_RAND };
                let picked: Vec<TimmOp> =
                    (0..num_layers).map(|_| choices[rng.below(choices.len() as u64) as usize]).collect();
                for op in picked {
                    let h = TimmHparams { mstd, mmax, translate_pct: TIMM_TRANSLATE_PCT };
                    timm_op(img, op, prob, magnitude, &h, self.timm_filter, rng, s);
                }
            }
            Policy::TimmAuto { policy, mstd } => {
                let table: &[TimmSub] = match policy {
                    TimmAutoPolicy::V0 => &TIMM_V0,
                    TimmAutoPolicy::Original => &TIMM_ORIGINAL,
                };
                let sub = table[rng.below(table.len() as u64) as usize];
                for (op, prob, magnitude) in sub {
                    let h = TimmHparams { mstd, mmax: 10.0, translate_pct: TIMM_TRANSLATE_PCT };
                    timm_op(img, op, prob, magnitude, &h, self.timm_filter, rng, s);
                }
            }
            Policy::AugMix { magnitude, width, depth, alpha, mstd } => {
                // timm's AugMixAugment.__call__: the weights and the blend factor as float32, then
                // per chain its depth and ops (with replacement), each op with probability 1.
                let weights: Vec<f32> = rng.dirichlet(alpha, width).into_iter().map(|w| w as f32).collect();
                let m = rng.beta(alpha, alpha) as f32;
                let (filter, h) =
                    (self.timm_filter, TimmHparams { mstd, mmax: 10.0, translate_pct: AUGMIX_TRANSLATE_PCT });
                let chains = weights.into_iter().map(|w| {
                    let d = if depth > 0 { depth as u64 } else { 1 + rng.below(3) };
                    let ops: Vec<TimmOp> =
                        (0..d).map(|_| TIMM_AUGMIX[rng.below(TIMM_AUGMIX.len() as u64) as usize]).collect();
                    (w, ops)
                });
                let chains: Vec<(f32, Vec<TimmOp>)> = chains.collect();
                augmix(img, &chains, m, s, |img, op, s| timm_op(img, op, 1.0, magnitude, &h, filter, rng, s));
            }
        }
    }
}

/// timm's `AugMixAugment._apply_basic`: each chain applies its ops (`apply_op`) to a copy of the
/// image; mixed = sum of weight x chain in float32, clipped to [0, 255] and truncated to uint8;
/// the result is `Image.blend(img, mixed, m)`.
pub fn augmix<Op: Copy>(
    img: &mut Planes,
    chains: &[(f32, Vec<Op>)],
    m: f32,
    s: &mut Scratch,
    mut apply_op: impl FnMut(&mut Planes, Op, &mut Scratch),
) {
    let n = img.px.len();
    let mut mixed = std::mem::take(&mut s.mix);
    let mut chain = std::mem::take(&mut s.chain);
    mixed.clear();
    mixed.resize(n, 0.0);
    for (w, ops) in chains {
        chain.clear();
        chain.extend_from_slice(img.px);
        let mut c = Planes { px: &mut chain, h: img.h, w: img.w };
        for &op in ops {
            apply_op(&mut c, op, s);
        }
        // numpy: mixed += np.float32(w) * float32(chain), a product then a sum (no fused multiply-add).
        mixed.iter_mut().zip(&chain).for_each(|(x, &v)| *x += *w * v as f32);
    }
    chain.clear();
    chain.extend(mixed.iter().map(|&x| x.clamp(0.0, 255.0) as u8));
    ops::blend_with(img, &chain, m);
    s.mix = mixed;
    s.chain = chain;
}

/// The hparams of timm's AugmentOp that the policies set: magnitude noise, its upper bound, and
/// the relative translation at level 10.
#[derive(Clone, Copy)]
struct TimmHparams {
    mstd: f64,
    mmax: f64,
    translate_pct: f64,
}

/// timm's `AugmentOp.__call__`: applied with probability `prob`, the magnitude perturbed by
/// N(0, mstd) (uniform in [0, m] when mstd is inf) and clipped to [0, mmax], interpolation
/// `filter` or, when None, bilinear or bicubic at random; fill the ImageNet mean.
#[allow(clippy::too_many_arguments)]
fn timm_op(
    img: &mut Planes,
    op: TimmOp,
    prob: f64,
    magnitude: f64,
    h: &TimmHparams,
    filter: Option<Interp>,
    rng: &mut SplitMix64,
    s: &mut Scratch,
) {
    let TimmHparams { mstd, mmax, translate_pct } = *h;
    if prob < 1.0 && rng.uniform() > prob {
        return;
    }
    let mut m = magnitude;
    if mstd == f64::INFINITY {
        m = rng.range(0.0, m);
    } else if mstd > 0.0 {
        m += mstd * rng.normal();
    }
    let upper = if mmax > 0.0 { mmax } else { 10.0 };
    let m = m.min(upper).max(0.0);
    let arg = timm_level(op, m, translate_pct, rng);
    let interp = filter.unwrap_or_else(|| if rng.below(2) == 0 { Interp::Bilinear } else { Interp::Bicubic });
    timm_apply(img, op, arg, interp, TIMM_FILL, s);
}

/// torchvision's `ColorJitter(brightness, contrast, saturation, hue)`: factors uniform in
/// [max(0, 1 - s), 1 + s] (hue: a shift uniform in [-h, h]), applied in a random order
/// (`randperm(4)`).
fn color_jitter(img: &mut Planes, strength: [f64; 4], rng: &mut SplitMix64, s: &mut Scratch) {
    let mut order = [0usize, 1, 2, 3];
    for i in (1..4).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let factor = |v: f64, rng: &mut SplitMix64| (v > 0.0).then(|| rng.range((1.0 - v).max(0.0), 1.0 + v));
    let (b, c, sat) = (factor(strength[0], rng), factor(strength[1], rng), factor(strength[2], rng));
    let hue = (strength[3] > 0.0).then(|| rng.range(-strength[3], strength[3]));
    for k in order {
        match k {
            0 => b.map(|f| ops::brightness(img, f)),
            1 => c.map(|f| ops::contrast(img, f, s)),
            2 => sat.map(|f| ops::color(img, f, s)),
            _ => hue.map(|f| ops::hue(img, f)),
        };
    }
}

/// Parses `color_jitter`: one strength for brightness, contrast and saturation, or three, or four
/// (with hue, at most 0.5), as timm and torchvision take them.
pub fn parse_jitter(v: &[f64]) -> Result<Option<[f64; 4]>> {
    let j = match *v {
        [] => return Ok(None),
        [s] => [s, s, s, 0.0],
        [b, c, s] => [b, c, s, 0.0],
        [b, c, s, h] => [b, c, s, h],
        _ => {
            return Err(Error::Usage(format!(
                "--color-jitter {v:?}: give one strength, three (brightness, contrast, saturation) or four (and hue)"
            )))
        }
    };
    if j[..3].iter().any(|x| !(0.0..=10.0).contains(x)) || !(0.0..=0.5).contains(&j[3]) {
        return Err(Error::Usage(format!(
            "--color-jitter {v:?}: strengths must be in [0, 10], hue in [0, 0.5]"
        )));
    }
    Ok(j.iter().any(|&x| x > 0.0).then_some(j))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog is what the parser accepts and what `--aa`'s help documents: every family's
    /// example parses, each of its names selects it, and the flag's doc names every name.
    #[test]
    fn every_policy_family_parses_its_example_and_is_documented() {
        let config = include_str!("../train/config/mod.rs");
        let lines: Vec<&str> = config.lines().map(str::trim).collect();
        let key = lines.iter().position(|l| *l == "pub aa: Option<String>,").expect("the aa key");
        let doc: String = lines[..key]
            .iter()
            .rev()
            .take_while(|l| l.starts_with("///") || l.starts_with("#["))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        for p in &POLICIES {
            assert!(Policy::parse(p.example).unwrap().is_some(), "{}", p.example);
            for name in p.names {
                assert!(doc.contains(name), "the aa doc does not name {name}:\n{doc}");
                if p.sections.is_empty() {
                    assert!(Policy::parse(name).unwrap().is_some(), "{name}");
                }
            }
            let err = Policy::parse(&format!("{}-zz1", p.names[0])).unwrap_err().to_string();
            assert!(err.contains(p.example), "{err}");
        }
    }

    #[test]
    fn parses_timm_and_torchvision_names() {
        assert_eq!(Policy::parse("").unwrap(), None);
        assert_eq!(Policy::parse("none").unwrap(), None);
        assert_eq!(
            Policy::parse("rand-m9-mstd0.5-inc1").unwrap(),
            Some(Policy::TimmRand {
                magnitude: 9.0,
                num_layers: 2,
                mstd: 0.5,
                mmax: 10.0,
                prob: 0.5,
                increasing: true
            })
        );
        assert_eq!(
            Policy::parse("rand-m6-n3-mstd101").unwrap(),
            Some(Policy::TimmRand {
                magnitude: 6.0,
                num_layers: 3,
                mstd: f64::INFINITY,
                mmax: 10.0,
                prob: 0.5,
                increasing: false
            })
        );
        assert_eq!(
            Policy::parse("randaugment").unwrap(),
            Some(Policy::RandAugment { num_ops: 2, magnitude: 9, bins: 31 })
        );
        assert_eq!(Policy::parse("ta_wide").unwrap(), Some(Policy::TrivialAugmentWide { bins: 31 }));
        assert_eq!(
            Policy::parse("original-mstd0.5").unwrap(),
            Some(Policy::TimmAuto { policy: TimmAutoPolicy::Original, mstd: 0.5 })
        );
        assert_eq!(
            Policy::parse("augmix-m3-w3").unwrap(),
            Some(Policy::AugMix { magnitude: 3.0, width: 3, depth: -1, alpha: 1.0, mstd: f64::INFINITY })
        );
        assert_eq!(
            Policy::parse("augmix-m5-w4-d2-a0.5-mstd0.5-b0").unwrap(),
            Some(Policy::AugMix { magnitude: 5.0, width: 4, depth: 2, alpha: 0.5, mstd: 0.5 })
        );
        for bad in [
            "rand-q3",
            "randaugment-m40",
            "augmix-m5-b1",
            "augmix-x2",
            "augmix-w0",
            "rand-mx",
            "rand-tweights",
        ] {
            let e = Policy::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--aa") && e.contains(bad), "{e}");
        }
        assert!(parse_jitter(&[0.4, 0.4, 0.4, 0.6]).is_err());
        assert!(parse_jitter(&[0.4, 0.4]).is_err());
        assert_eq!(parse_jitter(&[0.4, 0.4, 0.4, 0.1]).unwrap(), Some([0.4, 0.4, 0.4, 0.1]));
        assert_eq!(parse_jitter(&[0.4]).unwrap(), Some([0.4, 0.4, 0.4, 0.0]));
        assert_eq!(parse_jitter(&[0.0]).unwrap(), None);
    }

    #[test]
    fn timm_translate_levels_follow_the_hparams_translate_pct() {
        // timm's _translate_rel_level_to_arg: (level / 10) x translate_pct, randomly negated;
        // 0.45 by default, 0.3 for AugMix (its transform factory sets it).
        let mut rng = SplitMix64::new(3);
        for (pct, level, want) in [
            (TIMM_TRANSLATE_PCT, 10.0, 0.45),
            (AUGMIX_TRANSLATE_PCT, 10.0, 0.3),
            (AUGMIX_TRANSLATE_PCT, 5.0, 0.15),
        ] {
            for op in [TimmOp::TranslateXRel, TimmOp::TranslateYRel] {
                let v = timm_level(op, level, pct, &mut rng).unwrap();
                assert!((v.abs() - want).abs() < 1e-12, "{op:?} at {level}: {v}");
            }
        }
        assert_eq!(timm_level(TimmOp::ShearX, 10.0, AUGMIX_TRANSLATE_PCT, &mut rng).map(f64::abs), Some(0.3));
    }

    #[test]
    fn torchvision_magnitude_tables() {
        let t = TvTables::new(Space::Standard, 31, 224, 224);
        let (m, signed) = t.get(TvOp::Rotate);
        assert!(signed && (m[9] - 9.0).abs() < 1e-6);
        // 8 - round(arange(31) / 7.5): bin 9 -> 8 - 1 = 7, bin 30 -> 4.
        assert_eq!((t.get(TvOp::Posterize).0[9], t.get(TvOp::Posterize).0[30]), (7.0, 4.0));
        let (tx, _) = t.get(TvOp::TranslateX);
        assert!((tx[30] - 150.0 / 331.0 * 224.0).abs() < 1e-4);
        let w = TvTables::new(Space::Wide, 31, 224, 224);
        assert_eq!(w.get(TvOp::Rotate).0[20], 90.0);
        assert_eq!(w.get(TvOp::Posterize).0[30], 2.0);
        let a = TvTables::new(Space::Standard, 10, 224, 224);
        assert_eq!(a.get(TvOp::Posterize).0[8], 4.0); // 8 - round(8 / 2.25)
    }
}
