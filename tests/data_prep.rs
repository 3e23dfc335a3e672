//! imagenet-prep on a small ILSVRC-shaped fixture built from ../shared: the flat validation folder
//! reorganised from each labels format into the same tree; verify and resize.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const N: usize = 30;

fn prep(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imagenet-prep")).args(args).output().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr))
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect()
}

/// A flat val folder of N real JPEGs named ILSVRC2012_val_000000XX.JPEG and the four label files.
fn fixture(shared: &Path, dir: &Path) -> (PathBuf, BTreeMap<String, String>) {
    let flat = dir.join("val_flat");
    std::fs::create_dir_all(&flat).unwrap();
    let mut samples: Vec<PathBuf> =
        std::fs::read_dir(shared.join("data/imagenet-samples")).unwrap().map(|e| e.unwrap().path()).collect();
    samples.sort();
    for i in 1..=N {
        std::fs::copy(&samples[i * 7], flat.join(format!("ILSVRC2012_val_{i:08}.JPEG"))).unwrap();
    }
    let meta = shared.join("data/imagenet-meta");
    let truth: BTreeMap<String, String> = lines(&meta.join("ILSVRC2012_val_wnid.txt"))
        .into_iter()
        .take(N)
        .map(|l| {
            let (f, w) = l.split_once(' ').unwrap();
            (f.to_string(), w.to_string())
        })
        .collect();
    let wanted = |id: &str| truth.contains_key(&format!("{id}.JPEG"));
    let mut kaggle = vec!["ImageId,PredictionString".to_string()];
    kaggle.extend(
        lines(&meta.join("LOC_val_solution_wnid_only.csv"))
            .into_iter()
            .skip(1)
            .filter(|l| wanted(l.split(',').next().unwrap())),
    );
    std::fs::write(dir.join("LOC_val_solution.csv"), kaggle.join("\n")).unwrap();
    std::fs::write(dir.join("val.txt"), lines(&meta.join("ILSVRC2012_val_caffe_labels.txt"))[..N].join("\n"))
        .unwrap();
    std::fs::write(dir.join("val_wnid.txt"), lines(&meta.join("ILSVRC2012_val_wnid.txt"))[..N].join("\n"))
        .unwrap();
    // Devkit ground truth: ILSVRC2012_IDs through tests/fixtures/meta.mat's permutation.
    let wnids: Vec<String> =
        lines(&meta.join("LOC_synset_mapping.txt")).iter().map(|l| l[..9].to_string()).collect();
    let gt: Vec<String> = truth
        .values()
        .map(|w| ((7 * wnids.iter().position(|x| x == w).unwrap() + 3) % 1000 + 1).to_string())
        .collect();
    std::fs::write(dir.join("ILSVRC2012_validation_ground_truth.txt"), gt.join("\n")).unwrap();
    (flat, truth)
}

fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for class in std::fs::read_dir(root).unwrap() {
        let class = class.unwrap().path();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            out.insert(
                f.file_name().unwrap().to_string_lossy().into_owned(),
                class.file_name().unwrap().to_string_lossy().into_owned(),
            );
        }
    }
    out
}

