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
    let _ = nan.tensors.get_mut("conv1.weight").unwrap().fill_(f64::NAN);
    resnet_train::model::weights::write(Path::new(&p("nan.safetensors")), &nan.tensors, nan.metadata)
        .unwrap();

    // (command line, split at spaces: the temp paths have none; what the message must name)
    let (classes, resize, nan) = (p("classes.safetensors"), p("resize.safetensors"), p("nan.safetensors"));
    let out = format!("{} --arch resnet18 --train-size 32 --eval-size 32 --device cpu", p("runs"));
    let cases = [
        (format!("eval --checkpoint {w} --data {data} --size 0"), "--size"),
        (format!("eval --checkpoint {w} --data {data} --crop-pct nan"), "--crop-pct"),
        (format!("bench-data --data {data} --size 0"), "--size"),
        (format!("predict --checkpoint {w} --resize 60000 --crop 60000 {img}"), "--resize"),
        (format!("predict --checkpoint {classes} {img}"), "num-classes"),
        (format!("predict --checkpoint {resize} {img}"), "resize 100000"),
        (format!("predict --checkpoint {nan} {img}"), "NaN"),
        (format!("--data {data} --weight-decay nan"), "--weight-decay"),
        (format!("--data {data} --warmup-epochs=-5"), "--warmup-epochs"),
        (format!("--data {data} --clip-grad=-1"), "--clip-grad"),
        (format!("--data {data} --train-size 100000"), "--train-size"),
        (format!("--data {data} --ratio 2,1"), "--ratio"),
        (format!("--data {data} --act-lr-scale=-1"), "--act-lr-scale"),
        (format!("eval --checkpoint {w} --data {data} --interpolation lanczos"), "--interpolation"),
        (format!("coefficients {}", p("missing.safetensors")), "missing.safetensors"),
        (format!("coefficients {data}"), "metrics.jsonl"),
        (format!("--data {data} --batch-size 8 --initial-checkpoint {nan} --output {out}"), "NaN"),
        (
            format!(
                "--data {data} --batch-size 8 --initial-checkpoint {} --output {out}",
                p("missing.safetensors")
            ),
            "missing.safetensors",
        ),
        (format!("--data {data} --batch-size 8 --initial-checkpoint {data} --output {out}"), data),
        (format!("--data {data} --schedule-style timm --warmup-epochs 0.5"), "--warmup-epochs"),
        (format!("--data {data} --schedule-style timm --warmup-lr nan"), "--warmup-lr"),
        (format!("--data {data} --schedule step --cooldown-epochs 2"), "--cooldown-epochs"),
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

/// Dataset layouts: timm's validation/ is found like val/; `--train-split`/`--val-split` name other
/// folders and must exist; a layout with no evaluation split trains with a warning that it will
/// not evaluate (instead of a silent 0-image eval).
#[test]
fn split_folders_are_found_named_or_missing_with_a_warning() {
    let dir = common::tmpdir();
    let root = dir.path().join("d");
    synthetic::write_dataset(&root, 4, 2, 32, 3).unwrap();
    std::fs::rename(root.join("val"), root.join("validation")).unwrap();
    let out_dir = dir.path().join("runs");
    let train = |name: &str, extra: &[&str]| {
        let base = [
            "--config",
            "configs/recipes/smoke-cpu.toml",
            "--data",
            root.to_str().unwrap(),
            "--batch-size",
            "4",
        ];
        let args = [&base[..], &["--output", out_dir.to_str().unwrap(), "--name", name], extra].concat();
        let out = Command::new(common::bin()).args(&args).current_dir(common::repo()).output().unwrap();
        (out.status.code().unwrap_or(-1), common::output_text(&out))
    };
    let (code, out) = train("validation", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 val images") && out.contains("top-1") && !out.contains("will not evaluate"),
        "{out}"
    );
    // Named splits: here the train folder doubles as the evaluation split.
    let (code, out) = train("named", &["--train-split", "train", "--val-split", "train"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("40 train / 40 val images"), "{out}");
    for (flag, name) in [("--val-split", "val"), ("--train-split", "training")] {
        let (code, out) = train("missing", &[flag, name]);
        assert!(code != 0 && out.contains(&format!("{flag} {name} under --data")), "{out}");
        assert!(out.contains(&root.join(name).display().to_string()), "{out}");
    }
    std::fs::rename(root.join("validation"), root.join("holdout")).unwrap();
    let (code, out) = train("none", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("has no val/ or validation/ folder: this run will not evaluate"), "{out}");
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

/// Checkpoints with a damaged header (random bytes, a wrong length field, truncation) or edited
/// entries (shapes, dtypes, data offsets, missing or swapped tensors, junk metadata) through
/// everything that reads a model file: `load_last` (resume), the metadata accessors, and
/// `load_model` (predict, eval). Errors are fine, panics are not.
#[test]
fn fuzzed_checkpoints_never_panic() {
    use resnet_train::train::run::checkpoint::{load_last, LoopState};
    use serde_json::{json, Value};
    let dir = common::tmpdir();
    let seed_file = dir.path().join("seed.safetensors");
    let (code, out) = run(
        common::bin(),
        &["init", "--arch", "resnet18", "--act", "polynorm", "--num-classes", "10", "--out"]
            .iter()
            .copied()
            .chain([seed_file.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{out}");
    let bytes = std::fs::read(&seed_file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    // A training checkpoint's metadata: classes, eval sizes, the loop state.
    let meta = header["__metadata__"].as_object_mut().unwrap();
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    meta.insert("resnet_train.class_names".into(), json!(serde_json::to_string(&classes).unwrap()));
    meta.insert("resnet_train.eval".into(), json!(r#"{"resize":37,"crop":32}"#));
    meta.insert(
        "resnet_train.train_state".into(),
        json!(serde_json::to_string(&LoopState::default()).unwrap()),
    );
    let data = &bytes[8 + header_len..];
    let assemble = |h: &Value| {
        let mut hb = serde_json::to_vec(h).unwrap();
        hb.resize(hb.len().div_ceil(8) * 8, b' ');
        let mut out = (hb.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&hb);
        out.extend_from_slice(data);
        out
    };
    let whole = assemble(&header);
    let names: Vec<String> =
        header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
    let meta_keys: Vec<String> = header["__metadata__"].as_object().unwrap().keys().cloned().collect();

    let mut rng = SplitMix64::new(11);
    let mut pick = |n: usize| rng.below(n as u64) as usize;
    let path = dir.path().join("case.safetensors");
    let (mut loaded, mut errors) = (0, 0);
    let cases = 240;
    for i in 0..cases {
        let case = match i % 8 {
            0 => {
                let mut b = whole.clone();
                for _ in 0..1 + pick(6) {
                    let at = pick(8 + header_len);
                    b[at] = pick(256) as u8;
                }
                b
            }
            1 => whole[..pick(whole.len())].to_vec(),
            2 => {
                let lens = [
                    0,
                    1,
                    header_len as u64 - 1,
                    u64::MAX,
                    1 << 63,
                    whole.len() as u64,
                    pick(1 << 30) as u64,
                ];
                let mut b = whole.clone();
                b[..8].copy_from_slice(&lens[pick(lens.len())].to_le_bytes());
                b
            }
            _ => {
                let mut h = header.clone();
                let name = &names[pick(names.len())];
                let edit = i % 8;
                let t = &mut h[name.as_str()];
                match edit {
                    3 => {
                        let shapes = [
                            json!([]),
                            json!([0]),
                            json!([1u64 << 40]),
                            json!([-1]),
                            json!([3.5]),
                            json!([1u64 << 33, 1u64 << 33]),
                            json!("x"),
                        ];
                        t["shape"] = shapes[pick(shapes.len())].clone();
                    }
                    4 => {
                        let dtypes = ["F16", "BF16", "I64", "U8", "BOOL", "F64", "X9", ""];
                        t["dtype"] = json!(dtypes[pick(dtypes.len())]);
                    }
                    5 => {
                        let (s, e) =
                            (t["data_offsets"][0].as_u64().unwrap(), t["data_offsets"][1].as_u64().unwrap());
                        let offsets = [
                            json!([e, s]),
                            json!([s, e + 4]),
                            json!([s, 1u64 << 62]),
                            json!([s]),
                            json!([0, 0]),
                        ];
                        t["data_offsets"] = offsets[pick(offsets.len())].clone();
                    }
                    6 => {
                        if pick(2) == 0 {
                            h.as_object_mut().unwrap().remove(name);
                        } else {
                            let other = names[pick(names.len())].clone();
                            let (a, b) = (h[name.as_str()].clone(), h[other.as_str()].clone());
                            h[name.as_str()] = b;
                            h[other.as_str()] = a;
                        }
                    }
                    _ => {
                        let junk = ["", "nan", "-1", "1e300", "{", "[]", "{\"arch\":\"resnet18\"}", "null"];
                        let key = &meta_keys[pick(meta_keys.len())];
                        h["__metadata__"][key.as_str()] = json!(junk[pick(junk.len())]);
                    }
                }
                assemble(&h)
            }
        };
        std::fs::write(&path, &case).unwrap();
        let r = std::panic::catch_unwind(|| -> resnet_train::error::Result<()> {
            let (file, state) = load_last(&path)?;
            let _ = (file.class_names(), file.eval_size(), state.schedule_step());
            file.model_config(&path)?;
            resnet_train::model::weights::load_model(&path, tch::Device::Cpu).map(|_| ())
        });
        match r {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(_)) => errors += 1,
            Err(_) => panic!("case {i} panicked (file kept as {})", path.display()),
        }
    }
    eprintln!("checkpoint fuzz: {cases} cases, {loaded} loaded, {errors} clear errors, 0 panics");
    assert!(errors > cases / 2, "most edits must be caught");
}
