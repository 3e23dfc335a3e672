//! `resnet-train study`: a tiny 2 x 2 study (variants x seeds) killed mid-run and continued, whose
//! resumed cell equals the same cell run alone, whose parallel jobs give the sequential numbers,
//! which refuses a changed grid, and whose tables hold the statistics of the runs' own numbers.
//! (The statistics themselves are unit tests against closed forms in src/experiments/stats.rs.)

mod common;

use resnet_train::data::synthetic;
use resnet_train::experiments::stats::{paired, Better, Summary};
use resnet_train::train::run::metrics::RunLog;
use std::path::Path;
use std::process::Command;

fn study_toml(data: &Path, out: &Path, seeds: &str) -> String {
    format!(
        r#"name = "tiny"
output = "{out}"
seeds = {seeds}
baseline = "relu"
at_epochs = [1]
bench_steps = 1

[train]
data = "{data}"
arch = "resnet18"
epochs = 2
batch_size = 8
lr_base = 0.4
warmup_epochs = 0.5
train_size = 32
eval_size = 32
device = "cpu"
log_every = 1000
keep_last = 1

[[variants]]
name = "relu"
act = "relu"

[[variants]]
name = "polynorm"
act = "polynorm"
order = 3
"#,
        out = out.display(),
        data = data.display()
    )
}