#[test]
fn val_reorganisation_from_every_labels_format() {
    let Some(shared) = common::shared("val_reorganisation_from_every_labels_format") else { return };
    let dir = common::tmpdir();
    let (flat, truth) = fixture(&shared, dir.path());
    let d = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    let synsets = shared.join("data/imagenet-meta/LOC_synset_mapping.txt");
    let meta = common::repo().join("tests/fixtures/meta.mat");
    let flat_s = flat.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("kaggle", vec!["--labels".into(), d("LOC_val_solution.csv")]),
        (
            "caffe",
            vec!["--labels".into(), d("val.txt"), "--synsets".into(), synsets.to_string_lossy().into_owned()],
        ),
        ("wnid", vec!["--labels".into(), d("val_wnid.txt")]),
        (
            "devkit",
            vec![
                "--labels".into(),
                d("ILSVRC2012_validation_ground_truth.txt"),
                "--meta".into(),
                meta.to_string_lossy().into_owned(),
            ],
        ),
    ];
    for (name, extra) in cases {
        let out = d(name);
        let mut args = vec!["val".to_string(), "--src".into(), flat_s.clone(), "--out".into(), out.clone()];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Dry run changes nothing.
        let (code, stdout, err) = prep(&[args.as_slice(), &["--dry-run"]].concat());
        assert_eq!(code, 0, "{name}: {err}");
        assert!(stdout.contains(&format!("{N} images")), "{stdout}");
        assert!(!Path::new(&out).exists());
        let (code, _, err) = prep(&args);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(tree(Path::new(&out)), truth, "{name}");
        // Idempotent: a rerun has nothing to do.
        let (code, stdout, _) = prep(&args);
        assert_eq!(code, 0);
        assert!(
            stdout.contains("0 to Hardlink") && stdout.contains(&format!("{N} already in place")),
            "{stdout}"
        );
    }
    // Hard links by default: same inode as the source.
    use std::os::unix::fs::MetadataExt;
    let (f, w) = truth.iter().next().unwrap();
    assert_eq!(
        std::fs::metadata(flat.join(f)).unwrap().ino(),
        std::fs::metadata(dir.path().join("kaggle").join(w).join(f)).unwrap().ino()
    );
    // Refuses to overwrite a different file (a new inode: writing through the link would change the source).
    let target = dir.path().join("kaggle").join(w).join(f);
    std::fs::remove_file(&target).unwrap();
    std::fs::write(&target, b"other").unwrap();
    let (code, _, err) =
        prep(&["val", "--src", &flat_s, "--out", &d("kaggle"), "--labels", &d("LOC_val_solution.csv")]);
    assert_ne!(code, 0);
    assert!(err.contains("refusing to overwrite"), "{err}");
    // Devkit IDs without meta.mat: a clear error, not a wrong tree.
    let (code, _, err) = prep(&[
        "val",
        "--src",
        &flat_s,
        "--out",
        &d("x"),
        "--labels",
        &d("ILSVRC2012_validation_ground_truth.txt"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--meta"), "{err}");
}

#[test]
fn verify_counts_kinds_and_flags_bad_files_and_resize_is_resumable() {
    let dir = common::tmpdir();
    let src = dir.path().join("src/a");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["cmyk.jpg", "gray.jpg", "png_inside.JPEG", "exif_rotated.jpg"] {
        std::fs::copy(common::repo().join("tests/fixtures").join(f), src.join(f)).unwrap();
    }
    let root = dir.path().join("src").to_string_lossy().into_owned();
    let (code, out, _) = prep(&["verify", &root, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files"], 4);
    assert_eq!(v["kinds"]["JPEG/Cmyk"], 1);
    assert_eq!(v["kinds"]["JPEG/Gray"], 1);
    assert_eq!(v["kinds"]["JPEG/YCbCr"], 1);
    assert_eq!(v["kinds"]["PNG/Rgb8"], 1);
    std::fs::write(src.join("zero.jpg"), b"").unwrap();
    let (code, out, _) = prep(&["verify", &root]);
    assert_eq!(code, 1);
    assert!(out.contains("zero.jpg"), "{out}");
    assert_eq!(prep(&["verify", &root, "--allow-bad"]).0, 0);
    std::fs::remove_file(src.join("zero.jpg")).unwrap();

    let out_dir = dir.path().join("small").to_string_lossy().into_owned();
    let (code, out, err) = prep(&["resize", &root, &out_dir, "--max-side", "32"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 to do"), "{out}");
    let img = resnet_train::data::decode::decode_file(&Path::new(&out_dir).join("a/gray.jpg")).unwrap();
    assert_eq!((img.width, img.height), (32, 24));
    let (_, out, _) = prep(&["resize", &root, &out_dir, "--max-side", "32"]);
    assert!(out.contains("0 to do"), "rerun resumes: {out}");
    // A rerun with another size would keep the old files as "already done": refused.
    let (code, _, err) = prep(&["resize", &root, &out_dir, "--max-side", "16"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("max_side = 32") && err.contains("max_side = 16"), "{err}");
    // Overlapping folders: the source itself, and an output inside it (read as source next time).
    for out in [root.clone(), format!("{root}/a/small")] {
        let (code, _, err) = prep(&["resize", &root, &out, "--max-side", "32"]);
        assert_eq!(code, 2, "{out}: {err}");
        assert!(err.contains("overlap"), "{err}");
    }
    assert!(!Path::new(&root).join("a/small").exists());
    // An output folder that holds files but no record of their settings: refused.
    let unknown = dir.path().join("unknown");
    std::fs::create_dir_all(unknown.join("a")).unwrap();
    std::fs::copy(src.join("gray.jpg"), unknown.join("a/gray.jpg")).unwrap();
    let (code, _, err) = prep(&["resize", &root, unknown.to_str().unwrap(), "--max-side", "32"]);
    assert!(code == 2 && err.contains("not empty"), "{err}");
}

#[test]
fn val_reports_missing_images_refuses_conflicts_and_misplaced_images_unless_forced() {
    let Some(shared) = common::shared("val_reports_missing_images_refuses_conflicts") else { return };
    let dir = common::tmpdir();
    let (flat, truth) = fixture(&shared, dir.path());
    let d = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    let flat_s = flat.to_string_lossy().into_owned();
    let mut lines: Vec<String> = truth.iter().map(|(f, w)| format!("{f} {w}")).collect();
    let (f0, w0) = truth.iter().next().unwrap();
    let other = truth.values().find(|w| *w != w0).unwrap().clone();
    // A label for an image that is not there: named in a warning.
    lines.push("ILSVRC2012_val_00049999.JPEG n01440764".into());
    std::fs::write(d("missing.txt"), lines.join("\n")).unwrap();
    let (code, _, err) = prep(&["val", "--src", &flat_s, "--out", &d("a"), "--labels", &d("missing.txt")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 labelled images are not in") && err.contains("00049999"), "{err}");
    // The same image with two labels: refused, or left out with --force.
    let mut conflicting = lines.clone();
    conflicting.push(format!("{f0} {other}"));
    std::fs::write(d("conflict.txt"), conflicting.join("\n")).unwrap();
    let args = ["val", "--src", &flat_s, "--out", &d("b"), "--labels", &d("conflict.txt")];
    let (code, _, err) = prep(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("conflicting labels") && err.contains(f0.as_str()) && err.contains("--force"),
        "{err}"
    );
    let (code, _, err) = prep(&[&args[..], &["--force"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        !dir.path().join("b").join(w0).join(f0).exists()
            && !dir.path().join("b").join(&other).join(f0).exists()
    );
    // A rerun with other labels into the same output: refused, or the stale copy moved with --force.
    let mut relabelled = lines[..lines.len() - 1].to_vec();
    relabelled[0] = format!("{f0} {other}");
    std::fs::write(d("relabelled.txt"), relabelled.join("\n")).unwrap();
    let args = ["val", "--src", &flat_s, "--out", &d("a"), "--labels", &d("relabelled.txt")];
    let (code, _, err) = prep(&args);
    assert_ne!(code, 0);
    assert!(err.contains("another class") && err.contains(f0.as_str()), "{err}");
    let (code, _, err) = prep(&[&args[..], &["--force"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("a").join(&other).join(f0).exists());
    assert!(!dir.path().join("a").join(w0).join(f0).exists(), "one image, one class folder");
}

/// The official training archive's shape: a tar of per-class tars (`n01440764.tar` ...), each of
/// JPEGs. `imagenet-prep train` extracts it to an ImageFolder, identical to the source; a killed
/// extraction's leftovers are redone and finished classes kept; `--shards` writes the same
/// samples as shards without extracting.
#[test]
fn train_extracts_the_nested_training_archive() {
    let dir = common::tmpdir();
    let src = dir.path().join("src");
    resnet_train::data::synthetic::write_dataset(&src, 3, 0, 24, 7).unwrap();
    let classes: Vec<String> = {
        let mut c: Vec<String> = std::fs::read_dir(src.join("train"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        c.sort();
        c.truncate(4);
        c
    };
    let files_of = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        for c in std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()) {
            for f in std::fs::read_dir(&c).unwrap().map(|e| e.unwrap().path()) {
                let key = format!(
                    "{}/{}",
                    c.file_name().unwrap().to_string_lossy(),
                    f.file_name().unwrap().to_string_lossy()
                );
                m.insert(key, std::fs::read(&f).unwrap());
            }
        }
        m
    };
    // The archive: each class as its own tar, all inside one.
    let archive = dir.path().join("ILSVRC2012_img_train.tar");
    let mut outer = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for c in &classes {
        let mut inner = tar::Builder::new(Vec::new());
        for f in std::fs::read_dir(src.join("train").join(c)).unwrap().map(|e| e.unwrap().path()) {
            inner.append_path_with_name(&f, f.file_name().unwrap()).unwrap();
        }
        let bytes = inner.into_inner().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        outer.append_data(&mut h, format!("{c}.tar"), bytes.as_slice()).unwrap();
    }
    outer.finish().unwrap();
    drop(outer);
    let out = dir.path().join("train");
    let (code, _, err) = prep(&["train", "--tar", archive.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut want = files_of(&src.join("train"));
    want.retain(|k, _| classes.iter().any(|c| k.starts_with(&format!("{c}/"))));
    assert_eq!(files_of(&out), want);
    // Killed mid-class: its temporary folder is there, the class is not; the rerun finishes it.
    std::fs::remove_dir_all(out.join(&classes[1])).unwrap();
    std::fs::create_dir_all(out.join(format!(".{}.tmp-99999", classes[1]))).unwrap();
    std::fs::write(out.join(format!(".{}.tmp-99999/half.JPEG", classes[1])), b"half").unwrap();
    let (code, _, err) = prep(&["train", "--tar", archive.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 classes extracted") && err.contains(&format!("{} already there", classes.len() - 1)),
        "{err}"
    );
    assert_eq!(files_of(&out), want);
    // Straight to shards (nothing extracted): the same images and classes, shuffled into shards.
    let wds = dir.path().join("wds");
    let (code, _, err) = prep(&[
        "train",
        "--tar",
        archive.to_str().unwrap(),
        "--shards",
        wds.to_str().unwrap(),
        "--shard-size",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    let split = resnet_train::data::shards::open_split(&wds, "train", None).unwrap();
    assert_eq!(split.classes, classes);
    let mut from_shards: Vec<(String, Vec<u8>)> =
        split.samples.iter().map(|s| (split.classes[s.label as usize].clone(), s.read().unwrap())).collect();
    let mut from_folder: Vec<(String, Vec<u8>)> =
        want.iter().map(|(k, v)| (k.split('/').next().unwrap().to_string(), v.clone())).collect();
    from_shards.sort();
    from_folder.sort();
    assert_eq!(from_shards, from_folder);
    assert!(!wds.join(&classes[0]).exists(), "nothing extracted");
    // Not the archive: a clear error naming it.
    let (code, _, err) = prep(&[
        "train",
        "--tar",
        src.join("train").join(&classes[0]).join("00000.jpg").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(code != 0 && err.contains("00000.jpg") && !err.contains("panicked"), "{err}");
}
