//! The dataset, sampler and loader: torchvision's ImageFolder and DistributedSampler rules,
//! determinism across thread counts, resume, and bad-file handling.

mod common;

use resnet_train::data::augment::{Augment, Policy};
use resnet_train::data::dataset::ImageFolder;
use resnet_train::data::loader::{Loader, LoaderConfig};
use resnet_train::data::sampler::Sampler;
use resnet_train::data::synthetic;
use resnet_train::data::transform::{ResSchedule, TrainFilter, Transform};
use std::path::Path;
use std::sync::Arc;

fn demo_dataset(root: &Path, per_class: u64) -> Arc<ImageFolder> {
    synthetic::write_dataset(root, per_class, 0, 48, 3).unwrap();
    Arc::new(ImageFolder::open(&root.join("train")).unwrap())
}

fn all_batches(loader: &Loader, epoch: u64, start: usize) -> Vec<(Vec<u8>, Vec<i64>)> {
    loader
        .epoch(epoch, start)
        .map(|b| {
            let b = b.unwrap();
            let mut px = vec![0u8; b.images.numel()];
            b.images.copy_data_u8(&mut px, b.images.numel());
            (px, Vec::<i64>::try_from(&b.labels).unwrap())
        })
        .collect()
}

fn config(threads: usize) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(8, Transform::train(32));
    cfg.threads = threads;
    cfg.seed = 11;
    cfg
}

#[test]
fn batches_are_identical_with_any_thread_count_and_resume_mid_epoch() {
    let dir = common::tmpdir();
    let ds = demo_dataset(dir.path(), 5);
    // Plain crops, and with each augmentation policy (and ColorJitter) on.
    let policies = [
        None,
        Some("randaugment"),
        Some("ta_wide"),
        Some("autoaugment"),
        Some("rand-m9-mstd0.5-inc1"),
        Some("v0"),
    ];
    let mut plain = Vec::new();
    for aa in policies {
        let augment = aa.map(|p| {
            let jitter = (p == "randaugment").then_some([0.4, 0.4, 0.4, 0.1]);
            Arc::new(Augment::new(Policy::parse(p).unwrap(), jitter, 32))
        });
        let with = |threads| {
            let mut cfg = config(threads);
            cfg.augment = augment.clone();
            Loader::new(ds.clone(), cfg).unwrap()
        };
        let (one, three) = (with(1), with(3));
        assert_eq!(one.batches_per_epoch(), 50 / 8);
        let a = all_batches(&one, 4, 0);
        let b = all_batches(&three, 4, 0);
        assert_eq!(a.len(), 6);
        assert!(a == b, "{aa:?}: 1 and 3 threads give different batches");
        // Resuming at batch 2 gives exactly the rest of the epoch.
        assert!(all_batches(&three, 4, 2) == a[2..], "{aa:?}: resumed batches differ");
        // Another epoch: another order and other augmentations.
        assert!(all_batches(&one, 5, 0) != a);
        // Labels are the class folders' sorted positions.
        let mut labels: Vec<i64> = a.iter().flat_map(|(_, l)| l.clone()).collect();
        labels.sort();
        labels.dedup();
        assert!(labels.iter().all(|&l| (0..10).contains(&l)));
        match aa {
            None => plain = a,
            // Same crops and order, augmented pixels.
            Some(p) => {
                assert!(a.iter().zip(&plain).all(|(x, y)| x.1 == y.1), "{p}: labels changed");
                assert!(a.iter().zip(&plain).any(|(x, y)| x.0 != y.0), "{p}: no pixel changed");
            }
        }
    }
    // timm's `train_interpolation = random`: the crop's filter and each op's drawn per sample, too.
    let with = |threads| {
        let mut cfg = config(threads);
        cfg.transform = cfg.transform.with_train_filter(TrainFilter::Random);
        cfg.augment = Some(Arc::new(Augment::new(Policy::parse("rand-m9-mstd0.5-inc1").unwrap(), None, 32)));
        Loader::new(ds.clone(), cfg).unwrap()
    };
    let a = all_batches(&with(1), 4, 0);
    assert!(a == all_batches(&with(3), 4, 0), "random filter: 1 and 3 threads give different batches");
    assert!(all_batches(&with(3), 4, 2) == a[2..], "random filter: resumed batches differ");
}

#[test]
fn eval_loader_keeps_the_last_partial_batch_in_order() {
    let dir = common::tmpdir();
    let ds = demo_dataset(dir.path(), 3);
    let mut cfg = LoaderConfig::new(8, Transform::eval(32, 0.875));
    cfg.shuffle = false;
    cfg.drop_last_batch = false;
    let loader = Loader::new(ds.clone(), cfg).unwrap();
    let batches = all_batches(&loader, 0, 0);
    assert_eq!(batches.len(), 4); // 30 samples: 8 + 8 + 8 + 6
    assert_eq!(batches[3].1.len(), 6);
    let labels: Vec<i64> = batches.iter().flat_map(|(_, l)| l.clone()).collect();
    let want: Vec<i64> = ds.samples.iter().map(|s| s.label as i64).collect();
    assert_eq!(labels, want);
}

