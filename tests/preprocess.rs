//! Eval preprocessing against torchvision (Resize(256) + CenterCrop(224) on PIL images) on real
//! ImageNet files from ../shared; the golden keeps only patches and channel means of each crop.

mod common;

use resnet_train::data::resize::{self, Axis, Filter};
use resnet_train::data::transform::{self, TrainFilter};
use resnet_train::rng::SplitMix64;
use tch::{Kind, Tensor};

#[test]
fn resize_and_crop_arithmetic_is_torchvisions() {
    assert_eq!(transform::resize_shorter_side(375, 500, 256), (256, 341));
    assert_eq!(transform::resize_shorter_side(500, 375, 256), (341, 256));
    assert_eq!(transform::resize_shorter_side(56, 75, 256), (256, 342));
    assert_eq!(transform::center_crop_offset(341, 224), 58); // 58.5 rounds to even
    assert_eq!(transform::center_crop_offset(343, 224), 60); // 59.5 rounds to even
    assert_eq!(transform::center_crop_offset(256, 224), 16);
}

#[test]
fn eval_transform_matches_torchvision_on_real_images() {
    let Some(shared) = common::shared("eval_transform_matches_torchvision_on_real_images") else { return };
    let g = common::golden("preprocess.safetensors");
    let mut checked = 0;
    for key in g.keys().filter(|k| k.starts_with("eval224.") && k.ends_with(".patches")) {
        let name = key.trim_start_matches("eval224.").trim_end_matches(".patches");
        let path = shared.join("data/imagenet-samples").join(name);
        let ours =
            transform::load_tensor(&path, &transform::Transform::eval(224, 0.875), &mut SplitMix64::new(0))
                .unwrap();
        assert_eq!(ours.size(), vec![3, 224, 224]);
        let (mad, mean_err) = patch_errors(&ours, &g, key.trim_end_matches(".patches"));
        assert!(mad <= 1.0, "{name}: mean absolute pixel difference {mad} > 1");
        assert!(mean_err <= 1.0, "{name}: channel means differ by {mean_err}");
        eprintln!("{name}: patch MAD {mad:.3}, channel-mean error {mean_err:.3}");
        checked += 1;
    }
    assert!(checked >= 9);
}

