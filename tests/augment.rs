//! Augmentation ops against torchvision's `_apply_op` and timm's op functions on PIL images
//! (tests/golden/make_augment_golden.py: Pillow 13, torchvision 0.26, timm 1.0.31), on crops of
//! real ImageNet files and a synthetic non-square pattern; and the policies' determinism.

mod common;

use resnet_train::data::augment::{self, Augment, Policy, Scratch, TimmOp, TvOp};
use resnet_train::data::augment_ops::{Interp, Planes};
use resnet_train::data::transform::{self, Transform};
use resnet_train::rng::SplitMix64;
use std::collections::BTreeMap;

/// The generator make_augment_golden.py's `synthetic()` mirrors: 31 wide, 29 high.
fn synthetic() -> (Vec<u8>, usize, usize) {
    let (h, w) = (29, 31);
    let mut px = vec![0u8; 3 * h * w];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                px[c * h * w + y * w + x] = ((7 * x + 13 * y + 29 * c + (x * y) % 17) % 256) as u8;
            }
        }
    }
    (px, h, w)
}

fn tv_op(name: &str) -> TvOp {
    match name {
        "ShearX" => TvOp::ShearX,
        "ShearY" => TvOp::ShearY,
        "TranslateX" => TvOp::TranslateX,
        "TranslateY" => TvOp::TranslateY,
        "Rotate" => TvOp::Rotate,
        "Brightness" => TvOp::Brightness,
        "Color" => TvOp::Color,
        "Contrast" => TvOp::Contrast,
        "Sharpness" => TvOp::Sharpness,
        "Posterize" => TvOp::Posterize,
        "Solarize" => TvOp::Solarize,
        "AutoContrast" => TvOp::AutoContrast,
        "Equalize" => TvOp::Equalize,
        "Invert" => TvOp::Invert,
        _ => panic!("unknown torchvision op {name}"),
    }
}

fn timm_op(name: &str) -> TimmOp {
    match name {
        "ShearX" => TimmOp::ShearX,
        "ShearY" => TimmOp::ShearY,
        "TranslateXRel" => TimmOp::TranslateXRel,
        "TranslateYRel" => TimmOp::TranslateYRel,
        "Rotate" => TimmOp::Rotate,
        "SolarizeAdd" => TimmOp::SolarizeAdd,
        "Posterize" => TimmOp::Posterize,
        "Color" => TimmOp::Color,
        "Contrast" => TimmOp::Contrast,
        "Brightness" => TimmOp::Brightness,
        "Sharpness" => TimmOp::Sharpness,
        "Solarize" => TimmOp::Solarize,
        "AutoContrast" => TimmOp::AutoContrast,
        "Equalize" => TimmOp::Equalize,
        _ => panic!("unknown timm op {name}"),
    }
}

/// The golden inputs: the synthetic pattern, and the real crops when ../shared is present.
fn inputs(g: &BTreeMap<String, tch::Tensor>) -> BTreeMap<String, (Vec<u8>, usize, usize)> {
    let mut out = BTreeMap::new();
    out.insert("synthetic".to_string(), synthetic());
    let Some(shared) = common::shared("augment ops on real ImageNet crops") else { return out };
    for key in g.keys().filter(|k| k.starts_with("input|")) {
        let f: Vec<&str> = key.split('|').collect();
        let (name, file) = (f[1], f[2]);
        let (left, top, size): (usize, usize, usize) =
            (f[3].parse().unwrap(), f[4].parse().unwrap(), f[5].parse().unwrap());
        // A crop resized to its own size is the crop itself (the resampler's weights are 1 and 0).
        let t = Transform::Crop {
            top,
            left,
            height: size,
            width: size,
            size,
            flip: false,
            filter: resnet_train::data::resize::Filter::Bilinear,
        };
        let x = transform::load_tensor(
            &shared.join("data/imagenet-samples").join(file),
            &t,
            &mut SplitMix64::new(0),
        )
        .unwrap();
        out.insert(name.to_string(), (Vec::<u8>::try_from(&x.flatten(0, -1)).unwrap(), size, size));
    }
    out
}

