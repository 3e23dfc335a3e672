//! Every shipped training config loads and trains: 2 steps of each at a tiny size (ResNet-18,
//! 32 px, batch 4) on the procedural dataset, keeping everything else the file sets (optimizer,
//! loss, augmentation policy, Mixup/CutMix, erasing, repeated augmentation, progressive resizing,
//! EMA, precision). Ablation and study files (another format) are checked by their own tests.

mod common;

use resnet_train::data::synthetic;
use std::path::Path;

#[test]
fn every_shipped_training_config_runs_two_steps() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 40, 4).unwrap();
    let mut configs: Vec<_> = std::fs::read_dir(common::repo().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.ends_with(".toml") && !name.starts_with("ablate-") && !name.starts_with("study-")
        })
        .collect();
    configs.sort();
    assert!(configs.len() >= 15, "{configs:?}");
    let mut failures = Vec::new();
    for config in &configs {
        let name = config.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(config).unwrap();
        let mut args: Vec<String> = ["train", "--config"].iter().map(|s| s.to_string()).collect();
        args.push(config.display().to_string());
        args.extend(
            [
                "--arch",
                "resnet18",
                "--train-size",
                "32",
                "--eval-size",
                "32",
                "--batch-size",
                "4",
                "--max-steps",
                "2",
                "--device",
                "cpu",
                "--workers",
                "1",
                "--name",
                &name,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if text.lines().any(|l| l.starts_with("min_res")) {
            args.extend(["--min-res", "32"].iter().map(|s| s.to_string())); // at most train_size
        }
        args.extend(["--data".to_string(), data.display().to_string()]);
        args.extend(["--output".to_string(), dir.path().display().to_string()]);
        let out = std::process::Command::new(common::bin()).args(&args).output().unwrap();
        if !out.status.success() {
            failures.push(format!("{name}: {}", common::output_text(&out)));
            continue;
        }
        let steps = common::step_records(&dir.path().join(&name));
        if steps.len() != 2 || !steps.iter().all(|s| s.loss.is_finite()) {
            failures.push(format!(
                "{name}: {} steps, losses {:?}",
                steps.len(),
                steps.iter().map(|s| s.loss).collect::<Vec<_>>()
            ));
        }
        eprintln!("{name}: 2 steps, losses {:?}", steps.iter().map(|s| s.loss).collect::<Vec<_>>());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Trains `configs/<config>` as run `name` at the tests' tiny size (ResNet-18, 32 px, batch 4,
/// CPU, one worker) on `data` into `out`, with `extra` flags.
fn train_recipe(config: &str, name: &str, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .arg("train")
        .arg("--config")
        .arg(common::repo().join("configs").join(config))
        .args(["--arch", "resnet18", "--train-size", "32", "--eval-size", "32", "--batch-size", "4"])
        .args(["--device", "cpu", "--workers", "1", "--name", name])
        .args(extra)
        .arg("--data")
        .arg(data)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap()
}

/// FFCV's recipe end to end for two short epochs: progressive resizing (16 px, then 32 px), the
/// triangular schedule, and evaluation with flip test-time augmentation.
#[test]
fn ffcv_recipe_trains_two_epochs_and_evaluates_with_flips() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 2, 40, 4).unwrap();
    let out = train_recipe(
        "resnet50-ffcv-16ep.toml",
        "ffcv",
        &data,
        dir.path(),
        &["--epochs", "2", "--min-res", "16", "--start-ramp", "0", "--end-ramp", "1", "--warmup-epochs", "1"],
    );
    assert!(out.status.success(), "{}", common::output_text(&out));
    let summary = common::summary_without_time(&dir.path().join("ffcv"));
    assert_eq!(summary.len(), 3, "{summary:?}"); // header + 2 epochs
    let lrs: Vec<f64> = common::step_records(&dir.path().join("ffcv")).iter().map(|s| s.lr).collect();
    // Linear warmup over epoch 0, then linear decay towards 0 over epoch 1.
    let half = lrs.len() / 2;
    assert!(
        lrs[..half].windows(2).all(|w| w[1] > w[0]) && lrs[half..].windows(2).all(|w| w[1] < w[0]),
        "{lrs:?}"
    );
    // FFCV's BlurPool is part of the model the file records, so `eval` rebuilds it.
    let best = dir.path().join("ffcv/best.safetensors");
    let meta = resnet_train::model::weights::read_metadata(&best).unwrap();
    let model: serde_json::Value = serde_json::from_str(&meta["resnet_train.model"]).unwrap();
    assert_eq!(model["blurpool"], true, "{model}");
}

/// timm's schedule semantics end to end, from RSB A3's `schedule_style = "timm"`: 2 epochs, 1 of
/// them warmup, then 1 cooldown epoch, trains 3 epochs with one learning rate per epoch:
/// `warmup_lr`, then the cosine half way through `epochs` ((peak + min_lr) / 2), then `min_lr`.
#[test]
fn timm_schedule_trains_its_cooldown_with_one_lr_per_epoch() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 40, 4).unwrap();
    let out = train_recipe(
        "resnet50-rsb-a3.toml",
        "timm",
        &data,
        dir.path(),
        &[
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--cooldown-epochs",
            "1",
            "--warmup-lr",
            "1e-4",
            "--min-lr",
            "2e-4",
            "--lr",
            "0.064",
        ],
    );
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("lamb, timm cosine x 3 epochs (1 cooldown)"), "{text}");
    let run = dir.path().join("timm");
    assert_eq!(common::summary_without_time(&run).len(), 4, "header + 3 epochs");
    let steps = common::step_records(&run);
    let per_epoch = steps.len() / 3;
    assert!(per_epoch >= 2 && steps.len() == 3 * per_epoch, "{} steps", steps.len());
    let peak = 0.064 * 4.0 / 256.0;
    for (epoch, want) in [1e-4, (peak + 2e-4) / 2.0, 2e-4].into_iter().enumerate() {
        for s in &steps[epoch * per_epoch..(epoch + 1) * per_epoch] {
            assert!((s.lr - want).abs() < 1e-12, "epoch {epoch} step {}: lr {} vs {want}", s.step, s.lr);
        }
    }
}

