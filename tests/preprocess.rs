//! Eval preprocessing against torchvision (Resize(256) + CenterCrop(224) on PIL images) on real
//! ImageNet files from ../shared; the golden keeps only patches and channel means of each crop.

mod common;

use resnet_train::data::{decode, transform};
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
    for key in g.keys().filter(|k| k.ends_with(".patches")) {
        let name = key.trim_start_matches("eval224.").trim_end_matches(".patches");
        let img = decode::decode_file(&shared.join("data/imagenet-samples").join(name)).unwrap();
        let ours = transform::eval_uint8(&img, 256, 224).unwrap();
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
