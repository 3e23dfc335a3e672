//! A number that is wrong must not be printed as if it were right: a batch larger than the data,
//! class folders that do not match the model's, unreadable images, names that leave the output
//! folder, damaged checkpoints, logs deleted under a run, ReaL labels for no image. Each case as a
//! user meets it, on the command line (docs/reliability.md lists them).

mod common;

use resnet_train::data::synthetic;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::bin()).args(args).env_remove("RESNET_TRAIN_FAULT").output().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout) + &s(&out.stderr))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A tiny run's flags: ResNet-18 at 32 px on CPU, quiet.
const TINY: [&str; 12] = [
    "--arch",
    "resnet18",
    "--train-size",
    "32",
    "--eval-size",
    "32",
    "--device",
    "cpu",
    "--log-every",
    "1000",
    "--torch-threads",
    "1",
];

/// Trains `steps` steps of a tiny run named `name` on `data`; returns its folder.
fn tiny_run(data: &Path, out: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let (d, o) = (s(data), s(out));
    let args =
        [&["train", "--data", &d, "--output", &o, "--name", name, "--batch-size", "8"], &TINY[..], extra];
    let (code, text) = run(&args.concat());
    assert_eq!(code, 0, "{text}");
    out.join(name)
}

fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(image_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_tree(src: &Path, dst: &Path) {
    for f in image_files(src) {
        let to = dst.join(f.strip_prefix(src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to).unwrap();
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_batch_larger_than_the_data_is_refused_before_the_run_folder() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap(); // 80 train images
    let out = dir.path().join("runs");
    let (d, o) = (s(&data), s(&out));
    let base =
        [&["train", "--data", &d, "--output", &o, "--name", "r", "--epochs", "100000"], &TINY[..]].concat();
    // The default batch (256), and 8 x 30 accumulated micro-batches: no optimizer step per epoch.
    for (extra, advice) in [
        (&[][..], "Use --batch-size 80 or less"),
        (&["--batch-size", "8", "--accum-steps", "30"][..], "--accum-steps 10 or less (with --batch-size 8)"),
    ] {
        let (code, text) = run(&[&base[..], extra].concat());
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("80 training images") && text.contains(advice), "{text}");
        assert!(!out.join("r").exists(), "the refused run left a folder: {text}");
    }
    // 80 images, batch 8 x accumulation 10: one step per epoch trains.
    let (code, text) =
        run(&[&base[..], &["--batch-size", "8", "--accum-steps", "10", "--max-steps", "1"]].concat());
    assert_eq!(code, 0, "{text}");
}

/// A checkpoint of a 10-class run and its val folder (20 images, 2 per class).
fn checkpoint_and_val(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    synthetic::write_dataset(&data, 4, 2, 32, 3).unwrap();
    let run_dir = tiny_run(&data, &dir.join("runs"), "r", &["--max-steps", "2", "--epochs", "1"]);
    (run_dir.join("last.safetensors"), data.join("val"))
}

fn eval(checkpoint: &Path, val: &Path, json_out: &Path) -> (i32, String) {
    let (c, v, j) = (s(checkpoint), s(val), s(json_out));
    run(&[
        "eval",
        "--checkpoint",
        &c,
        "--data",
        &v,
        "--device",
        "cpu",
        "--json",
        &j,
        "--max-bad-fraction",
        "0.2",
    ])
}

#[test]
fn eval_matches_class_folders_by_name_and_leaves_out_what_matches_none() {
    let dir = common::tmpdir();
    let (ckpt, val) = checkpoint_and_val(dir.path());
    let classes: Vec<String> = {
        let mut c: Vec<String> =
            std::fs::read_dir(&val).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        c.sort();
        c
    };
    // One folder renamed so that it sorts first: before, every label shifted by one.
    let renamed = dir.path().join("renamed");
    copy_tree(&val, &renamed);
    let last = &classes[classes.len() - 1];
    std::fs::rename(renamed.join(last), renamed.join("aaa-stray")).unwrap();
    // The same folder with that class removed: the score the renamed folder must give.
    let without = dir.path().join("without");
    copy_tree(&val, &without);
    std::fs::remove_dir_all(without.join(last)).unwrap();

    let (code, text) = eval(&ckpt, &renamed, &dir.path().join("renamed.json"));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("left out 1 class folder") && text.contains("aaa-stray"), "{text}");
    let (code, text) = eval(&ckpt, &without, &dir.path().join("without.json"));
    assert_eq!(code, 0, "{text}");
    let (a, b) = (json(&dir.path().join("renamed.json")), json(&dir.path().join("without.json")));
    assert_eq!(a["images"], 18, "{a}");
    for k in ["images", "top1", "top5", "loss"] {
        assert_eq!(a[k], b[k], "{k}: {a} vs {b}");
    }
    assert_eq!(a["left_out_classes"], serde_json::json!(["aaa-stray"]), "{a}");

    // No folder among the model's classes: refused, not scored in sorted order.
    let strangers = dir.path().join("strangers");
    for (i, c) in classes.iter().enumerate() {
        copy_tree(&val.join(c), &strangers.join(format!("x{i}")));
    }
    let (code, text) = eval(&ckpt, &strangers, &dir.path().join("x.json"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("none of its 10 class folders") && text.contains("--classes"), "{text}");
}

#[test]
fn unreadable_images_are_left_out_and_counted_not_scored_as_substitutes() {
    let dir = common::tmpdir();
    let (ckpt, val) = checkpoint_and_val(dir.path());
    let damaged = dir.path().join("damaged");
    copy_tree(&val, &damaged);
    let clean = dir.path().join("clean");
    copy_tree(&val, &clean);
    let files = image_files(&damaged);
    for f in [&files[1], &files[7]] {
        std::fs::write(f, b"\xff\xd8\xff not a jpeg").unwrap();
        std::fs::remove_file(clean.join(f.strip_prefix(&damaged).unwrap())).unwrap();
    }
    let (code, text) = eval(&ckpt, &damaged, &dir.path().join("damaged.json"));
    assert_eq!(code, 0, "{text}");
    // Both files are named, and the count says two.
    assert_eq!(text.matches("unreadable image").count() - 1, 2, "{text}");
    assert!(text.contains("18 images") && text.contains("2 unreadable image(s) left out"), "{text}");
    let (code, text) = eval(&ckpt, &clean, &dir.path().join("clean.json"));
    assert_eq!(code, 0, "{text}");
    let (a, b) = (json(&dir.path().join("damaged.json")), json(&dir.path().join("clean.json")));
    assert_eq!((a["images"].as_u64(), a["left_out_images"].as_u64()), (Some(18), Some(2)), "{a}");
    for k in ["images", "top1", "top5", "loss"] {
        assert_eq!(a[k], b[k], "{k}: {a} vs {b}");
    }
    // The per-epoch evaluation leaves them out too and says so.
    let data = dir.path().join("data");
    let bad_val = image_files(&data.join("val"))[3].clone();
    std::fs::write(&bad_val, b"not an image").unwrap();
    let (d, o) = (s(&data), s(&dir.path().join("runs")));
    let args = [
        &["train", "--data", &d, "--output", &o, "--name", "e", "--batch-size", "8", "--epochs", "1"],
        &TINY[..],
    ];
    let (code, text) = run(&[&args.concat()[..], &["--max-bad-fraction", "0.1"]].concat());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("of 20 val images: 1 unreadable left out"), "{text}");
}

#[test]
fn run_names_stay_one_folder_under_the_output() {
    let dir = common::tmpdir();
    let o = s(&dir.path().join("runs"));
    for name in ["../../x", "/abs", ".", "..", "a\nb", "a/b", ""] {
        let (code, text) = run(&["train", "--output", &o, "--name", name, "--epochs", "1"]);
        assert_eq!(code, 2, "{name:?}: {text}");
        assert!(text.contains("--name"), "{name:?}: {text}");
    }
    assert!(!dir.path().join("runs").exists() && !dir.path().join("x").exists());
}

#[test]
fn a_damaged_checkpoint_is_refused_on_resume_naming_its_tensors() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap();
    let run_dir = tiny_run(&data, &dir.path().join("runs"), "r", &["--max-steps", "2"]);
    let last = run_dir.join("last.safetensors");
    let mut bytes = std::fs::read(&last).unwrap();
    // Overwrite 64 bytes in the middle of the tensor data (the header is at the front).
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&last, bytes).unwrap();
    let (code, text) = run(&["train", "--resume", &s(&run_dir), "--max-steps", "4"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("last.safetensors") && text.contains("damaged") && text.contains("tensor"),
        "{text}"
    );
    // eval refuses it too.
    let (code, text) =
        run(&["eval", "--checkpoint", &s(&last), "--data", &s(&data.join("val")), "--device", "cpu"]);
    assert!(code != 0 && text.contains("damaged"), "{text}");
}

