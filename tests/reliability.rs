//! Never lose a run: a small deterministic run killed with SIGKILL at exact instants (set-up,
//! before the first checkpoint, during checkpoint and summary writes, during evaluation, mid-epoch)
//! and resumed gives the uninterrupted run's metrics.jsonl, summary.csv and TensorBoard scalars; SIGTERM saves and
//! exits 143; one process per run folder; a resume refuses settings that would change the run.
//! The kills come from `RESNET_TRAIN_FAULT` (src/fault.rs): a real SIGKILL at a chosen point.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

/// 80 train / 20 val images, batch 8: 10 steps per epoch, 2 epochs, `last` every 3 steps.
fn setup() -> Setup {
    let tmp = common::tmpdir();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    resnet_train::data::synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap();
    let config = root.join("run.toml");
    let text = format!(
        "data = {:?}\narch = \"resnet18\"\nact = \"relu\"\nepochs = 2\nbatch_size = 8\nlr_base = 0.4\n\
         warmup_epochs = 0.5\nsmoothing = 0.1\ntrain_size = 32\neval_size = 32\ndevice = \"cpu\"\n\
         workers = 2\nlog_every = 1000\nkeep_last = 1\ncheckpoint_every = 3\noutput = {:?}\n",
        data,
        root.join("runs")
    );
    std::fs::write(&config, text).unwrap();
    Setup { _tmp: tmp, root, config }
}

fn train(s: &Setup, args: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(common::bin());
    c.arg("train").arg("--config").arg(&s.config).args(args);
    if let Some(f) = fault {
        c.env("RESNET_TRAIN_FAULT", f);
    }
    c.output().expect("binary runs")
}

fn resume(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::bin()).arg("--resume").arg(dir).args(args).output().expect("binary runs")
}

fn text(o: &Output) -> String {
    common::output_text(o)
}

/// TensorBoard's scalars of a run, all event files together, without img/s: `(tag, step, value)`
/// sorted by tag and step, so a step written twice (by a killed attempt and its resume) shows.
type Scalars = Vec<(String, i64, f32)>;

/// metrics.jsonl, summary.csv and TensorBoard's scalars without their wall-clock fields (img/s,
/// elapsed seconds, step and data-wait times).
fn history(run: &Path) -> (Vec<serde_json::Value>, Vec<String>, Scalars) {
    let steps = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            for wall_clock in ["img_per_s", "elapsed_s", "data_s", "step_s"] {
                m.remove(wall_clock);
            }
            v
        })
        .collect();
    let mut scalars = Scalars::new();
    for file in std::fs::read_dir(run.join("tb")).unwrap() {
        let path = file.unwrap().path();
        scalars.extend(resnet_train::train::run::tensorboard::read_scalars(&path).unwrap());
    }
    scalars.retain(|(tag, _, _)| tag != "train/img_per_s" && tag != "train/data_wait_fraction");
    scalars.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    (steps, common::summary_without_time(run), scalars)
}

#[test]
fn sigkill_at_any_instant_then_resume_gives_the_uninterrupted_run() {
    let s = setup();
    let full = train(&s, &["--name", "full"], None);
    assert!(full.status.success(), "{}", text(&full));
    let want = history(&s.root.join("runs/full"));
    assert_eq!((want.0.len(), want.1.len()), (20, 3));
    let loss_steps: Vec<i64> = want.2.iter().filter(|s| s.0 == "train/loss").map(|s| s.1).collect();
    assert_eq!(loss_steps, (0..20).collect::<Vec<_>>(), "TensorBoard holds every step once");

    // (kill point, how to continue): `write:F@n` is the n-th write of F, caught after its temp
    // file is on disk and before the rename; `last` is written at steps 3, 6, 9, the end of
    // epoch 0 (10), 12, 15, 18 and the end (20).
    let cases = [
        ("setup@1", "resume"),
        ("step@2", "resume"),  // before the first checkpoint
        ("step@2", "restart"), // the same, started again with the original command
        ("write:last.safetensors@1", "resume"),
        ("step@8", "resume"),
        ("eval@1", "resume"), // 1 step after the last checkpoint, and the epoch's loss mean
        ("write:summary.csv@1", "resume"),
        ("write:last.safetensors@4", "resume"), // the epoch-end checkpoint
        ("eval@2", "resume"),
    ];
    let mut report = Vec::new();
    for (i, (fault, how)) in cases.iter().enumerate() {
        let name = format!("kill{i}");
        let run = s.root.join("runs").join(&name);
        let killed = train(&s, &["--name", &name], Some(fault));
        assert_eq!(killed.status.code(), None, "{fault}: not killed: {}", text(&killed));
        let done = if *how == "resume" { resume(&run, &[]) } else { train(&s, &["--name", &name], None) };
        assert!(done.status.success(), "{fault} then {how}: {}", text(&done));
        let got = history(&run);
        assert_eq!(got.0, want.0, "{fault} then {how}: metrics.jsonl differs");
        assert_eq!(got.1, want.1, "{fault} then {how}: summary.csv differs");
        assert_eq!(got.2, want.2, "{fault} then {how}: TensorBoard's scalars differ");
        let leftovers: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp") || n == "lock")
            .collect();
        assert!(leftovers.is_empty(), "{fault}: left {leftovers:?}");
        report.push(format!("{fault} + {how}: identical"));
    }
    eprintln!("{}", report.join("\n"));
}