#[test]
fn distributed_sampler_semantics() {
    // 10 samples over 3 ranks: padded to 12 by repeating the start; rank r takes r, r+3, ...
    let mut s = Sampler::new(10, false, 0);
    s.world = 3;
    let per_rank: Vec<Vec<usize>> = (0..3).map(|r| Sampler { rank: r, ..s }.indices(0)).collect();
    assert_eq!(per_rank[0], vec![0, 3, 6, 9]);
    assert_eq!(per_rank[1], vec![1, 4, 7, 0]);
    assert_eq!(per_rank[2], vec![2, 5, 8, 1]);
    // drop_last: truncated to 9.
    let d = Sampler { drop_last: true, ..s };
    assert_eq!((0..3).map(|r| Sampler { rank: r, ..d }.indices(0).len()).sum::<usize>(), 9);
    // uneven (evaluation): every sample exactly once over the ranks, none padded.
    let u = Sampler { uneven: true, ..s };
    let shares: Vec<Vec<usize>> = (0..3).map(|r| Sampler { rank: r, ..u }.indices(0)).collect();
    assert_eq!(shares, vec![vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]);
    for (r, share) in shares.iter().enumerate() {
        assert_eq!(Sampler { rank: r, ..u }.per_rank(), share.len());
    }
    assert_eq!(Sampler { rank: 3, world: 4, ..Sampler { len: 2, ..u } }.per_rank(), 0);
    // Shuffled: a permutation that depends on (seed, epoch) only; ranks partition it.
    let sh = Sampler { shuffle: true, seed: 5, ..Sampler::new(1000, true, 5) };
    let p0 = sh.indices(3);
    let mut sorted = p0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(p0, sh.indices(3));
    assert_ne!(p0, sh.indices(4));
    let mut union: Vec<usize> = (0..4).flat_map(|r| Sampler { rank: r, world: 4, ..sh }.indices(3)).collect();
    union.sort();
    assert_eq!(union, (0..1000).collect::<Vec<_>>());
}

