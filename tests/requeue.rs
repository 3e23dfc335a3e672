//! `--auto-resume`: one command for a job's first start and every requeue. Killed mid-run, the
//! same command continues it; run again after the end, it has nothing to do; with a key that
//! defines the run changed, it is refused, naming the key.

mod common;

use resnet_train::data::synthetic;
use resnet_train::train::run::metrics::RunLog;
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
    assert!(text.contains("--lr (unset -> 0.5)"), "{text}");
    let (code, text) = train(&command("q", &["--epochs", "3"]), None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(epochs(&out.join("q")).len(), 3);
    // Without --name there is no folder to find again.
    let no_name: Vec<String> = command("x", &[]).into_iter().filter(|a| a != "--name" && a != "x").collect();
    let (code, text) = train(&no_name, None);
    assert!(code == Some(2) && text.contains("--auto-resume needs --name"), "{text}");
}

/// scripts/slurm/train.sbatch's cycle without SLURM: `srun` and `scontrol` are stand-ins on PATH
/// (srun runs the one task; scontrol records what it is asked), SLURM's variables are set, and the
/// signals are SLURM's: SIGUSR1 to the batch script near the time limit (the run saves and goes
/// on, the job is requeued), then SIGTERM to the task (it saves and exits 143). The requeued job,
/// the same script again, finishes the run with the uninterrupted run's numbers.
#[test]
fn the_slurm_script_saves_requeues_and_its_next_start_finishes_the_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap(); // 40 images: 5 steps per epoch
    let bin = dir.path().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let scontrol_log = dir.path().join("scontrol.log");
    for (name, body) in [
        ("srun", "while [ \"${1#--}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n".to_string()),
        (
            "scontrol",
            format!(
                "echo \"$@\" >> {}\n[ \"$1\" = show ] && echo localhost\nexit 0\n",
                scontrol_log.display()
            ),
        ),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = dir.path().join("run.toml");
    let runs = dir.path().join("runs");
    std::fs::write(
        &config,
        format!(
            "data = {data:?}\noutput = {runs:?}\narch = \"resnet18\"\ntrain_size = 32\neval_size = 32\ndevice = \"cpu\"\n\
             batch_size = 8\nepochs = 20\ntorch_threads = 1\nlog_every = 1000\n"
        ),
    )
    .unwrap();
    let script = common::repo().join("scripts/slurm/train.sbatch");
    let job = |name: &str| {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        Command::new("bash")
            .arg(&script)
            .arg(&config)
            .arg(name)
            .env("PATH", path)
            .env("RESNET_TRAIN", common::bin())
            .env("SLURM_JOB_ID", "42")
            .env("SLURM_JOB_NODELIST", "node1")
            .env("SLURM_NTASKS", "1")
            .env("SLURM_PROCID", "0")
            .env_remove("RESNET_TRAIN_FAULT")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let run = runs.join("slurm");
    let first = job("slurm");
    let steps = || std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
    common::wait_until(120, "the job's first steps", || steps() >= 3);
    // Near the time limit: SIGUSR1 to the batch script.
    resnet_train::ffi::process::send_signal(first.id(), libc::SIGUSR1);
    common::wait_until(60, "the save and the requeue", || {
        run.join("last.safetensors").is_file()
            && std::fs::read_to_string(&scontrol_log).is_ok_and(|t| t.contains("requeue 42"))
    });
    // The requeue ends the task with SIGTERM (the task is the trainer: the lock names it).
    let task: u32 = std::fs::read_to_string(run.join("lock"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("pid = ")?.trim().parse().ok())
        .unwrap();
    resnet_train::ffi::process::send_signal(task, libc::SIGTERM);
    let out = first.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{text}");
    assert!(text.contains("SIGUSR1: saved the run") && text.contains("SIGTERM: saved the run"), "{text}");
    let stopped_at = steps();
    assert!(stopped_at < 100, "the job was to stop mid-run: {stopped_at} steps\n{text}");
    // The requeued job: the same script, which continues the run to its end.
    let second = job("slurm").wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&second.stdout).into_owned() + &String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{text}");
    assert!(text.contains("resuming at epoch"), "{text}");
    let whole = job("whole").wait_with_output().unwrap();
    assert_eq!(whole.status.code(), Some(0));
    assert_eq!(epochs(&run), epochs(&runs.join("whole")));
}