/// timm's cycles and learning-rate noise end to end: 1 epoch per cycle, 3 cycles (each peak half
/// the last), noise from half way through the first: the run trains all 3 cycles, and every step
/// logs the schedule's value for its step (tests/train.rs checks those against timm's own).
#[test]
fn timm_cycles_and_noise_train_every_cycle() {
    use resnet_train::train::{config::read_run, schedule::Schedule};
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 40, 4).unwrap();
    let args = ["--epochs", "1", "--warmup-epochs", "0", "--lr-cycle-limit", "3", "--lr-cycle-decay", "0.5"];
    let out = train_recipe(
        "resnet50-rsb-a3.toml",
        "cycles",
        &data,
        dir.path(),
        &[&args[..], &["--lr-noise", "0.5", "--seed", "3", "--lr", "0.064"]].concat(),
    );
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("timm cosine x 3 epochs (3 cycles, lr noise)"), "{text}");
    let run = dir.path().join("cycles");
    let steps = common::step_records(&run);
    let per_epoch = steps.len() / 3;
    assert!(per_epoch >= 2 && steps.len() == 3 * per_epoch, "{} steps", steps.len());
    let (cfg, _) = read_run(&run).unwrap();
    let schedule = Schedule::new(&cfg, per_epoch, 4);
    let peak = 0.064 * 4.0 / 256.0;
    for s in &steps {
        let epoch = s.step / per_epoch;
        assert_eq!(s.lr, schedule.lr(s.step), "step {}", s.step);
        // Each cycle restarts at its peak (times 1 + noise after the first epoch, |noise| < 0.67).
        let cycle_peak = peak * 0.5f64.powi(epoch as i32);
        let bound = if epoch == 0 { 1e-15 } else { 0.67 * cycle_peak };
        assert!((s.lr - cycle_peak).abs() <= bound, "epoch {epoch}: lr {} vs {cycle_peak}", s.lr);
    }
    assert_ne!(steps[per_epoch].lr, peak * 0.5, "noise applied from epoch 1");
}
