//! WebDataset shards: `imagenet-prep shards` writes an ImageFolder split as timm's `wds/` layout,
//! `--data` trains from it, and both directions agree with Python's own webdataset library.

mod common;

use resnet_train::data::dataset::ImageFolder;
use resnet_train::data::shards::{self, Info};
use resnet_train::data::synthetic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn prep(args: &[&str]) -> (bool, String) {
    let o =
        Command::new(env!("CARGO_BIN_EXE_imagenet-prep")).args(args).output().expect("imagenet-prep runs");
    (o.status.success(), common::output_text(&o))
}

/// `imagenet-prep shards` of `src` into `out` as `split`, with extra flags.
fn shard(src: &Path, out: &Path, split: &str, extra: &[&str]) {
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
    let (ok, text) = prep(&[&["shards", "--src", s, "--out", o, "--split", split], extra].concat());
    assert!(ok, "{text}");
}

/// Every sample as (class name, image bytes), sorted: what a dataset holds, whatever its order.
fn contents(d: &ImageFolder) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> =
        d.samples.iter().map(|s| (d.classes[s.label as usize].clone(), s.read().unwrap())).collect();
    v.sort();
    v
}

#[test]
fn shards_hold_the_image_folders_samples_shuffled_across_classes() {
    let dir = common::tmpdir();
    let (img, wds) = (dir.path().join("img"), dir.path().join("wds"));
    synthetic::write_dataset(&img, 5, 2, 32, 1).unwrap();
    shard(&img.join("train"), &wds, "train", &["--shard-size", "16"]);
    let folder = ImageFolder::open_with_index_dir(&img.join("train"), None).unwrap();
    let split = shards::open_split(&wds, "train", None).unwrap();
    assert_eq!(split.classes, folder.classes);
    assert_eq!(contents(&split), contents(&folder));
    // timm's _info.json: the files and their counts, which the reader checks.
    let info = Info::read(&wds).unwrap().unwrap();
    let s = &info.splits["train"];
    assert_eq!((s.num_samples, s.shard_lengths.iter().sum::<usize>()), (folder.len(), folder.len()));
    assert_eq!(s.filenames.len(), folder.len().div_ceil(16));
    // Shuffled: the first shard is not one class's images.
    let first: Vec<u32> = split.samples.iter().take(16).map(|s| s.label).collect();
    assert!(first.iter().any(|l| *l != first[0]), "{first:?}");
}

#[test]
fn a_killed_writer_leaves_no_half_shard_and_the_rerun_writes_the_same_shards() {
    let dir = common::tmpdir();
    let (img, wds) = (dir.path().join("img"), dir.path().join("wds"));
    synthetic::write_dataset(&img, 3, 0, 24, 2).unwrap();
    shard(&img.join("train"), &wds, "train", &["--shard-size", "8", "--shuffle-seed", "3"]);
    let files = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let whole = files(&wds);
    // A writer killed mid-shard leaves its temporary file, never a .tar; the shard is missing.
    let victim = wds.join("wds-train-0001.tar");
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(wds.join("wds-train-0001.tar.tmp-99999"), b"half a shard").unwrap();
    let err = shards::open_split(&wds, "train", None).unwrap_err().to_string();
    assert!(err.contains("wds-train-0001.tar"), "{err}");
    shard(&img.join("train"), &wds, "train", &["--shard-size", "8", "--shuffle-seed", "3"]);
    let mut again = files(&wds);
    again.remove("wds-train-0001.tar.tmp-99999");
    assert_eq!(again, whole, "the rerun wrote other bytes");
    // The same folder with other settings is refused, not mixed.
    let (ok, text) = prep(&[
        "shards",
        "--src",
        img.join("train").to_str().unwrap(),
        "--out",
        wds.to_str().unwrap(),
        "--shard-size",
        "5",
    ]);
    assert!(!ok && text.contains("_info.json") && text.contains("--shard-size"), "{text}");
}

/// A tar of (member name, bytes), as any tar writer lays it out.
fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *bytes).unwrap();
    }
    b.finish().unwrap();
}