fn study(config: &Path, extra: &[&str], fault: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(common::bin());
    cmd.arg("study").arg("--config").arg(config).args(extra);
    match fault {
        Some(f) => cmd.env("RESNET_TRAIN_FAULT", f),
        None => cmd.env_remove("RESNET_TRAIN_FAULT"),
    };
    let out = cmd.output().expect("run resnet-train study");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// (train loss, top-1) of every epoch of a run folder.
fn epochs(run: &Path) -> Vec<(f64, Option<f64>)> {
    RunLog::read_summary(&run.join("summary.csv")).iter().map(|r| (r.train_loss, r.eval_top1)).collect()
}

#[test]
fn tiny_study_resumes_after_a_kill_runs_in_parallel_and_refuses_a_changed_grid() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap(); // 80 train, 20 val: 10 steps per epoch
    let config = dir.path().join("study.toml");
    let out = dir.path().join("runs");
    std::fs::write(&config, study_toml(&data, &out, "[0, 1]")).unwrap();
    // No --threads: each cell runs this machine's cores' libtorch threads, with --jobs 1 or 2.
    let threads: [&str; 0] = [];

    // Killed at the 25th step of the process: in the second run (polynorm-s0), 5 steps in.
    let (code, text) = study(&config, &threads, Some("step@25"));
    assert_eq!(code, None, "killed by SIGKILL: {text}");
    let (_, list) = study(&config, &["--list"], None);
    let states: Vec<&str> = list.lines().map(|l| l.rsplit('\t').next().unwrap()).collect();
    assert_eq!(states, ["finished", "started", "pending", "pending"], "{list}");

    // The same command continues: the first run is not redone, the second resumes.
    let (code, text) = study(&config, &threads, None);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("run 1/4 relu-s0: done earlier"), "{text}");
    assert!(text.contains("run 2/4 polynorm-s0: resuming"), "{text}");
    let (_, list) = study(&config, &["--list"], None);
    assert_eq!(list.lines().filter(|l| l.ends_with("\tfinished")).count(), 4, "{list}");

    // The resumed run equals the same cell run alone, uninterrupted (exact resume).
    let (code, text) = study(&config, &["--cell", "1", "--name", "alone"], None);
    assert_eq!(code, Some(0), "{text}");
    let resumed = epochs(&out.join("tiny/polynorm-s0"));
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed, epochs(&out.join("alone/polynorm-s0")), "resumed vs uninterrupted");

    // Two jobs at once give the sequential study's numbers (the cells' libtorch threads do not
    // follow --jobs: the thread count changes the CPU reduction order).
    let (code, text) = study(&config, &["--name", "parallel", "--jobs", "2"], None);
    assert_eq!(code, Some(0), "{text}");
    for cell in ["relu-s0", "polynorm-s0", "relu-s1", "polynorm-s1"] {
        let a = epochs(&out.join("tiny").join(cell));
        assert_eq!(a, epochs(&out.join("parallel").join(cell)), "{cell}: parallel vs sequential");
        assert!(out.join("parallel/logs").join(format!("{cell}.log")).is_file());
    }

    // The table: the runs' own numbers through the statistics.
    let csv = std::fs::read_to_string(out.join("tiny/study.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "2 variants x (epoch 1, end):\n{csv}");
    let top1 = |variant: &str, seed: u64| epochs(&out.join(format!("tiny/{variant}-s{seed}")))[1].1.unwrap();
    let relu = [top1("relu", 0), top1("relu", 1)];
    let poly = [top1("polynorm", 0), top1("polynorm", 1)];
    let end = rows.iter().find(|r| r[0] == "polynorm" && r[1] == "end").unwrap();
    let s = Summary::of(&poly);
    let d = paired(&poly, &relu, Better::Higher);
    let num = |x: &str| x.parse::<f64>().unwrap();
    assert!((num(end[3]) - s.mean).abs() < 1e-4 && (num(end[4]) - s.sd).abs() < 1e-4, "{end:?}");
    assert!((num(end[11]) - d.diff.mean).abs() < 1e-4, "paired difference {end:?}");
    // PolyNorm-3 adds 4 scalars at each of ResNet-18's 17 sites (the stem, 2 in each of 8 blocks).
    assert_eq!(end[16], (17 * 4).to_string(), "{end:?}");
    let md = std::fs::read_to_string(out.join("tiny/study.md")).unwrap();
    // bench_steps: each variant's step measured once, after the runs, into the table.
    let costs = std::fs::read_to_string(out.join("tiny/bench.toml")).unwrap();
    assert!(
        costs.contains("[relu]") && costs.contains("[polynorm]") && costs.contains("ms_per_step"),
        "{costs}"
    );
    let ms = |row: &Vec<&str>| row[18].parse::<f64>().unwrap_or(0.0);
    assert!(rows.iter().all(|r| ms(r) > 0.0), "{csv}");
    assert!(md.contains("4 of 4 runs done") && md.contains("at epoch 1") && md.contains("at end"), "{md}");
    assert!(md.contains("| relu | 2 | 0 |") && md.contains("baseline"), "{md}");

    assert!(
        out.join("tiny/study.svg").is_file()
            || !Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists()
    );

    // `report --table` over the run folders gives the study's table (grouped by the -s<seed> names).
    let runs: Vec<String> = ["relu-s0", "polynorm-s0", "relu-s1", "polynorm-s1"]
        .iter()
        .map(|c| out.join("tiny").join(c).display().to_string())
        .collect();
    let figure = dir.path().join("bands.svg");
    let mut args =
        vec!["report", "--table", "--at", "1", "--baseline", "relu", "--out", figure.to_str().unwrap()];
    args.extend(runs.iter().map(String::as_str));
    let out_report = Command::new(common::bin()).args(&args).output().unwrap();
    let report = String::from_utf8_lossy(&out_report.stdout);
    assert!(out_report.status.success(), "{report}{}", String::from_utf8_lossy(&out_report.stderr));
    // (The study's rows also carry the measured step: their last two columns.)
    let variant_rows = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("| relu |") || l.starts_with("| polynorm |"))
            .map(|l| l.split('|').take(13).collect::<Vec<_>>().join("|"))
            .collect()
    };
    assert_eq!(variant_rows(&report).len(), 4, "{report}");
    assert_eq!(variant_rows(&report), variant_rows(&md), "report --table vs study.md");

    // A changed grid under the same name is refused, naming the file.
    std::fs::write(&config, study_toml(&data, &out, "[0, 1, 2]")).unwrap();
    let (code, text) = study(&config, &threads, None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("study.toml") && text.contains("different grid"), "{text}");
}