#[test]
fn image_folder_scan_order_extensions_and_cache_invalidation() {
    let dir = common::tmpdir();
    let cache = common::tmpdir();
    let open = |root: &Path| ImageFolder::open_with_index_dir(root, Some(cache.path()));
    let root = dir.path();
    for (class, files) in
        [("n02", vec!["b.JPEG", "a.png", "notes.txt"]), ("n01", vec!["z.jpg", "sub/y.JpEg"])]
    {
        for f in files {
            let p = root.join(class).join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
    }
    let ds = open(root).unwrap();
    assert_eq!(ds.classes, vec!["n01", "n02"]);
    let names: Vec<(String, u32)> = ds
        .samples
        .iter()
        .map(|s| (s.path.strip_prefix(ds.root.as_path()).unwrap().display().to_string(), s.label))
        .collect();
    assert_eq!(
        names,
        vec![
            ("n01/z.jpg".into(), 0),
            ("n01/sub/y.JpEg".into(), 0),
            ("n02/a.png".into(), 1),
            ("n02/b.JPEG".into(), 1)
        ]
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1, "index cached");
    assert_eq!(open(root).unwrap().len(), 4, "read back from the cache");
    // A new file changes its folder's mtime: the cache is invalidated.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(root.join("n02/c.jpg"), b"x").unwrap();
    assert_eq!(open(root).unwrap().len(), 5);
    // A flat folder of images is accepted by open_any.
    let flat = ImageFolder::open_any(&root.join("n02")).unwrap();
    assert_eq!(flat.len(), 3);
    assert!(open(&root.join("n01/sub")).is_err(), "no class folders is an error");
}

#[test]
fn bad_files_are_skipped_counted_and_reported_and_too_many_stop_the_run() {
    let dir = common::tmpdir();
    let root = dir.path().join("train");
    synthetic::write_dataset(dir.path(), 20, 0, 48, 1).unwrap();
    // Real-ImageNet oddities that must decode: CMYK, grayscale, PNG inside .JPEG, EXIF.
    for f in ["cmyk.jpg", "gray.jpg", "png_inside.JPEG", "exif_rotated.jpg"] {
        std::fs::copy(common::repo().join("tests/fixtures").join(f), root.join("circle").join(f)).unwrap();
    }
    // Broken files that must not: zero bytes, truncated, garbage behind a JPEG marker.
    let good = std::fs::read(root.join("square/00000.jpg")).unwrap();
    std::fs::write(root.join("square/zero.jpg"), b"").unwrap();
    std::fs::write(root.join("square/truncated.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("ring/garbage.JPEG"), b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let ds = Arc::new(ImageFolder::open(&root).unwrap());
    assert_eq!(ds.len(), 207);

    let mut cfg = config(2);
    cfg.batch_size = 16;
    cfg.max_bad_fraction = 0.02;
    let loader = Loader::new(ds.clone(), cfg.clone()).unwrap();
    let mut replaced = 0;
    for b in loader.epoch(0, 0) {
        let b = b.unwrap();
        assert_eq!(b.images.size(), vec![16, 3, 32, 32], "batch shapes are kept");
        replaced += b.replaced;
    }
    let bad: Vec<String> = loader
        .bad
        .examples(10)
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(bad, vec!["garbage.JPEG", "truncated.jpg", "zero.jpg"]);
    assert!(replaced >= 2, "bad samples in the epoch were replaced ({replaced})");

    // Over the allowed fraction: the epoch stops with a clear error listing examples.
    cfg.max_bad_fraction = 0.005; // 1 file of 207
    let strict = Loader::new(ds, cfg).unwrap();
    let err = strict.epoch(0, 0).find_map(|b| b.err()).expect("the run stops").to_string();
    assert!(err.contains("unreadable images") && err.contains(".jpg") || err.contains(".JPEG"), "{err}");
}

#[test]
fn progressive_resizing_changes_the_train_size_per_epoch() {
    let dir = common::tmpdir();
    let ds = demo_dataset(dir.path(), 2);
    let mut cfg = config(2);
    cfg.res_schedule = Some(ResSchedule { min_res: 16, max_res: 32, start_ramp: 1, end_ramp: 2 });
    cfg.augment = Some(Arc::new(Augment::new(Policy::parse("randaugment").unwrap(), None, 32)));
    let loader = Loader::new(ds, cfg).unwrap();
    for (epoch, size) in [(0u64, 16i64), (1, 16), (2, 32), (5, 32)] {
        let b = loader.epoch(epoch, 0).next().unwrap().unwrap();
        assert_eq!(b.images.size(), vec![8, 3, size, size], "epoch {epoch}");
    }
}

#[test]
fn repeated_augmentation_copies_are_augmented_differently() {
    let dir = common::tmpdir();
    let ds = demo_dataset(dir.path(), 5);
    let mut cfg = config(2);
    cfg.batch_size = 6;
    cfg.aug_repeats = 3;
    let loader = Loader::new(ds, cfg).unwrap();
    // 50 samples under 256: ceil(50 / 1) draws, i.e. 16 samples x 3 copies and 2 more.
    assert_eq!(loader.batches_per_epoch(), 50 / 6);
    let batches = all_batches(&loader, 0, 0);
    let (px, labels) = &batches[0];
    let per = px.len() / 6;
    for copy in [0, 3] {
        assert!(labels[copy] == labels[copy + 1] && labels[copy + 1] == labels[copy + 2]);
        let img = |k: usize| &px[k * per..(k + 1) * per];
        assert!(img(copy) != img(copy + 1) && img(copy + 1) != img(copy + 2), "copies share a crop");
    }
    assert!(all_batches(&loader, 0, 2) == batches[2..], "resumed mid-epoch");
}

#[test]
fn augmix_splits_are_the_clean_crop_then_augmented_copies_split_after_split() {
    // timm's AugMixDataset + fast_collate: each sample's crop and flip once, the first split
    // clean, the others augmented independently; the batch is split-major, labels repeated.
    let dir = common::tmpdir();
    let ds = demo_dataset(dir.path(), 5);
    let augment = Some(Arc::new(Augment::new(Policy::parse("augmix-m3-w3").unwrap(), None, 32)));
    let loader = |splits: usize, augment: Option<Arc<Augment>>, threads: usize| {
        let mut cfg = config(threads);
        (cfg.aug_splits, cfg.augment) = (splits, augment);
        Loader::new(ds.clone(), cfg).unwrap()
    };
    let plain = all_batches(&loader(0, None, 2), 3, 0);
    let split = all_batches(&loader(3, augment.clone(), 2), 3, 0);
    assert_eq!(split.len(), plain.len(), "the same number of steps: a batch is 8 samples x 3 splits");
    for ((px, labels), (plain_px, plain_labels)) in split.iter().zip(&plain) {
        assert_eq!(px.len(), 3 * plain_px.len());
        assert_eq!(labels.len(), 24);
        for s in 0..3 {
            assert_eq!(
                labels[s * 8..(s + 1) * 8],
                plain_labels[..],
                "split {s}: labels repeated split-major"
            );
        }
        let (n, per) = (plain_px.len(), plain_px.len() / 8);
        assert_eq!(px[..n], plain_px[..], "the clean split is the unaugmented batch");
        for i in 0..8 {
            let img = |s: usize| &px[s * n + i * per..s * n + (i + 1) * per];
            assert!(
                img(1) != img(0) && img(2) != img(0) && img(1) != img(2),
                "sample {i}: splits not augmented apart"
            );
        }
    }
    // Deterministic for any thread count, and resumable mid-epoch.
    assert!(all_batches(&loader(3, augment.clone(), 1), 3, 0) == split, "1 and 2 threads differ");
    assert!(all_batches(&loader(3, augment, 2), 3, 2) == split[2..], "resumed batches differ");
}
