//! Hostile and odd input gets a clear error or is skipped and named, never a panic or an
//! out-of-memory: decompression bombs, out-of-range sizes and metadata, NaN weights, nonsense
//! hyper-parameters, one-class data, hidden folders, symlink loops; and a fuzz pass over the
//! decode path with random and mutated JPEG/PNG bytes.

mod common;

use resnet_train::data::dataset::ImageFolder;
use resnet_train::data::loader::{Loader, LoaderConfig};
use resnet_train::data::{synthetic, transform};
use resnet_train::rng::SplitMix64;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).args(args).output().expect("binary runs");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout) + &s(&out.stderr))
}

/// A real JPEG whose frame header is patched to claim 65000 x 65000 pixels (12.7 GB of RGB).
fn bomb() -> Vec<u8> {
    let mut b = std::fs::read(common::repo().join("tests/fixtures/gray.jpg")).unwrap();
    let sof = (0..b.len() - 9).find(|&i| b[i] == 0xFF && matches!(b[i + 1], 0xC0..=0xC2)).unwrap();
    b[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]); // height, width = 65000
    b
}

#[test]
fn decompression_bombs_are_bad_files_not_allocations() {
    let dir = common::tmpdir();
    let root = dir.path().join("train");
    synthetic::write_dataset(dir.path(), 10, 0, 48, 1).unwrap();
    std::fs::write(root.join("circle/bomb.jpg"), bomb()).unwrap();
    let ds = Arc::new(ImageFolder::open(&root).unwrap());
    let mut cfg = LoaderConfig::new(8, transform::Transform::train(32));
    cfg.threads = 2;
    cfg.max_bad_fraction = 0.1;
    let loader = Loader::new(ds, cfg).unwrap();
    for b in loader.epoch(0, 0) {
        b.unwrap();
    }
    let bad = loader.bad.examples(5);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].0.ends_with("bomb.jpg") && bad[0].1.contains("65000 x 65000"), "{bad:?}");
    // imagenet-prep verify names it instead of allocating 12.7 GB.
    let (code, out) = run(env!("CARGO_BIN_EXE_imagenet-prep"), &["verify", root.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("bomb.jpg") && out.contains("over the limit") && !out.contains("panicked"), "{out}");
    // predict on it: a clear error.
    let w = dir.path().join("m.safetensors");
    let (code, out) = run(
        common::bin(),
        &["init", "--arch", "resnet18", "--num-classes", "3", "--out", w.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(
        common::bin(),
        &["predict", "--checkpoint", w.to_str().unwrap(), root.join("circle/bomb.jpg").to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(out.contains("over the limit") && !out.contains("panicked"), "{out}");
}

/// Rewrites a model file's metadata key.
fn with_metadata(src: &Path, dst: &Path, key: &str, value: &str) {
    let mut f = resnet_train::model::weights::read(src).unwrap();
    f.metadata.insert(key.into(), value.into());
    resnet_train::model::weights::write(dst, &f.tensors, f.metadata).unwrap();
}

#[test]
fn out_of_range_sizes_metadata_and_nan_weights_are_errors() {
    let dir = common::tmpdir();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let w = p("m.safetensors");
    let (code, out) = run(common::bin(), &["init", "--arch", "resnet18", "--num-classes", "3", "--out", &w]);
    assert_eq!(code, 0, "{out}");
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 2, 1, 32, 1).unwrap();
    let img = data.join("val/circle").read_dir().unwrap().next().unwrap().unwrap().path();
    let img = img.to_str().unwrap();
    let data = data.to_str().unwrap();

    let model = resnet_train::model::weights::read(Path::new(&w)).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&model.metadata["resnet_train.model"]).unwrap();
    cfg["num_classes"] = serde_json::json!(1_000_000_000_000i64);
    with_metadata(
        Path::new(&w),
        Path::new(&p("classes.safetensors")),
        "resnet_train.model",
        &cfg.to_string(),
    );
    with_metadata(
        Path::new(&w),
        Path::new(&p("resize.safetensors")),
        "resnet_train.eval",
        r#"{"resize": 100000, "crop": 224}"#,
    );
    let mut nan = resnet_train::model::weights::read(Path::new(&w)).unwrap();
    let _ = nan.tensors.get_mut("fc.weight").unwrap().fill_(f64::NAN);
    resnet_train::model::weights::write(Path::new(&p("nan.safetensors")), &nan.tensors, nan.metadata)
        .unwrap();

    // (command line, split at spaces: the temp paths have none; what the message must name)
    let (classes, resize, nan) = (p("classes.safetensors"), p("resize.safetensors"), p("nan.safetensors"));
    let cases = [
        (format!("eval --checkpoint {w} --data {data} --size 0"), "--size"),
        (format!("eval --checkpoint {w} --data {data} --crop-pct nan"), "--crop-pct"),
        (format!("bench-data --data {data} --size 0"), "--size"),
        (format!("predict --checkpoint {w} --resize 60000 --crop 60000 {img}"), "--resize/--crop"),
        (format!("predict --checkpoint {classes} {img}"), "num-classes"),
        (format!("predict --checkpoint {resize} {img}"), "resize 100000"),
        (format!("predict --checkpoint {nan} {img}"), "NaN"),
        (format!("--data {data} --weight-decay nan"), "--weight-decay"),
        (format!("--data {data} --warmup-epochs=-5"), "--warmup-epochs"),
        (format!("--data {data} --clip-grad=-1"), "--clip-grad"),
        (format!("--data {data} --train-size 100000"), "--train-size"),
    ];
    for (line, needle) in cases {
        let args: Vec<&str> = line.split_whitespace().collect();
        let (code, out) = run(common::bin(), &args);
        assert!(code == 1 || code == 2, "{args:?}: exit {code}: {out}");
        assert!(out.contains(needle) && !out.contains("panicked"), "{args:?}: {out}");
    }
}

#[test]
fn one_class_hidden_folders_and_symlink_loops() {
    let dir = common::tmpdir();
    let root = dir.path().join("d");
    synthetic::write_dataset(&root, 4, 1, 32, 1).unwrap();
    let train = root.join("train");
    let before = ImageFolder::open_with_index_dir(&train, None).unwrap();
    let (n, classes) = (before.len(), before.classes.clone());
    // A hidden folder is not a class; a loop and an escape out of the class folder are not followed.
    std::fs::create_dir_all(train.join(".ipynb_checkpoints")).unwrap();
    std::fs::copy(before.samples[0].path.clone(), train.join(".ipynb_checkpoints/x.jpg")).unwrap();
    let first = train.join(&classes[0]);
    std::os::unix::fs::symlink(".", first.join("self")).unwrap();
    std::os::unix::fs::symlink(train.join(&classes[1]), first.join("up")).unwrap();
    std::fs::create_dir_all(first.join("inner")).unwrap();
    std::fs::copy(before.samples[0].path.clone(), first.join("inner/extra.jpg")).unwrap();
    std::os::unix::fs::symlink(first.join("inner"), first.join("inner-again")).unwrap(); // inside: followed
    let after = ImageFolder::open_with_index_dir(&train, None).unwrap();
    assert_eq!(after.classes, classes, "hidden folders are not classes");
    assert_eq!(after.len(), n + 2, "inner/extra.jpg and its in-class alias only; no loop, no escape");
    for s in &after.samples {
        let class = &after.classes[s.label as usize];
        assert!(!s.path.to_string_lossy().contains("/up/"), "{}", s.path.display());
        assert!(s.path.starts_with(train.join(class)));
    }

    // One class: an error, not a 100% run.
    let one = dir.path().join("one");
    std::fs::create_dir_all(one.join("only")).unwrap();
    std::fs::copy(before.samples[0].path.clone(), one.join("only/a.jpg")).unwrap();
    let (code, out) = run(common::bin(), &["--data", one.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("at least 2"), "{out}");
}

/// The decode + transform path on random bytes and on mutated real JPEG/PNG files: errors are
/// fine, panics are not, and nothing allocates beyond the decode limit.
#[test]
fn fuzzed_image_bytes_never_panic() {
    let fixtures = common::repo().join("tests/fixtures");
    let seeds: Vec<Vec<u8>> = ["gray.jpg", "cmyk.jpg", "png_inside.JPEG", "exif_rotated.jpg"]
        .iter()
        .map(|f| std::fs::read(fixtures.join(f)).unwrap())
        .collect();
    let mut rng = SplitMix64::new(7);
    let mut worker = transform::Worker::default();
    let path = PathBuf::from("fuzz.jpg");
    let mut dst = vec![0u8; 3 * 32 * 32];
    let (mut ok, mut err) = (0, 0);
    let cases = 3000;
    for i in 0..cases {
        let mut bytes = match i % 4 {
            0 => (0..(rng.next_u64() % 2048) as usize).map(|_| rng.next_u64() as u8).collect(),
            _ => seeds[(rng.next_u64() % seeds.len() as u64) as usize].clone(),
        };
        if i % 4 != 0 {
            for _ in 0..1 + rng.next_u64() % 8 {
                let at = (rng.next_u64() % bytes.len() as u64) as usize;
                match rng.next_u64() % 3 {
                    0 => bytes[at] = rng.next_u64() as u8,
                    1 => bytes.truncate(at.max(1)),
                    _ => bytes.insert(at, rng.next_u64() as u8),
                }
            }
        }
        let t =
            if i % 2 == 0 { transform::Transform::train(32) } else { transform::Transform::eval(32, 0.875) };
        let mut sample_rng = SplitMix64::new(i);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            transform::apply(&mut worker, &bytes, &path, &t, &mut sample_rng, &mut dst)
        }));
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) => err += 1,
            Err(_) => panic!("case {i}: the decode path panicked on {} bytes", bytes.len()),
        }
    }
    eprintln!("fuzz: {cases} cases, {ok} decoded, {err} clear errors, 0 panics");
    assert_eq!(ok + err, cases as usize);
    // Bounded memory: the process's peak (libtorch included, and this binary's other tests)
    // stays far below what one accepted bomb would take (12.7 GB).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(peak_kb < 4 << 20, "peak RSS {} MB", peak_kb >> 10);
}