#[test]
fn bad_study_configs_are_refused_with_the_file_named() {
    let dir = common::tmpdir();
    let config = dir.path().join("bad.toml");
    for (body, want) in [
        ("name = \"x\"\nseeds = []\n[[variants]]\nname = \"a\"\n", "at least one seed"),
        ("name = \"x\"\nseeds = [0, 0]\n[[variants]]\nname = \"a\"\n", "seed 0 is listed twice"),
        ("name = \"x\"\nseeds = [0]\nbaseline = \"b\"\n[[variants]]\nname = \"a\"\n", "baseline \"b\""),
        ("name = \"x\"\nseeds = [0]\n[[variants]]\nname = \"a/b\"\n", "variant name"),
        ("name = \"x\"\nseeds = [0]\n[[variants]]\nname = \"a\"\nlr = \"fast\"\n", "bad training keys"),
        ("name = \"x\"\nseeds = [0]\n[train]\nmax_steps = 5\n[[variants]]\nname = \"a\"\n", "max_steps"),
        ("name = \"x\"\nseeds = [0]\nvariant = []\n", "bad study config"),
    ] {
        std::fs::write(&config, body).unwrap();
        let (code, text) = study(&config, &["--list"], None);
        assert_eq!(code, Some(1), "{body}: {text}");
        assert!(text.contains("bad.toml") && text.contains(want), "{body}: want {want:?} in {text}");
    }
}

#[test]
fn every_shipped_study_config_lists_its_cells() {
    let dir = common::tmpdir();
    let mut checked = 0;
    for entry in std::fs::read_dir(common::repo().join("configs/studies")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".toml") {
            continue;
        }
        let out = dir.path().to_str().unwrap();
        let (code, text) = study(&path, &["--list", "--output", out], None);
        assert_eq!(code, Some(0), "{name}: {text}");
        assert!(text.lines().count() >= 2 && text.contains("pending"), "{name}: {text}");
        checked += 1;
    }
    assert!(checked >= 4, "{checked} study configs");
}