#[test]
fn ops_match_torchvision_and_timm_on_pil_images() {
    let g = common::golden("augment.safetensors");
    let inputs = inputs(&g);
    let mut scratch = Scratch::default();
    let (mut checked, mut failures) = (0, Vec::new());
    for (key, want) in g.iter().filter(|(k, _)| !k.starts_with("input|")) {
        let f: Vec<&str> = key.split('|').collect();
        if f[0] == "tvb" {
            continue; // the blur: gaussian_blur_matches_torchvision_within_float32_rounding
        }
        let Some((px, h, w)) = inputs.get(f[3]) else { continue };
        let mut px = px.clone();
        let mut img = Planes { px: &mut px, h: *h, w: *w };
        let arg: f64 = f[2].parse().unwrap();
        if f[0] == "tvg" {
            resnet_train::data::augment_ops::grayscale(&mut img, &mut scratch); // rgb_to_grayscale(img, 3)
        } else if f[0] == "tvf" {
            resnet_train::data::augment_ops::hue(&mut img, arg); // torchvision.transforms.functional.adjust_hue
        } else if f[0] == "tv" {
            augment::tv_apply(&mut img, tv_op(f[1]), arg, Interp::Nearest, [0; 3], &mut scratch);
        } else {
            let interp = match f[4] {
                "bilinear" => Interp::Bilinear,
                "bicubic" => Interp::Bicubic,
                _ => Interp::Nearest,
            };
            augment::timm_apply(&mut img, timm_op(f[1]), Some(arg), interp, augment::TIMM_FILL, &mut scratch);
        }
        let want = Vec::<u8>::try_from(&want.flatten(0, -1)).unwrap();
        assert_eq!(want.len(), px.len(), "{key}");
        let diffs: Vec<i32> =
            px.iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).filter(|&d| d > 0).collect();
        if !diffs.is_empty() {
            failures.push(format!(
                "{key}: {} of {} values differ, max {}",
                diffs.len(),
                px.len(),
                diffs.iter().max().unwrap()
            ));
        }
        checked += 1;
    }
    eprintln!("{checked} op outputs compared");
    assert!(failures.is_empty(), "not bit-identical to Pillow:\n{}", failures.join("\n"));
    assert!(checked >= 48, "only {checked} cases ran");
}

/// timm's `gaussian_blur_prob` op, torchvision's `gaussian_blur(img, 23, sigma)` on PIL images:
/// torchvision convolves once with the 23x23 outer-product kernel, ours runs two 1-D passes, so
/// a value within float32 rounding of a .5 tie may round the other way: at most one level, rarely.
#[test]
fn gaussian_blur_matches_torchvision_within_float32_rounding() {
    let g = common::golden("augment.safetensors");
    let inputs = inputs(&g);
    let mut scratch = Scratch::default();
    let (mut checked, mut values, mut off_by_one) = (0, 0, 0);
    for (key, want) in g.iter().filter(|(k, _)| k.starts_with("tvb|")) {
        let f: Vec<&str> = key.split('|').collect();
        let Some((px, h, w)) = inputs.get(f[3]) else { continue };
        let mut px = px.clone();
        let sigma: f32 = f[2].parse().unwrap();
        let mut img = Planes { px: &mut px, h: *h, w: *w };
        resnet_train::data::augment_ops::gaussian_blur(
            &mut img,
            augment::GAUSSIAN_BLUR_KERNEL,
            sigma,
            &mut scratch,
        );
        let want = Vec::<u8>::try_from(&want.flatten(0, -1)).unwrap();
        assert_eq!(want.len(), px.len(), "{key}");
        for (&a, &b) in px.iter().zip(&want) {
            let d = (a as i32 - b as i32).abs();
            assert!(d <= 1, "{key}: {a} vs torchvision's {b}");
            off_by_one += d as usize;
        }
        values += px.len();
        checked += 1;
    }
    eprintln!("{checked} blurs compared: {off_by_one} of {values} values one level off");
    assert!(checked >= 4, "only {checked} cases ran");
    assert!(off_by_one * 1000 <= values, "{off_by_one} of {values} values off: more than rounding");
}

