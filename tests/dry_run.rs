//! `train --dry-run`: what a run does before its first step, a few timed steps and the estimate,
//! and nothing written; it fails where the run would.

mod common;

use resnet_train::data::synthetic;
use std::process::Command;

fn train(cwd: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(common::bin()).current_dir(cwd).arg("train").args(args).output().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout) + &s(&out.stderr))
}

#[test]
fn a_dry_run_times_steps_writes_nothing_and_fails_where_the_run_would() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap(); // 40 images: 5 steps of 8 per epoch
    let d = data.to_str().unwrap();
    let tiny = [
        "--data",
        d,
        "--name",
        "dry",
        "--arch",
        "resnet18",
        "--train-size",
        "32",
        "--eval-size",
        "32",
        "--device",
        "cpu",
        "--torch-threads",
        "1",
        "--epochs",
        "4",
        "--dry-run",
    ];
    let (code, text) =
        train(dir.path(), &[&tiny[..], &["--batch-size", "8", "--dry-run-steps", "2"]].concat());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("data       40 train / 10 val images, 10 classes"), "{text}");
    assert!(text.contains("x 5 steps, global batch 8"), "{text}");
    assert!(text.contains("dry run    2 steps timed") && text.contains("the run's 4 epochs"), "{text}");
    assert!(!dir.path().join("runs").exists(), "a dry run wrote runs/");
    // Where the run would be refused, so is the dry run (a batch larger than the data).
    let (code, text) = train(dir.path(), &[&tiny[..], &["--batch-size", "64"]].concat());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("40 training images"), "{text}");
    assert!(!dir.path().join("runs").exists());
}