#[test]
fn train_crops_match_torchvision_resized_crop_on_real_images() {
    let Some(shared) = common::shared("train_crops_match_torchvision_resized_crop_on_real_images") else {
        return;
    };
    let g = common::golden("preprocess.safetensors");
    let mut checked = 0;
    for key in g.keys().filter(|k| k.starts_with("train224.") && k.ends_with(".patches")) {
        // train224.<file>.<top>.<left>.<h>.<w>.<flip>.patches
        let parts: Vec<&str> =
            key.trim_start_matches("train224.").trim_end_matches(".patches").rsplitn(6, '.').collect();
        let n = |i: usize| parts[i].parse::<usize>().unwrap();
        let (flip, w, h, left, top, name) = (n(0) == 1, n(1), n(2), n(3), n(4), parts[5]);
        let t = transform::Transform::Crop {
            top,
            left,
            height: h,
            width: w,
            size: 224,
            flip,
            filter: Filter::Bilinear,
        };
        let ours = transform::load_tensor(
            &shared.join("data/imagenet-samples").join(name),
            &t,
            &mut SplitMix64::new(0),
        )
        .unwrap();
        let (mad, mean_err) = patch_errors(&ours, &g, key.trim_end_matches(".patches"));
        eprintln!("{key}: patch MAD {mad:.3}, channel-mean error {mean_err:.3}");
        assert!(mad <= 1.0 && mean_err <= 1.0, "{key}: MAD {mad}, mean error {mean_err}");
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn random_resized_crop_follows_torchvision_distribution() {
    let mut rng = SplitMix64::new(7);
    let (mut areas, mut logs) = (Vec::new(), Vec::new());
    for _ in 0..4000 {
        let (top, left, h, w) =
            transform::random_resized_crop(375, 500, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert!(top + h <= 375 && left + w <= 500 && h > 0 && w > 0);
        areas.push((h * w) as f64 / (375.0 * 500.0));
        logs.push((w as f64 / h as f64).ln());
    }
    assert!(areas.iter().all(|&a| (0.075..=1.0).contains(&a)));
    let mean_area = areas.iter().sum::<f64>() / areas.len() as f64;
    // Accepted draws favour smaller areas (large ones fail the fit more often): mean below 0.54.
    assert!((0.40..0.54).contains(&mean_area), "mean area {mean_area}");
    assert!(logs.iter().all(|&l| l.abs() <= (4.0f64 / 3.0).ln() + 0.05));
    // Fallback for an extreme aspect ratio: the central crop at the nearest allowed ratio.
    let mut rng = SplitMix64::new(1);
    let (top, left, h, w) = transform::random_resized_crop(10, 1000, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
    assert_eq!((top, h, w, left), (0, 10, 13, 493)); // w = round(10 * 4/3) = 13, left = (1000 - 13) // 2
}

#[test]
fn formats_decode_like_pil() {
    // CMYK JPEG, grayscale JPEG, a PNG named .JPEG, and EXIF orientation (ignored, as PIL does).
    let g = common::golden("fixtures_decoded.safetensors");
    for name in ["cmyk.jpg", "gray.jpg", "png_inside.JPEG", "exif_rotated.jpg"] {
        let path = common::repo().join("tests/fixtures").join(name);
        let img = resnet_train::data::decode::decode_file(&path).unwrap();
        let ours = Tensor::from_slice(&img.pixels).view([img.height as i64, img.width as i64, 3]);
        assert_eq!(ours.size(), g[name].size(), "{name}");
        let mad = (ours.to_kind(Kind::Double) - g[name].to_kind(Kind::Double))
            .abs()
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(mad <= 1.0, "{name}: MAD {mad}");
        // And through the full pipeline (libjpeg-turbo, or the fallback for CMYK / PNG).
        let t = transform::Transform::eval(32, 0.875);
        let x = transform::load_tensor(&path, &t, &mut SplitMix64::new(0)).unwrap();
        assert_eq!(x.size(), vec![3, 32, 32]);
    }
}

/// One synthetic case of resize_filters.safetensors through the resampler, with Pillow's pass
/// order (horizontal first) and with ours for downscales (vertical first).
fn resample_synthetic(input: &Tensor, h: &Axis, v: &Axis, vertical_first: bool) -> Tensor {
    let cols = input.size()[1] as usize;
    let pixels: Vec<u8> = Vec::try_from(&input.flatten(0, -1)).unwrap();
    let src = resize::Source { pixels: &pixels, stride: cols * 3, x0: 0, y0: 0 };
    let mut dst = vec![0u8; 3 * h.len() * v.len()];
    resize::resample(&src, h, v, false, vertical_first, &mut Vec::new(), &mut dst);
    Tensor::from_slice(&dst).view([3, v.len() as i64, h.len() as i64])
}

#[test]
fn bilinear_and_bicubic_resampling_equal_pillows_bit_for_bit() {
    let g = common::golden("resize_filters.safetensors");
    let input = &g["synthetic.input"];
    let (rows, cols) = (input.size()[0] as usize, input.size()[1] as usize);
    let mut checked = 0;
    for (key, want) in g.iter().filter(|(k, _)| k.starts_with("synthetic.") && *k != "synthetic.input") {
        let parts: Vec<&str> = key.split('.').collect();
        let filter = match parts[1] {
            "bilinear" => Filter::Bilinear,
            "bicubic" => Filter::Bicubic,
            f => panic!("{key}: filter {f}"),
        };
        let n = |i: usize| parts[i].parse::<usize>().unwrap();
        let (h, v) = match parts[2] {
            // synthetic.<filter>.crop.<left>.<top>.<right>.<bottom>.<w>.<h>: the crop resized alone
            "crop" => {
                let (l, t, r, b, w, hh) = (n(3), n(4), n(5), n(6), n(7), n(8));
                (
                    Axis::new(filter, l, r, l as f64, r as f64, w, 0..w),
                    Axis::new(filter, t, b, t as f64, b as f64, hh, 0..hh),
                )
            }
            // synthetic.<filter>.resize.<w>.<h>.<cw>.<ch>: resized whole, then center-cropped
            "resize" => {
                let (w, hh, cw, ch) = (n(3), n(4), n(5), n(6));
                let (left, top) =
                    (transform::center_crop_offset(w, cw), transform::center_crop_offset(hh, ch));
                (
                    Axis::new(filter, 0, cols, 0.0, cols as f64, w, left..left + cw),
                    Axis::new(filter, 0, rows, 0.0, rows as f64, hh, top..top + ch),
                )
            }
            k => panic!("{key}: kind {k}"),
        };
        // The loader resamples vertically first when that pass shrinks the rows it reads.
        let (lo, hi) = v.source_range();
        let downscale = hi - lo > v.len();
        let ours = resample_synthetic(input, &h, &v, false);
        assert_eq!(ours.size(), want.size(), "{key}");
        let diff = (ours.to_kind(Kind::Int) - want.to_kind(Kind::Int)).abs().max().int64_value(&[]);
        assert_eq!(diff, 0, "{key}: differs from Pillow by up to {diff}");
        if downscale {
            // Vertical first (what the loader does when it shrinks rows) rounds the intermediate
            // image elsewhere: within 1 of Pillow for bilinear, 2 for the cubic's sharper lobes.
            let vf = resample_synthetic(input, &h, &v, true);
            let d = (vf.to_kind(Kind::Int) - want.to_kind(Kind::Int)).abs().max().int64_value(&[]);
            let mad = (vf.to_kind(Kind::Double) - want.to_kind(Kind::Double))
                .abs()
                .mean(Kind::Double)
                .double_value(&[]);
            // Bilinear weights are positive: within 1. The cubic's overshoot is clipped to 0..255
            // in the intermediate image, which differs between the orders; on this noise (the
            // worst case) up to 9 at a pixel, 0.2-0.3 on average.
            if filter == Filter::Bilinear {
                assert!(d <= 1, "{key}: vertical-first differs from Pillow by {d}");
            } else {
                assert!(mad <= 0.35, "{key}: vertical-first differs from Pillow by {mad} on average");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 18);
}

/// Patches and channel means of `ours` against a golden entry (`<key>.patches`, `<key>.mean`):
/// mean absolute difference and the largest channel-mean difference.
fn patch_errors(ours: &Tensor, g: &std::collections::BTreeMap<String, Tensor>, key: &str) -> (f64, f64) {
    let spots: Vec<i64> = Vec::try_from(&g["patch_spots"].flatten(0, -1)).unwrap();
    let patches = Tensor::stack(
        &spots.chunks(2).map(|rc| ours.narrow(1, rc[0], 16).narrow(2, rc[1], 16)).collect::<Vec<_>>(),
        0,
    );
    let mad = (patches.to_kind(Kind::Double) - g[&format!("{key}.patches")].to_kind(Kind::Double))
        .abs()
        .mean(Kind::Double)
        .double_value(&[]);
    let mean = ours.to_kind(Kind::Double).mean_dim([1, 2].as_slice(), false, None);
    let mean_err = (mean - &g[&format!("{key}.mean")]).abs().max().double_value(&[]);
    (mad, mean_err)
}

#[test]
fn bicubic_eval_and_train_crops_match_timm_and_torchvision_on_real_images() {
    let Some(shared) =
        common::shared("bicubic_eval_and_train_crops_match_timm_and_torchvision_on_real_images")
    else {
        return;
    };
    let g = common::golden("resize_filters.safetensors");
    // timm's eval transform for ResNet Strikes Back: crop_pct 0.95 -> Resize(235, bicubic).
    let eval = transform::Transform::eval(224, 0.95).with_filter(Filter::Bicubic);
    assert!(matches!(eval, transform::Transform::Eval { resize: 235, .. }));
    let mut checked = 0;
    for key in g.keys().filter(|k| k.ends_with(".patches") && !k.starts_with("synthetic")) {
        let key = key.trim_end_matches(".patches");
        let parts: Vec<&str> = key.splitn(3, '.').collect();
        let (kind, rest) = (parts[0], parts[2]);
        let (name, t) = if kind == "eval" {
            (rest, eval)
        } else {
            // train.bicubic.<file>.<top>.<left>.<h>.<w>
            let p: Vec<&str> = rest.rsplitn(5, '.').collect();
            let n = |i: usize| p[i].parse::<usize>().unwrap();
            let (w, h, left, top) = (n(0), n(1), n(2), n(3));
            let crop = transform::Transform::Crop {
                top,
                left,
                height: h,
                width: w,
                size: 224,
                flip: false,
                filter: Filter::Bicubic,
            };
            (p[4], crop)
        };
        let ours = transform::load_tensor(
            &shared.join("data/imagenet-samples").join(name),
            &t,
            &mut SplitMix64::new(0),
        )
        .unwrap();
        let (mad, mean_err) = patch_errors(&ours, &g, key);
        eprintln!("{key}: patch MAD {mad:.3}, channel-mean error {mean_err:.3}");
        assert!(mad <= 1.0 && mean_err <= 1.0, "{key}: MAD {mad}, mean error {mean_err}");
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn random_train_filter_picks_bilinear_or_bicubic_per_image() {
    // A PNG: decoded whole, so the two filters' outputs differ only by the filter.
    let path = common::repo().join("tests/fixtures/png_inside.JPEG");
    let train = |filter| transform::Transform::train(24).with_train_filter(filter);
    let (mut bilinear, mut bicubic) = (0, 0);
    for seed in 0..40 {
        let load =
            |filter| transform::load_tensor(&path, &train(filter), &mut SplitMix64::new(seed)).unwrap();
        let (random, lin, cub) =
            (load(TrainFilter::Random), load(TrainFilter::Bilinear), load(TrainFilter::Bicubic));
        // Same crop and flip (drawn before the filter); the image is one filter's or the other's.
        if random.equal(&lin) {
            bilinear += 1;
        } else {
            assert!(random.equal(&cub), "seed {seed}: neither filter's output");
            bicubic += 1;
        }
        assert!(!lin.equal(&cub), "seed {seed}: the filters should differ on this image");
    }
    assert!(bilinear >= 10 && bicubic >= 10, "{bilinear} bilinear, {bicubic} bicubic of 40");
}

#[test]
fn eval_resize_is_timms_floor() {
    assert_eq!(transform::eval_resize(224, 0.875), 256);
    assert_eq!(transform::eval_resize(224, 0.95), 235); // timm: math.floor(224 / 0.95)
    assert_eq!(transform::eval_resize(224, 224.0 / 232.0), 232); // torchvision v2's 232
    assert_eq!(transform::eval_resize(32, 0.875), 36);
    assert_eq!(transform::eval_resize(224, 1.0), 224);
}

/// timm's `vflip`: RandomVerticalFlip after the crop and the horizontal flip. With the same
/// generator the crop is the same, so each image is the unflipped one or exactly its rows
/// reversed; through libjpeg-turbo (gray.jpg) and the fallback decoder (a PNG).
#[test]
fn vertical_flip_reverses_the_rows_of_the_same_crop() {
    for name in ["gray.jpg", "png_inside.JPEG", "cmyk.jpg"] {
        let path = common::repo().join("tests/fixtures").join(name);
        let with = |vflip| match transform::Transform::train(24).with_train_filter(TrainFilter::Bilinear) {
            transform::Transform::Train { size, scale, ratio, hflip, filter, .. } => {
                transform::Transform::Train { size, scale, ratio, hflip, vflip, filter }
            }
            _ => unreachable!(),
        };
        let (mut flipped, mut kept) = (0, 0);
        for seed in 0..30 {
            let load =
                |vflip| transform::load_tensor(&path, &with(vflip), &mut SplitMix64::new(seed)).unwrap();
            let (plain, always, half) = (load(0.0), load(1.0), load(0.5));
            assert!(always.equal(&plain.flip([1])), "{name} seed {seed}: vflip 1 is not the rows reversed");
            assert!(!always.equal(&plain), "{name} seed {seed}: this image is not symmetric");
            if half.equal(&always) {
                flipped += 1;
            } else {
                assert!(half.equal(&plain), "{name} seed {seed}: vflip 0.5 is neither");
                kept += 1;
            }
        }
        assert!(flipped >= 7 && kept >= 7, "{name}: {flipped} flipped, {kept} kept of 30");
    }
}