/// `branches = true` (WSD's cooldown branching): the 3-epoch wsd run is forked where a 2-epoch
/// run starts its decay and the fork annealed to 2 epochs. Killed while forking and rerun, the
/// branch equals a 2-epoch wsd run trained on its own (every step's loss and learning rate), the
/// main run is unchanged by it, and the table's 2-epoch point is the branch's end.
#[test]
fn wsd_branches_equal_shorter_runs_trained_alone() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 5).unwrap(); // 40 train, 10 val: 5 steps per epoch
    let out = dir.path().join("runs");
    let keys = [
        ("arch", "\"resnet18\""),
        ("act", "\"relu\""),
        ("batch_size", "8"),
        ("lr", "0.4"),
        ("warmup_epochs", "0.5"),
        ("train_size", "32"),
        ("eval_size", "32"),
        ("device", "\"cpu\""),
        ("log_every", "1000"),
        ("keep_last", "1"),
        ("schedule", "\"wsd\""),
        ("decay_epochs", "1.0"),
    ];
    let train: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let toml = |extra: &str| {
        format!(
            "name = \"branched\"\noutput = \"{}\"\nseeds = [0]\nat_epochs = [2]\nbranches = true\n{extra}\n[train]\ndata = \"{}\"\nepochs = 3\n{train}\n[[variants]]\nname = \"relu\"\n",
            out.display(),
            data.display()
        )
    };
    let config = dir.path().join("study.toml");
    let threads = ["--threads", "1"];
    // Refused: a schedule without a stable phase; a budget that is not shorter than the run.
    std::fs::write(&config, toml("").replace("\"wsd\"", "\"cosine\"").replace("decay_epochs = 1.0\n", ""))
        .unwrap();
    let (code, text) = study(&config, &threads, None);
    assert!(
        code.is_some_and(|c| c != 0) && text.contains("branches = true needs the wsd or rsqrt schedule"),
        "{text}"
    );
    std::fs::write(&config, toml("").replace("at_epochs = [2]", "at_epochs = [3]")).unwrap();
    let (code, text) = study(&config, &threads, None);
    assert!(
        code.is_some_and(|c| c != 0) && text.contains("cannot be a branch of an 3-epoch wsd run"),
        "{text}"
    );

    std::fs::write(&config, toml("")).unwrap();
    let (code, text) = study(&config, &threads, Some("fork:rename@1"));
    assert_eq!(code, None, "killed by SIGKILL: {text}");
    let (code, text) = study(&config, &threads, None);
    assert_eq!(code, Some(0), "{text}");
    let (main, branch) = (out.join("branched/relu-s0"), out.join("branched/relu-s0-e2"));
    assert_eq!((epochs(&main).len(), epochs(&branch).len()), (3, 2));

    // The same 2-epoch run on its own.
    let mut alone = Command::new(common::bin());
    alone.args(["train", "--data"]).arg(&data).args(["--epochs", "2", "--seed", "0", "--name", "alone"]);
    alone.args(["--output"]).arg(&out).args(["--torch-threads", "1", "--workers", "1"]);
    for (k, v) in keys {
        alone.arg(format!("--{}", k.replace('_', "-"))).arg(v.trim_matches('"'));
    }
    let o = alone.output().unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let steps = |run: &Path| -> Vec<(usize, f64, f64)> {
        common::step_records(run).iter().map(|r| (r.step, r.loss, r.lr)).collect()
    };
    let (b, a, m) = (steps(&branch), steps(&out.join("alone")), steps(&main));
    assert_eq!(b, a, "the branch is not the 2-epoch run");
    assert_eq!(epochs(&branch), epochs(&out.join("alone")));
    // The main run took the same first 5 steps (the branch point), then kept the peak rate.
    assert_eq!(b[..5], m[..5]);
    assert!(b[6].2 < m[6].2 && m[6].2 == m[5].2, "{b:?} {m:?}");
    let md = std::fs::read_to_string(out.join("branched/study.md")).unwrap();
    let top1 = epochs(&branch).last().unwrap().1.unwrap();
    assert!(md.contains("2-epoch branch") && md.contains(&format!("{top1:.2}")), "{md}");
    assert!(md.contains(&format!("| relu-s0-e2 | finished | 2 | {top1:.2} |")), "{md}");

    // `report --table` over the run folders knows the branch: the same table as the study's.
    let report = |extra: &[&str]| {
        let figure = dir.path().join("bands.svg");
        let o = Command::new(common::bin())
            .args(["report", "--table", "--out", figure.to_str().unwrap()])
            .args(extra)
            .args([&main, &branch])
            .output()
            .unwrap();
        (o.status.success(), common::output_text(&o))
    };
    let (ok, text) = report(&[]);
    assert!(ok, "{text}");
    let rows = |t: &str| -> Vec<String> {
        t.lines().filter(|l| l.starts_with("| relu")).map(|l| l.split('|').take(13).collect()).collect()
    };
    assert_eq!(rows(&text), rows(&md), "report --table vs study.md:\n{text}");
    assert!(text.contains("2-epoch branch") && text.contains("1 runs"), "{text}");
    let (ok, text) = report(&["--at", "1"]);
    let refusal =
        "--at 1: the runs have branches at 2 epochs, and a point of a longer run is not the result of an \
                   1-epoch run";
    assert!(!ok && text.contains(refusal), "{text}");
}