/// Every policy is a pure function of the sample's generator: same draws, same pixels.
#[test]
fn policies_are_deterministic_per_sample_and_change_the_image() {
    let (px0, h, w) = synthetic();
    for aa in [
        "randaugment",
        "trivialaugment",
        "autoaugment",
        "rand-m9-mstd0.5-inc1",
        "rand-m7-n3-mstd101",
        "v0",
        "original",
        "augmix-m3-w3",
        "augmix-m5-w4-d2-a0.5-mstd0.5",
    ] {
        let aug = Augment::new(Policy::parse(aa).unwrap(), Some([0.4, 0.4, 0.4, 0.1]), 31);
        let mut changed = 0;
        for sample in 0..40u64 {
            let run = || {
                let mut px = px0.clone();
                let mut rng = SplitMix64::keyed(&[1, 2, sample]);
                aug.apply(&mut Planes { px: &mut px, h, w }, &mut rng, &mut Scratch::default());
                px
            };
            let (a, b) = (run(), run());
            assert_eq!(a, b, "{aa}: sample {sample} differs between two runs");
            changed += (a != px0) as usize;
        }
        assert!(changed >= 30, "{aa}: only {changed} of 40 samples changed");
    }
}

/// An op of a golden chain: [name, argument, filter].
type GoldenOp = (String, Option<f64>, Option<String>);
/// The same, resolved.
type ChainOp = (TimmOp, Option<f64>, Interp);

/// timm's AugMixAugment._apply_basic with fixed chains (make_augment_golden.py's augmix cases):
/// the float32 mix, its clip and truncation and the final blend, bit for bit.
#[test]
fn augmix_mixes_chains_as_timm() {
    let file =
        resnet_train::model::weights::read(&common::repo().join("tests/golden/augmix.safetensors")).unwrap();
    let chains: BTreeMap<String, Vec<Vec<GoldenOp>>> =
        serde_json::from_str(&file.metadata["chains"]).unwrap();
    let inputs = inputs(&common::golden("augment.safetensors"));
    let (mut checked, mut failures) = (0, Vec::new());
    for (case, spec) in &chains {
        let g = &file.tensors;
        let weights = Vec::<f32>::try_from(&g[&format!("augmix|{case}|weights")]).unwrap();
        let m = g[&format!("augmix|{case}|m")].double_value(&[]) as f32;
        let chain_ops: Vec<(f32, Vec<ChainOp>)> = weights
            .iter()
            .zip(spec)
            .map(|(&w, ops)| {
                let ops = ops
                    .iter()
                    .map(|(name, arg, filter)| {
                        let interp = match filter.as_deref() {
                            Some("bilinear") => Interp::Bilinear,
                            Some("bicubic") => Interp::Bicubic,
                            _ => Interp::Nearest,
                        };
                        (timm_op(name), *arg, interp)
                    })
                    .collect();
                (w, ops)
            })
            .collect();
        for (name, (px, h, w)) in &inputs {
            let mut px = px.clone();
            let before = px.clone();
            let mut img = Planes { px: &mut px, h: *h, w: *w };
            augment::augmix(&mut img, &chain_ops, m, &mut Scratch::default(), |img, (op, arg, interp), s| {
                augment::timm_apply(img, op, arg, interp, augment::TIMM_FILL, s)
            });
            let want = Vec::<u8>::try_from(&g[&format!("augmix|{case}|{name}")].flatten(0, -1)).unwrap();
            assert_ne!(want, before, "{case}|{name}: the golden output is the input");
            let differ = px.iter().zip(&want).filter(|(a, b)| a != b).count();
            if differ > 0 {
                failures.push(format!("{case}|{name}: {differ} of {} values differ", px.len()));
            }
            checked += 1;
        }
    }
    eprintln!("{checked} AugMix outputs compared");
    assert!(failures.is_empty(), "not bit-identical to timm's AugMix:\n{}", failures.join("\n"));
    assert!(checked >= 4, "only {checked} cases ran");
}

