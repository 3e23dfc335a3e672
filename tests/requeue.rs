//! `--auto-resume`: one command for a job's first start and every requeue. Killed mid-run, the
//! same command continues it; run again after the end, it has nothing to do; with a key that
//! defines the run changed, it is refused, naming the key.

mod common;

use resnet_train::data::synthetic;
use resnet_train::train::metrics::RunLog;
use std::path::Path;
use std::process::Command;

fn train(args: &[String], fault: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(common::bin());
    cmd.arg("train").args(args);
    match fault {
        Some(f) => cmd.env("RESNET_TRAIN_FAULT", f),
        None => cmd.env_remove("RESNET_TRAIN_FAULT"),
    };
    let out = cmd.output().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), s(&out.stdout) + &s(&out.stderr))
}

/// (epoch, train loss, top-1) of every epoch of a run.
fn epochs(run: &Path) -> Vec<(usize, f64, Option<f64>)> {
    RunLog::read_summary(&run.join("summary.csv"))
        .iter()
        .map(|r| (r.epoch, r.train_loss, r.eval_top1))
        .collect()
}

#[test]
fn the_same_command_starts_continues_and_finishes_a_run() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap(); // 40 images: 5 steps per epoch
    let out = dir.path().join("runs");
    let command = |name: &str, extra: &[&str]| -> Vec<String> {
        let base = [
            "--data",
            data.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--name",
            name,
            "--auto-resume",
            "--arch",
            "resnet18",
            "--train-size",
            "32",
            "--eval-size",
            "32",
            "--device",
            "cpu",
            "--batch-size",
            "8",
            "--checkpoint-every",
            "3",
            "--torch-threads",
            "1",
            "--log-every",
            "1000",
        ];
        let epochs: &[&str] = if extra.contains(&"--epochs") { &[] } else { &["--epochs", "2"] };
        base.iter().chain(epochs).chain(extra).map(|s| s.to_string()).collect()
    };
    // First start, killed at its 7th step (after the checkpoint of step 6).
    let (code, text) = train(&command("q", &[]), Some("step@7"));
    assert_eq!(code, None, "killed: {text}");
    // The requeue: the same command continues from the checkpoint.
    let (code, text) = train(&command("q", &[]), None);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("resuming at epoch 1 step 6"), "{text}");
    // Again after the end: nothing left to train.
    let (code, text) = train(&command("q", &[]), None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(epochs(&out.join("q")).len(), 2);
    // The uninterrupted run's numbers.
    let (code, text) = train(&command("whole", &[]), None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(epochs(&out.join("q")), epochs(&out.join("whole")));
    // A key that defines the run, changed: refused by name; one a resume may change: accepted.
    let (code, text) = train(&command("q", &["--lr", "0.5"]), None);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--lr (0.1 -> 0.5)"), "{text}");
    let (code, text) = train(&command("q", &["--epochs", "3"]), None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(epochs(&out.join("q")).len(), 3);
    // Without --name there is no folder to find again.
    let no_name: Vec<String> = command("x", &[]).into_iter().filter(|a| a != "--name" && a != "x").collect();
    let (code, text) = train(&no_name, None);
    assert!(code == Some(2) && text.contains("--auto-resume needs --name"), "{text}");
}