/// `study --jobs 2` killed with SIGKILL: its running cells get SIGTERM (they save and exit), so
/// none is left running as an orphan; the rerun continues them.
#[test]
fn a_killed_parallel_study_leaves_no_cell_running() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap();
    let config = dir.path().join("study.toml");
    let out = dir.path().join("runs");
    let text =
        study_toml(&data, &out, "[0]").replace("epochs = 2", "epochs = 50").replace("at_epochs = [1]", "");
    std::fs::write(&config, text.replace("bench_steps = 1", "bench_steps = 0")).unwrap();
    let mut parent = Command::new(common::bin())
        .args(["study", "--config", config.to_str().unwrap(), "--jobs", "2", "--threads", "1"])
        .env_remove("RESNET_TRAIN_FAULT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locks = [out.join("tiny/relu-s0/lock"), out.join("tiny/polynorm-s0/lock")];
    let pid_of = |lock: &Path| -> Option<u32> {
        let text = std::fs::read_to_string(lock).ok()?;
        text.lines().find_map(|l| l.strip_prefix("pid = ")?.trim().parse().ok())
    };
    // Both cells running (each has checkpointed a step: they are past their set-up).
    common::wait_until(300, "both cells started", || {
        locks.iter().all(|l| pid_of(l).is_some())
            && ["relu-s0", "polynorm-s0"]
                .iter()
                .all(|c| out.join("tiny").join(c).join("metrics.jsonl").is_file())
    });
    let cells: Vec<u32> = locks.iter().map(|l| pid_of(l).unwrap()).collect();
    parent.kill().unwrap();
    parent.wait().unwrap();
    common::wait_until(120, "the cells of a killed study to exit", || {
        // Gone, or a zombie waiting for init to reap it.
        cells.iter().all(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |st| st.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        })
    });
    // Each cell saved where it stopped: the study lists them as started, and nothing holds them.
    let (code, list) = study(&config, &["--list"], None);
    assert_eq!(code, Some(0), "{list}");
    assert!(list.lines().all(|l| l.ends_with("\tstarted")), "{list}");
    for lock in &locks {
        assert!(!lock.exists(), "{} left behind", lock.display());
    }
}

/// A cell whose run folder another live process holds: the parallel study's failure names the
/// cell and the holder (from the cell's log), not only "see log".
#[test]
fn a_parallel_study_names_a_cell_held_by_another_process() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 5).unwrap();
    let config = dir.path().join("study.toml");
    let out = dir.path().join("runs");
    let text =
        study_toml(&data, &out, "[0]").replace("at_epochs = [1]", "").replace("epochs = 2", "epochs = 1");
    std::fs::write(&config, text.replace("bench_steps = 1", "bench_steps = 0")).unwrap();
    let _held = resnet_train::train::run::run_dir::RunLock::acquire(&out.join("tiny/relu-s0")).unwrap();
    let (code, text) = study(&config, &["--jobs", "2", "--threads", "1"], None);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("relu-s0") && text.contains(&format!("in use by process {}", std::process::id())),
        "{text}"
    );
}

/// `study --data DIR` gives every run that data, over the recipes' own; the CPU studies run on
/// the embedded dataset unless it is given.
#[test]
fn study_data_overrides_every_runs_data() {
    use resnet_train::experiments::study::StudyConfig;
    let data_of = |s: &StudyConfig| -> Vec<Option<std::path::PathBuf>> {
        s.cells().iter().map(|c| s.cell_config(c).unwrap().data).collect()
    };
    let mut s = StudyConfig::read(Path::new("configs/studies/resnet50-imagenet.toml")).unwrap();
    assert!(data_of(&s).iter().all(|d| d.as_deref() == Some(Path::new("/datasets/imagenet"))));
    s.data = Some("/elsewhere/imagenet".into());
    assert!(data_of(&s).iter().all(|d| d.as_deref() == Some(Path::new("/elsewhere/imagenet"))));
    for name in ["cpu.toml", "cpu-orders.toml", "cpu-wsd.toml"] {
        let s = StudyConfig::read(&Path::new("configs/studies").join(name)).unwrap();
        assert!(data_of(&s).iter().all(Option::is_none), "{name}");
    }
}