/// A bad sample (no label, no image, a label that is not a number or not a class, a shard cut
/// off before it, one `_info.json` counts that is not there) is named by shard and member and
/// read as an unreadable image: the loader counts it against `max_bad_fraction`, as a bad file.
/// An `_info.json` that counts fewer samples than a shard holds is stale: an error.
#[test]
fn bad_samples_are_named_with_their_shard_and_member() {
    let dir = common::tmpdir();
    let jpg = std::fs::read(common::repo().join("tests/fixtures").join(first_jpeg())).unwrap();
    let root = dir.path();
    // The error reading sample `k` of a one-shard split written from `members` (with an
    // `_info.json` counting `count` samples, if given).
    let case = |name: &str,
                members: &[(&str, &[u8])],
                cut: usize,
                count: Option<usize>,
                k: usize|
     -> String {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let tar = d.join("s-train-0.tar");
        write_tar(&tar, members);
        let bytes = std::fs::read(&tar).unwrap();
        std::fs::write(&tar, &bytes[..bytes.len() - cut]).unwrap();
        if let Some(n) = count {
            let info = format!(
                r#"{{"name": "s", "splits": {{"train": {{"name": "train", "num_samples": {n}, "filenames": ["s-train-0.tar"], "shard_lengths": [{n}]}}}}, "num_classes": 2}}"#
            );
            std::fs::write(d.join("_info.json"), info).unwrap();
        }
        let split = shards::open_split(&d, "train", None).unwrap();
        assert_eq!(split.len(), count.unwrap_or(split.len()));
        assert!(
            k == 0 || split.samples[0].read().is_ok(),
            "{name}: {:?}",
            split.samples[0].read().map(|_| ())
        );
        match split.samples[k].read() {
            Ok(_) => panic!("{name}: sample {k} read"),
            Err(e) => e.to_string(),
        }
    };
    let err = case("nolabel", &[("k1.jpg", &jpg), ("k1.cls", b"0"), ("k2.jpg", &jpg)], 0, None, 1);
    assert!(err.contains("s-train-0.tar:k2") && err.contains("no label"), "{err}");
    let err = case(
        "badlabel",
        &[("k1.jpg", &jpg), ("k1.cls", b"cat"), ("k2.jpg", &jpg), ("k2.cls", b"1")],
        0,
        None,
        0,
    );
    assert!(err.contains("k1.cls") && err.contains("\"cat\""), "{err}");
    let err = case(
        "noimage",
        &[("k0.jpg", &jpg), ("k0.cls", b"0"), ("k1.txt", b"x"), ("k1.cls", b"1")],
        0,
        None,
        1,
    );
    assert!(err.contains(":k1") && err.contains("no image"), "{err}");
    // Cut inside the last image (its label and the end-of-archive blocks gone too).
    let members: &[(&str, &[u8])] = &[("k1.jpg", &jpg), ("k1.cls", b"0"), ("k2.jpg", &jpg), ("k2.cls", b"1")];
    let padding = (512 - jpg.len() % 512) % 512;
    let err = case("cut", members, 1024 + 1024 + padding + 100, Some(2), 1);
    assert!(
        err.contains("s-train-0.tar:#1") && err.contains("holds 1 samples where _info.json says 2"),
        "{err}"
    );
    assert!(err.contains("k2.jpg") && err.contains("truncated"), "the cut is named: {err}");
    // A count that disagrees with _info.json: one sample more there than in the shard.
    let err = case("count", members, 0, Some(3), 2);
    assert!(
        err.contains("s-train-0.tar:#2") && err.contains("holds 2 samples") && err.contains("says 3"),
        "{err}"
    );
    // A label beyond the classes.
    let err = case(
        "range",
        &[("k1.jpg", &jpg), ("k1.cls", b"0"), ("k2.jpg", &jpg), ("k2.cls", b"7")],
        0,
        Some(2),
        1,
    );
    assert!(err.contains(":k2.jpg") && err.contains("label 7 is out of range (2 classes)"), "{err}");
    // Fewer samples counted than the shard holds: the info is stale.
    let d = root.join("count");
    let info = std::fs::read_to_string(d.join("_info.json")).unwrap().replace('3', "1");
    std::fs::write(d.join("_info.json"), info).unwrap();
    let err = shards::open_split(&d, "train", None).unwrap_err().to_string();
    assert!(
        err.contains("s-train-0.tar") && err.contains("holds 2 samples") && err.contains("stale"),
        "{err}"
    );
}

