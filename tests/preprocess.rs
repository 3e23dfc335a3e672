//! Eval preprocessing against torchvision (Resize(256) + CenterCrop(224) on PIL images) on real
//! ImageNet files from ../shared; the golden keeps only patches and channel means of each crop.

mod common;

use resnet_train::data::transform;
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
    let spots: Vec<i64> = Vec::try_from(&g["patch_spots"].flatten(0, -1)).unwrap();
    let mut checked = 0;
    for key in g.keys().filter(|k| k.starts_with("eval224.") && k.ends_with(".patches")) {
        let name = key.trim_start_matches("eval224.").trim_end_matches(".patches");
        let path = shared.join("data/imagenet-samples").join(name);
        let ours =
            transform::load_tensor(&path, &transform::Transform::eval(224, 0.875), &mut SplitMix64::new(0))
                .unwrap();
        assert_eq!(ours.size(), vec![3, 224, 224]);
        let patches = Tensor::stack(
            &spots.chunks(2).map(|rc| ours.narrow(1, rc[0], 16).narrow(2, rc[1], 16)).collect::<Vec<_>>(),
            0,
        );
        let diff = (patches.to_kind(Kind::Double) - g[key].to_kind(Kind::Double)).abs().mean(Kind::Double);
        let mad = diff.double_value(&[]);
        assert!(mad <= 1.0, "{name}: mean absolute pixel difference {mad} > 1");
        let mean = ours.to_kind(Kind::Double).mean_dim([1, 2].as_slice(), false, None);
        let mean_err = (mean - &g[&format!("eval224.{name}.mean")]).abs().max().double_value(&[]);
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
    let spots: Vec<i64> = Vec::try_from(&g["patch_spots"].flatten(0, -1)).unwrap();
    let mut checked = 0;
    for key in g.keys().filter(|k| k.starts_with("train224.") && k.ends_with(".patches")) {
        // train224.<file>.<top>.<left>.<h>.<w>.<flip>.patches
        let parts: Vec<&str> =
            key.trim_start_matches("train224.").trim_end_matches(".patches").rsplitn(6, '.').collect();
        let n = |i: usize| parts[i].parse::<usize>().unwrap();
        let (flip, w, h, left, top, name) = (n(0) == 1, n(1), n(2), n(3), n(4), parts[5]);
        let t = transform::Transform::Crop { top, left, height: h, width: w, size: 224, flip };
        let ours = transform::load_tensor(
            &shared.join("data/imagenet-samples").join(name),
            &t,
            &mut SplitMix64::new(0),
        )
        .unwrap();
        let patches = Tensor::stack(
            &spots.chunks(2).map(|rc| ours.narrow(1, rc[0], 16).narrow(2, rc[1], 16)).collect::<Vec<_>>(),
            0,
        );
        let mad = (patches.to_kind(Kind::Double) - g[key].to_kind(Kind::Double))
            .abs()
            .mean(Kind::Double)
            .double_value(&[]);
        let mean = ours.to_kind(Kind::Double).mean_dim([1, 2].as_slice(), false, None);
        let mean_err = (mean - &g[&key.replace(".patches", ".mean")]).abs().max().double_value(&[]);
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
