use resnet_train::data::{
    dataset::ImageFolder,
    loader::{Loader, LoaderConfig},
    transform::Transform,
};
use std::sync::Arc;
fn main() {
    let root = std::env::args().nth(1).unwrap();
    let ds = Arc::new(ImageFolder::open(std::path::Path::new(&root)).unwrap());
    let mut cfg = LoaderConfig::new(
        16,
        Transform::Train { size: 48, scale: (0.25, 1.0), ratio: (0.75, 4.0 / 3.0), hflip: 0.5 },
    );
    cfg.seed = 3;
    let l = Loader::new(ds.clone(), cfg).unwrap();
    let b = l.epoch(0, 0).next().unwrap().unwrap();
    let labels: Vec<i64> = Vec::try_from(&b.labels).unwrap();
    println!("{:?}", labels.iter().map(|&i| ds.classes[i as usize].clone()).collect::<Vec<_>>());
    let grid = b.images.view([2, 8, 3, 48, 48]).permute([0, 3, 1, 4, 2]).reshape([96, 384, 3]).contiguous();
    let mut px = vec![0u8; 96 * 384 * 3];
    let n = px.len();
    grid.copy_data_u8(&mut px, n);
    image::save_buffer("/tmp/batch.png", &px, 384, 96, image::ExtendedColorType::Rgb8).unwrap();
}