/// SIGUSR1 saves `last` mid-epoch and training goes on; SIGTERM then saves and stops (143), and
/// the resumed run equals the uninterrupted one.
#[test]
fn sigterm_saves_the_step_and_exits_143_then_resume_is_exact() {
    let s = setup();
    let full = train(&s, &["--name", "full"], None);
    assert!(full.status.success(), "{}", text(&full));
    let run = s.root.join("runs/term");
    let mut child = Command::new(common::bin())
        .args(["train", "--config"])
        .arg(&s.config)
        .args(["--name", "term", "--checkpoint-every", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are logged (the handlers are installed before the first step).
    common::wait_until(120, "the run did not start", || common::logged_steps(&run) >= 4);
    let pid = child.id().to_string();
    // Save now: `last` appears before the first epoch ends (10 steps; no periodic checkpoints).
    assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    let last = run.join("last.safetensors");
    common::wait_until(120, "SIGUSR1 saved nothing", || last.exists());
    let (_, saved) = resnet_train::train::run::checkpoint::load_last(&last).unwrap();
    assert!((4..10).contains(&saved.step) && saved.epoch == 0, "saved at step {}", saved.step);
    assert!(child.try_wait().unwrap().is_none(), "training goes on after SIGUSR1");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(143), "{msg}");
    assert!(msg.contains(&format!("SIGUSR1: saved the run at step {}", saved.step)), "{msg}");
    assert!(msg.contains("SIGTERM: saved the run at step"), "{msg}");
    // The checkpoint is at the step the run stopped at: nothing was lost.
    let (_, state) = resnet_train::train::run::checkpoint::load_last(&run.join("last.safetensors")).unwrap();
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(state.step, logged, "the saved step is the last logged one");
    assert!(!run.join("lock").exists(), "the lock is released");
    let done = resume(&run, &[]);
    assert!(done.status.success(), "{}", text(&done));
    assert_eq!(history(&run), history(&s.root.join("runs/full")));
}

#[test]
fn one_process_per_run_folder_and_resume_keeps_the_runs_settings() {
    let s = setup();
    let run = s.root.join("runs/r");
    let first = train(&s, &["--name", "r", "--max-steps", "4"], None);
    assert!(first.status.success(), "{}", text(&first));
    let config_before = std::fs::read(run.join("config.toml")).unwrap();

    // A live process holds the folder: a second one is refused, naming it.
    let lock = resnet_train::train::run::run_dir::RunLock::acquire(&run).unwrap();
    let refused = resume(&run, &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("in use by process {}", std::process::id())),
        "{}",
        text(&refused)
    );
    let again = train(&s, &["--name", "r"], None);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    drop(lock);

    // Settings that would change the run are refused by name, before any file is touched.
    let bad = resume(&run, &["--arch", "resnet34", "--batch-size", "4", "--seed", "1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let msg = text(&bad);
    assert!(msg.contains("--arch") && msg.contains("--batch-size") && msg.contains("--seed"), "{msg}");
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config_before);
    // Safe ones are accepted, recorded as an event and kept in config.toml.
    let ok = resume(&run, &["--epochs", "3", "--max-steps", "6"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let recs = common::step_records(&run);
    let event = recs[4].event.as_deref().unwrap_or_default();
    assert!(event.contains("epochs 2 -> 3"), "{event}");
    let saved = resnet_train::train::config::read_file(&run.join("config.toml")).unwrap();
    assert_eq!((saved.epochs, saved.max_steps), (3, 0));

    // The dataset moved (a job staging it to local disk): --data may follow it, if its classes are
    // the run's. With a class folder renamed the labels would change meaning: refused, naming it.
    let copy_data = |name: &str| {
        let to = s.root.join(name);
        let ok = Command::new("cp").arg("-r").arg(s.root.join("data")).arg(&to).status().unwrap();
        assert!(ok.success());
        to
    };
    let renamed = copy_data("data-renamed");
    let first_class = std::fs::read_dir(renamed.join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .min()
        .unwrap();
    for split in ["train", "val"] {
        std::fs::rename(renamed.join(split).join(&first_class), renamed.join(split).join("zzz")).unwrap();
    }
    let config_before = std::fs::read(run.join("config.toml")).unwrap();
    let out = resume(&run, &["--data", renamed.to_str().unwrap()]);
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains("classes differ") && msg.contains(&format!("missing now: 1 ({first_class})")),
        "{msg}"
    );
    assert!(msg.contains("new: 1 (zzz)"), "{msg}");
    assert_eq!(
        std::fs::read(run.join("config.toml")).unwrap(),
        config_before,
        "a refused resume changes nothing"
    );
    // Moved, with one more training image: resumed, with a warning that the data order changes.
    let moved = copy_data("data-moved");
    let class_dir = moved.join("train").join(&first_class);
    let image = std::fs::read_dir(&class_dir).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&image, class_dir.join("extra").with_extension(image.extension().unwrap())).unwrap();
    let out = resume(&run, &["--data", moved.to_str().unwrap(), "--max-steps", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("holds 81 training images, the run started with 80"), "{}", text(&out));
    let saved = resnet_train::train::config::read_file(&run.join("config.toml")).unwrap();
    assert_eq!(saved.data.as_deref(), Some(moved.as_path()));

    // A folder that is not a run says so.
    let empty = s.root.join("not-a-run");
    std::fs::create_dir_all(&empty).unwrap();
    let out = resume(&empty, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a run folder"), "{}", text(&out));
}