fn first_jpeg() -> PathBuf {
    let fixtures = common::repo().join("tests/fixtures");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| PathBuf::from(e.unwrap().file_name()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .collect();
    names.sort();
    names.remove(0)
}

/// Trains `data` for one short epoch into `runs/name` and returns its summary (no times).
fn train(data: &Path, runs: &Path, name: &str) -> Vec<String> {
    train_with(data, runs, name, &[])
}

fn train_with(data: &Path, runs: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let o = Command::new(common::bin())
        .args(["--data", data.to_str().unwrap(), "--output", runs.to_str().unwrap(), "--name", name])
        .args(extra)
        .args(["--arch", "resnet18", "--train-size", "32", "--eval-size", "32", "--batch-size", "8"])
        .args(["--epochs", "1", "--device", "cpu", "--torch-threads", "1"])
        .args(if extra.contains(&"--workers") { &[][..] } else { &["--workers", "2"][..] })
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    common::summary_without_time(&runs.join(name))
}

/// Shards written in the ImageFolder's order, sampled by position, are the same dataset: the same
/// run, number for number.
#[test]
fn training_from_shards_in_the_folders_order_is_training_from_the_folder() {
    let dir = common::tmpdir();
    let (img, wds, runs) = (dir.path().join("img"), dir.path().join("wds"), dir.path().join("runs"));
    synthetic::write_dataset(&img, 4, 2, 32, 3).unwrap();
    shard(&img.join("train"), &wds, "train", &["--shard-size", "10", "--keep-order"]);
    shard(&img.join("val"), &wds, "validation", &["--shard-size", "10", "--keep-order"]);
    let from_folder = train(&img, &runs, "folder");
    // (`global`: one permutation of all samples, the folder's order; the default streams shards.)
    let from_shards = train_with(&wds, &runs, "shards", &["--shard-order", "global"]);
    assert_eq!(from_shards, from_folder);
    // The validation split from elsewhere (`--val-data`): the folder's val/, the shards' train.
    let mixed =
        train_with(&wds, &runs, "mixed", &["--shard-order", "global", "--val-data", img.to_str().unwrap()]);
    assert_eq!(mixed, from_folder);
    let losses =
        |name: &str| common::step_records(&runs.join(name)).iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(losses("shards"), losses("folder"));
}

/// Python's webdataset reads our shards as we do (keys, labels, image bytes), and shards it
/// writes (ShardWriter, with an _info.json) train here.
#[test]
fn shards_agree_with_pythons_webdataset_both_ways() {
    let Some(py) = common::python_with("webdataset", "shards_agree_with_pythons_webdataset_both_ways") else {
        return;
    };
    let dir = common::tmpdir();
    let (img, wds) = (dir.path().join("img"), dir.path().join("wds"));
    synthetic::write_dataset(&img, 3, 2, 32, 4).unwrap();
    shard(&img.join("train"), &wds, "train", &["--shard-size", "7"]);
    let ours = shards::open_split(&wds, "train", None).unwrap();
    let info = Info::read(&wds).unwrap().unwrap();
    let urls: Vec<String> =
        info.splits["train"].filenames.iter().map(|f| wds.join(f).display().to_string()).collect();
    let read = r#"
import sys, webdataset as wds
for s in wds.WebDataset(sys.argv[1:], shardshuffle=False):
    print(s["__key__"], int(s["cls"]), len(s["jpg"]), sum(s["jpg"]) % 1000003)
"#;
    let o = Command::new(&py).arg("-c").arg(read).args(&urls).output().unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let theirs: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    let mine: Vec<String> = ours
        .samples
        .iter()
        .map(|s| {
            let bytes = s.read().unwrap();
            let key = s.member.as_ref().unwrap().name.split('.').next().unwrap().to_string();
            let sum = bytes.iter().map(|b| *b as u64).sum::<u64>() % 1_000_003;
            format!("{key} {} {} {sum}", s.label, bytes.len())
        })
        .collect();
    assert_eq!(theirs, mine);

    // The other way: Python writes the shards and their info; we read and train on them.
    let py_wds = dir.path().join("pywds");
    std::fs::create_dir_all(&py_wds).unwrap();
    let write = r#"
import json, os, sys, webdataset as wds
src, out = sys.argv[1], sys.argv[2]
classes = sorted(os.listdir(src))
items = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(src, c)))]
lengths = []
with wds.ShardWriter(os.path.join(out, "py-train-%04d.tar"), maxcount=9) as sink:
    for i, (c, f) in enumerate(items):
        with open(os.path.join(src, c, f), "rb") as fh:
            sink.write({"__key__": "s%05d" % i, "jpg": fh.read(), "cls": classes.index(c)})
names = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
counts = [min(9, len(items) - 9 * i) for i in range(len(names))]
info = {"name": "py", "splits": {"train": {"name": "train", "num_samples": len(items),
        "filenames": names, "shard_lengths": counts}}}