#[test]
fn a_resume_whose_logs_were_deleted_says_so() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap();
    let run_dir = tiny_run(&data, &dir.path().join("runs"), "r", &["--max-steps", "3"]);
    std::fs::remove_file(run_dir.join("metrics.jsonl")).unwrap();
    let (code, text) = run(&["train", "--resume", &s(&run_dir), "--max-steps", "4"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("metrics.jsonl holds 0 of the run's first 3 step records"), "{text}");
}

#[test]
fn real_labels_for_no_image_are_not_a_score() {
    let dir = common::tmpdir();
    synthetic::write_dataset(&dir.path().join("src"), 1, 0, 32, 9).unwrap();
    let val = dir.path().join("val");
    for (n, f) in image_files(&dir.path().join("src/train")).iter().take(3).enumerate() {
        let class = val.join(["a", "b", "c"][n]);
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(f, class.join(format!("ILSVRC2012_val_{:08}.JPEG", n + 1))).unwrap();
    }
    std::fs::write(dir.path().join("real.json"), "[[], [], []]").unwrap();
    let m = s(&dir.path().join("m.safetensors"));
    let (code, text) = run(&["init", "--arch", "resnet18", "--num-classes", "3", "--out", &m]);
    assert_eq!(code, 0, "{text}");
    let j = dir.path().join("e.json");
    let (real, v) = (s(&dir.path().join("real.json")), s(&val));
    let (code, text) = run(&[
        "eval",
        "--checkpoint",
        &m,
        "--data",
        &v,
        "--size",
        "32",
        "--crop-pct",
        "1",
        "--device",
        "cpu",
        "--real-labels",
        &real,
        "--json",
        &s(&j),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no image with ReaL labels, top-1 n/a"), "{text}");
    assert_eq!(json(&j)["real"]["top1"], serde_json::Value::Null);
}

/// Clears the immutable attribute it set, so the temp folder can be removed.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_stale_lock_that_cannot_be_removed_is_named_as_such() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap();
    let run_dir = tiny_run(&data, &dir.path().join("runs"), "r", &["--max-steps", "2"]);
    // The lock of a process that is gone, on this host.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    std::fs::write(run_dir.join("lock"), format!("pid = {pid}\nhost = {host:?}\n")).unwrap();
    let immutable = Command::new("chattr").arg("+i").arg(&run_dir).status().is_ok_and(|s| s.success());
    if !immutable {
        eprintln!(
            "SKIP a_stale_lock_that_cannot_be_removed_is_named_as_such: chattr +i is not possible here"
        );
        return;
    }
    let _undo = Immutable(run_dir.clone());
    let (code, text) = run(&["train", "--resume", &s(&run_dir), "--max-steps", "4"]);
    assert_ne!(code, 0, "{text}");
    // The lock is taken (its holder is gone); the first write into the folder says why it fails.
    assert!(text.contains(&s(&run_dir)) && text.contains("not permitted"), "{text}");
    assert!(!text.contains("keeps taking it") && !text.contains("in use by"), "{text}");
}

/// The run lock is a flock: a holder killed with SIGKILL and not yet reaped (a zombie, which
/// `kill(pid, 0)` still finds) does not block the resume that a requeue starts at once.
#[test]
fn a_killed_holder_not_yet_reaped_does_not_block_a_resume() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 1, 32, 3).unwrap();
    let (d, o) = (s(&data), s(&dir.path().join("runs")));
    let run_dir = dir.path().join("runs/z");
    let args = [
        &["train", "--data", &d, "--output", &o, "--name", "z", "--batch-size", "8", "--epochs", "50"],
        &TINY[..],
    ]
    .concat();
    let mut child = Command::new(common::bin())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until(120, "the run's first steps", || {
        std::fs::read_to_string(run_dir.join("metrics.jsonl")).is_ok_and(|t| t.lines().count() >= 2)
    });
    child.kill().unwrap(); // SIGKILL; not waited for: a zombie until the end of this test
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    common::wait_until(10, "the killed run to exit", || {
        std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .map_or(true, |st| st.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
    });
    let (code, text) = run(&["train", "--resume", &s(&run_dir), "--max-steps", "3"]);
    assert_eq!(code, 0, "holder state before: {stat}\n{text}");
    assert!(text.contains("taking over the lock"), "{text}");
    child.wait().unwrap();
}