/// timm's SimCLR-style options apply at their probabilities (RandomApply / RandomGrayscale), in
/// timm's order: jitter (with `color_jitter_prob`), grayscale, blur.
#[test]
fn jitter_grayscale_and_blur_apply_at_their_probabilities() {
    let (px0, h, w) = synthetic();
    let plane = h * w;
    let n = 2000u64;
    // Returns the fraction of samples for which `changed(before, after)` holds.
    let rate = |a: &Augment, changed: &dyn Fn(&[u8]) -> bool| {
        let mut s = Scratch::default();
        let hits = (0..n)
            .filter(|&i| {
                let mut px = px0.clone();
                a.apply(&mut Planes { px: &mut px, h, w }, &mut SplitMix64::new(i), &mut s);
                changed(&px)
            })
            .count();
        hits as f64 / n as f64
    };
    let grey = |px: &[u8]| px[..plane] == px[plane..2 * plane] && px[..plane] == px[2 * plane..];
    let differs = |px: &[u8]| px != &px0[..];
    let within = |r: f64, p: f64, what: &str| {
        // 4.5 standard deviations of a binomial proportion over n draws.
        let tol = 4.5 * (p * (1.0 - p) / n as f64).sqrt();
        assert!((r - p).abs() <= tol, "{what}: rate {r}, expected {p} +- {tol}");
    };
    let jitter = Some([0.4, 0.4, 0.4, 0.0]);
    within(
        rate(&Augment::new(None, jitter, 29).with_probabilities(Some(0.3), 0.0, 0.0), &differs),
        0.3,
        "jitter",
    );
    within(rate(&Augment::new(None, jitter, 29), &differs), 1.0, "jitter, no probability");
    within(rate(&Augment::new(None, None, 29).with_probabilities(None, 0.2, 0.0), &grey), 0.2, "grayscale");
    // A blur with sigma near 0.1 leaves this image unchanged: among the samples that the blur
    // always applied changes, the ones with p = 0.4 must equal it (same draws) at that rate.
    let (always, sometimes) = (
        Augment::new(None, None, 29).with_probabilities(None, 0.0, 1.0),
        Augment::new(None, None, 29).with_probabilities(None, 0.0, 0.4),
    );
    let out = |a: &Augment, i: u64| {
        let mut px = px0.clone();
        a.apply(&mut Planes { px: &mut px, h, w }, &mut SplitMix64::new(i), &mut Scratch::default());
        px
    };
    let (mut visible, mut applied) = (0usize, 0usize);
    for i in 0..n {
        let blurred = out(&always, i);
        if blurred != px0 {
            visible += 1;
            applied += usize::from(out(&sometimes, i) == blurred);
        }
    }
    assert!(visible > n as usize * 3 / 4, "the blur changes most samples ({visible} of {n})");
    let (r, p) = (applied as f64 / visible as f64, 0.4);
    let tol = 4.5 * (p * (1.0 - p) / visible as f64).sqrt();
    assert!((r - p).abs() <= tol, "blur: rate {r}, expected {p} +- {tol}");
    // Grayscale comes after the jitter and before the blur: with both, grey stays grey.
    let all = Augment::new(None, jitter, 29).with_probabilities(None, 1.0, 1.0);
    within(rate(&all, &grey), 1.0, "grey after everything");
    assert!(!Augment::new(None, None, 29).with_probabilities(None, 0.0, 0.1).is_identity());
    assert!(Augment::new(None, None, 29).with_probabilities(None, 0.0, 0.0).is_identity());
    let resized = all.resized(64);
    assert_eq!((resized.grayscale_prob, resized.blur_prob), (1.0, 1.0));
}

/// Not a test: the filtered warps' cost per 224 px image (timm's rotate, 200 calls, best of 5),
/// for BENCHMARKS.md. Run with
/// `cargo test --release --test augment bench_filtered_warps -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_filtered_warps() {
    use resnet_train::data::augment_ops;
    let (h, w) = (224usize, 224usize);
    let mut px: Vec<u8> = (0..3 * h * w).map(|i| ((i * 2654435761usize) >> 13) as u8).collect();
    let mut s = augment_ops::Scratch::default();
    for interp in [Interp::Bilinear, Interp::Bicubic] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for k in 0..200 {
                let img = &mut Planes { px: &mut px, h, w };
                augment_ops::rotate(img, 7.0 + k as f64 * 0.01, interp, [128; 3], &mut s);
            }
            best = best.min(t.elapsed().as_secs_f64() / 200.0 * 1e3);
        }
        println!("{interp:?}: {best:.3} ms per 224 px rotate");
    }
}
