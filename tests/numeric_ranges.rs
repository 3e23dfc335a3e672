//! Every numeric key of `train --help` meets 0, -1, a huge value, NaN and infinity at the command
//! line: each is either refused before any work (exit 2, the message naming the key, no panic)
//! or accepted (the run then goes on to open its data, here a folder that does not exist, exit 1).
//! -1, the huge value, NaN and infinity must be refused (but -1 where a key takes negative
//! numbers); 0 may be either. The same ranges hold for a config file's values.

mod common;

use std::process::Command;

/// Keys whose numbers may be negative.
const SIGNED: [&str; 3] = ["head_init_scale", "head_init_bias", "mean"];

/// (exit code, stdout + stderr) of `resnet-train train ARGS` in `cwd`.
fn train(cwd: &std::path::Path, args: &[String]) -> (i32, String) {
    let out = Command::new(common::bin())
        .current_dir(cwd)
        .arg("train")
        .args(args)
        .env("RESNET_TRAIN_CACHE", cwd.join("cache"))
        .output()
        .expect("resnet-train runs");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout) + &s(&out.stderr))
}

/// The flags of `train --help` that take a value (booleans' optional values left out).
fn value_flags(cwd: &std::path::Path) -> Vec<String> {
    let (code, help) = train(cwd, &["--help".to_string()]);
    assert_eq!(code, 0, "{help}");
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix("--")?;
            let (name, after) = rest.split_once(' ')?;
            after.starts_with('<').then(|| name.trim_end_matches(',').to_string())
        })
        .filter(|f| !["config", "resume"].contains(&f.as_str()))
        .collect()
}

/// What the sweep found for one flag: whether it is numeric, and the values it mishandled.
fn sweep(cwd: &std::path::Path, flag: &str, missing: &str) -> (bool, Vec<String>) {
    let key = flag.replace('-', "_");
    let attempt = |value: &str| {
        let args = vec![format!("--{flag}={value}"), format!("--data={missing}")];
        let (code, text) = train(cwd, &args);
        assert!(!text.contains("panicked"), "--{flag}={value}: {text}");
        (code, text)
    };
    // A key that takes any word (a path, a name, a policy string) is not numeric; an enum key
    // lists its possible values.
    let (code, text) = attempt("abc");
    if code != 2 || !text.contains(&format!("--{flag}")) || text.contains("possible values") {
        return (false, Vec::new());
    }
    let mut failures = Vec::new();
    for value in ["0", "-1", "18446744073709551615", "nan", "inf"] {
        let (code, text) = attempt(value);
        let refused = code == 2 && text.contains(&format!("--{flag}"));
        let accepted = code == 1 && text.contains("no-such-data");
        let may_accept = value == "0" || (value == "-1" && SIGNED.contains(&key.as_str()));
        if !(refused || (accepted && may_accept)) {
            failures.push(format!("--{flag}={value}: exit {code}: {}", text.trim()));
        }
    }
    (true, failures)
}

#[test]
fn every_numeric_key_refuses_what_it_cannot_mean_before_any_work() {
    let dir = common::tmpdir();
    let missing = dir.path().join("no-such-data").display().to_string();
    let flags = value_flags(dir.path());
    assert!(flags.len() > 100, "{flags:?}");
    // Four flags at a time (each attempt is a process start).
    let results: Vec<(String, bool, Vec<String>)> = std::thread::scope(|scope| {
        let chunks: Vec<Vec<String>> =
            (0..4).map(|i| flags.iter().skip(i).step_by(4).cloned().collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (cwd, missing) = (dir.path(), missing.as_str());
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|f| {
                            let (numeric, failures) = sweep(cwd, &f, missing);
                            (f.replace('-', "_"), numeric, failures)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<&String> = results.iter().flat_map(|r| &r.2).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    // The sweep saw the numeric keys (not a parse of --help that found none).
    let numeric: Vec<&str> = results.iter().filter(|r| r.1).map(|r| r.0.as_str()).collect();
    for k in ["epochs", "batch_size", "lr", "accum_steps", "workers", "warmup_epochs", "seed", "mean"] {
        assert!(numeric.contains(&k), "{k} not swept: {numeric:?}");
    }
    assert!(numeric.len() > 80, "{} numeric keys: {numeric:?}", numeric.len());
    assert!(!dir.path().join("runs").exists(), "a refused or data-less run wrote a run folder");
}

#[test]
fn a_config_files_values_meet_the_same_ranges() {
    let dir = common::tmpdir();
    for (line, key) in [
        ("epochs = 0", "epochs"),
        ("accum_steps = 1000000000000", "accum_steps"),
        ("workers = 100000", "workers"),
        ("warmup_epochs = 1e300", "warmup_epochs"),
        ("lr = nan", "lr"),
        ("ratio = [0.75, inf]", "ratio"),
        ("seed = -1", "seed"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let (code, text) = train(
            dir.path(),
            &["--config".into(), path.display().to_string(), "--data=/no-such-data".into()],
        );
        assert_eq!(code, 2, "{line}: {text}");
        let flag = format!("--{}", key.replace('_', "-"));
        assert!((text.contains(key) || text.contains(&flag)) && !text.contains("panicked"), "{line}: {text}");
    }
}