json.dump(info, open(os.path.join(out, "_info.json"), "w"))
"#;
    let o = Command::new(&py).arg("-c").arg(write).arg(img.join("train")).arg(&py_wds).output().unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let split = shards::open_split(&py_wds, "train", None).unwrap();
    let folder = ImageFolder::open_with_index_dir(&img.join("train"), None).unwrap();
    // Their info has no class names: the classes are the label indices.
    let by_label = |d: &ImageFolder| {
        let mut v: Vec<(u32, Vec<u8>)> = d.samples.iter().map(|s| (s.label, s.read().unwrap())).collect();
        v.sort();
        v
    };
    assert_eq!(by_label(&split), by_label(&folder));
    let runs = dir.path().join("runs");
    let o = Command::new(common::bin())
        .args(["--data", py_wds.to_str().unwrap(), "--output", runs.to_str().unwrap(), "--name", "py"])
        .args([
            "--arch",
            "resnet18",
            "--train-size",
            "32",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
}

/// A run from shards killed (SIGKILL) mid-epoch, while writing its checkpoint and during
/// evaluation, then resumed, gives the uninterrupted run's metrics.jsonl and summary.csv.
#[test]
fn a_run_from_shards_killed_at_any_instant_resumes_exactly() {
    let dir = common::tmpdir();
    let (img, wds, runs) = (dir.path().join("img"), dir.path().join("wds"), dir.path().join("runs"));
    synthetic::write_dataset(&img, 8, 2, 32, 5).unwrap();
    shard(&img.join("train"), &wds, "train", &["--shard-size", "16"]);
    shard(&img.join("val"), &wds, "validation", &["--shard-size", "16"]);
    let run = |name: &str, fault: Option<&str>| {
        let mut c = Command::new(common::bin());
        c.args(["--data", wds.to_str().unwrap(), "--output", runs.to_str().unwrap(), "--name", name])
            .args(["--arch", "resnet18", "--train-size", "32", "--eval-size", "32", "--batch-size", "8"])
            .args(["--epochs", "2", "--device", "cpu", "--workers", "2", "--checkpoint-every", "3"])
            .args(["--warmup-epochs", "0.5", "--log-every", "1000"]);
        if let Some(f) = fault {
            c.env("RESNET_TRAIN_FAULT", f);
        }
        c.output().unwrap()
    };
    let history = |name: &str| common::history_without_wall_clock(&runs.join(name));
    let full = run("full", None);
    assert!(full.status.success(), "{}", common::output_text(&full));
    let want = history("full");
    assert_eq!((want.0.len(), want.1.len()), (20, 3));
    for (i, fault) in ["step@8", "write:last.safetensors@1", "eval@1", "step@14"].iter().enumerate() {
        let name = format!("kill{i}");
        let killed = run(&name, Some(fault));
        assert_eq!(killed.status.code(), None, "{fault}: not killed: {}", common::output_text(&killed));
        let o = Command::new(common::bin()).arg("--resume").arg(runs.join(&name)).output().unwrap();
        assert!(o.status.success(), "{fault}: {}", common::output_text(&o));
        assert_eq!(history(&name), want, "{fault} then resume differs");
    }
}

/// `class_map` names the classes of shards whose info names none (timm's `class_map`; the first
/// word of each line, as in ImageNet's LOC_synset_mapping.txt); a label beyond it is a bad sample.
#[test]
fn a_class_map_names_the_classes_of_unnamed_shards() {
    let dir = common::tmpdir();
    let jpg = std::fs::read(common::repo().join("tests/fixtures").join(first_jpeg())).unwrap();
    let d = dir.path().join("wds");
    std::fs::create_dir_all(d.join("train")).unwrap();
    write_tar(
        &d.join("train/a.tar"),
        &[("k1.jpg", &jpg), ("k1.cls", b"0"), ("k2.jpg", &jpg), ("k2.cls", b"2")],
    );
    let map = dir.path().join("map.txt");
    std::fs::write(&map, "n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01484850 great white shark\n")
        .unwrap();
    let names = shards::read_class_map(&map).unwrap();
    assert_eq!(names, ["n01440764", "n01443537", "n01484850"]);
    let split = shards::open_split_named(&d, "train", None, Some(&names)).unwrap();
    assert_eq!(split.classes, names);
    // A label beyond the map's classes: a bad sample, named.
    let split = shards::open_split_named(&d, "train", None, Some(&names[..2])).unwrap();
    let err = split.samples[1].read().unwrap_err().to_string();
    assert!(err.contains("a.tar:k2.jpg") && err.contains("out of range"), "{err}");
    std::fs::write(&map, "a\nb\na\n").unwrap();
    let err = shards::read_class_map(&map).unwrap_err().to_string();
    assert!(err.contains("map.txt") && err.contains("\"a\" is named twice"), "{err}");
}

/// The shard stream's batches do not depend on the number of decode threads: 1 and 2 workers
/// train the same run, loss for loss.
#[test]
fn a_shard_streams_batches_do_not_depend_on_the_decode_threads() {
    let dir = common::tmpdir();
    let (img, wds, runs) = (dir.path().join("img"), dir.path().join("wds"), dir.path().join("runs"));
    synthetic::write_dataset(&img, 4, 1, 32, 9).unwrap();
    shard(&img.join("train"), &wds, "train", &["--shard-size", "7"]);
    let one = train_with(&wds, &runs, "one", &["--workers", "1", "--shuffle-buffer", "12"]);
    let two = train_with(&wds, &runs, "two", &["--workers", "2", "--shuffle-buffer", "12"]);
    assert_eq!(one, two);
    let losses =
        |name: &str| common::step_records(&runs.join(name)).iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(losses("one"), losses("two"));
}
