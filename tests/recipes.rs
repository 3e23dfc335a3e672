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
    let mut configs: Vec<_> = std::fs::read_dir(common::repo().join("configs/recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
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
        // The recipes give a global batch (any number of processes); the others a per-process one.
        let batch = if text.lines().any(|l| l.starts_with("global_batch")) {
            "--global-batch"
        } else {
            "--batch-size"
        };
        args.extend([batch.to_string(), "4".to_string()]);
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

/// Trains `configs/recipes/<config>` as run `name` at the tests' tiny size (ResNet-18, 32 px, batch 4,
/// CPU, one worker) on `data` into `out`, with `extra` flags.
fn train_recipe(config: &str, name: &str, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .arg("train")
        .arg("--config")
        .arg(common::repo().join("configs/recipes").join(config))
        .args(["--arch", "resnet18", "--train-size", "32", "--eval-size", "32", "--global-batch", "4"])
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
            "0.001",
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
    let peak = 0.001;
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
    use resnet_train::train::config::read_run;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 40, 4).unwrap();
    let args = ["--epochs", "1", "--warmup-epochs", "0", "--lr-cycle-limit", "3", "--lr-cycle-decay", "0.5"];
    let out = train_recipe(
        "resnet50-rsb-a3.toml",
        "cycles",
        &data,
        dir.path(),
        &[&args[..], &["--lr-noise", "0.5", "--seed", "3", "--lr", "0.001"]].concat(),
    );
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("timm cosine x 3 epochs (3 cycles, lr noise)"), "{text}");
    let run = dir.path().join("cycles");
    let steps = common::step_records(&run);
    let per_epoch = steps.len() / 3;
    assert!(per_epoch >= 2 && steps.len() == 3 * per_epoch, "{} steps", steps.len());
    let (cfg, _) = read_run(&run).unwrap();
    let schedule = cfg.lr_schedule(per_epoch, 4);
    let peak = 0.001;
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

/// The `# Resolves to: global batch N[ per process], peak lr X` statement of a shipped config.
fn stated_resolution(path: &Path) -> (usize, bool, f64) {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# Resolves to: global batch "))
        .unwrap_or_else(|| panic!("{}: no `# Resolves to:` statement", path.display()));
    let (batch, rest) = line.split_once(|c: char| !c.is_ascii_digit()).unwrap();
    let per_process = rest.starts_with("per process");
    let lr = rest.split("peak lr ").nth(1).unwrap().split(' ').next().unwrap();
    let lr = lr.trim_end_matches(['.', ',']);
    (batch.parse().unwrap(), per_process, lr.parse().unwrap_or_else(|e| panic!("{lr}: {e}")))
}

/// Every shipped config (recipes, every cell of the studies and ablations) resolved at 1 and 8
/// processes (an ablation's cells: 1) gives the global batch and peak learning rate its own comments state.
#[test]
fn every_shipped_config_resolves_to_the_global_batch_and_lr_it_states() {
    use resnet_train::experiments::{ablate::AblationConfig, study::StudyConfig};
    use resnet_train::train::config::read_file;
    let mut files: Vec<_> = ["recipes", "ablations", "studies"]
        .iter()
        .flat_map(|kind| std::fs::read_dir(common::repo().join("configs").join(kind)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    // Study configs name their recipes relative to the repository: cargo runs tests from there.
    let mut checked = 0;
    for file in &files {
        let name = file.strip_prefix(common::repo().join("configs")).unwrap().display().to_string();
        let (batch, per_process, lr) = stated_resolution(file);
        let runs = if name.starts_with("studies/") {
            let study = StudyConfig::read(file).unwrap();
            study.cells().iter().map(|c| study.cell_config(c).unwrap()).collect()
        } else if name.starts_with("ablations/") {
            vec![AblationConfig::read(file).unwrap().train]
        } else {
            let c = read_file(file).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            vec![c]
        };
        // An ablation's cells run in one process each.
        let worlds: &[usize] = if name.starts_with("ablations/") { &[1] } else { &[1, 8] };
        for c in runs {
            for &world in worlds {
                let r = c.for_world(world).unwrap_or_else(|e| panic!("{name} at {world}: {e}"));
                let global = r.batch_size * r.accum_steps * world;
                let want = if per_process { batch * world } else { batch };
                assert_eq!(global, want, "{name} at {world} process(es)");
                let peak = r.peak_lr(global);
                assert!((peak - lr).abs() <= 1e-12 * lr, "{name} at {world}: peak lr {peak}, states {lr}");
                if let Some(m) = r.max_device_batch {
                    assert!(r.batch_size <= m, "{name} at {world}: {} per device", r.batch_size);
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} runs checked");
}

/// `lr` unset: timm train.py's rule, lr = lr_base x (global / lr_base_size), square-rooted where
/// the optimizer's name contains "ada" or "lamb"; `lr` set: absolute.
#[test]
fn the_learning_rate_resolves_as_timm_train_py_does() {
    use resnet_train::train::config::TrainConfig;
    let timm = |opt: &str, lr_base: f64, base_size: f64, global: f64| {
        let ratio = global / base_size;
        let sqrt = opt.contains("ada") || opt.contains("lamb");
        lr_base * if sqrt { ratio.sqrt() } else { ratio }
    };
    for opt in ["momentum", "sgd", "adamw", "lamb", "lion", "nadamw", "adopt", "rmsproptf"] {
        for global in [64usize, 256, 1024, 2048, 4096, 96] {
            for (lr_base, base_size) in [(0.1, 256usize), (5e-3, 2048)] {
                let toml = format!("opt = \"{opt}\"\nlr_base = {lr_base:e}\nlr_base_size = {base_size}");
                let c: TrainConfig = toml::from_str(&toml).unwrap();
                let want = timm(opt, lr_base, base_size as f64, global as f64);
                assert!((c.peak_lr(global) - want).abs() <= 1e-15 * want, "{opt} {global} {lr_base}");
            }
            let c: TrainConfig = toml::from_str(&format!("opt = \"{opt}\"\nlr = 0.3")).unwrap();
            assert_eq!(c.peak_lr(global), 0.3, "absolute");
            let linear: TrainConfig =
                toml::from_str(&format!("opt = \"{opt}\"\nlr_base_scale = \"linear\"")).unwrap();
            assert!((linear.peak_lr(global) - 0.1 * global as f64 / 256.0).abs() < 1e-15);
        }
    }
}

/// With `max_device_batch`, the accumulation rises to fit; the per-device batch flag is refused
/// where a global batch defines it.
#[test]
fn a_global_batch_fits_the_device_by_accumulating() {
    use resnet_train::train::config::TrainConfig;
    let c: TrainConfig = toml::from_str("global_batch = 1024\nmax_device_batch = 256").unwrap();
    let at = |w: usize| {
        let r = c.for_world(w).unwrap();
        (r.batch_size, r.accum_steps)
    };
    assert_eq!([at(1), at(2), at(4), at(8), at(64)], [(256, 4), (256, 2), (256, 1), (128, 1), (16, 1)]);
    // 1024 over 3 processes: no accumulation divides it.
    let err = c.for_world(3).unwrap_err().to_string();
    assert!(err.contains("not divisible by 3"), "{err}");
    let dir = common::tmpdir();
    let file = dir.path().join("r.toml");
    std::fs::write(&file, "global_batch = 64\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["train", "--config", file.to_str().unwrap(), "--batch-size", "8", "--dry-run"])
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--batch-size is derived from --global-batch 64"), "{text}");
}

/// torchvision-v2's EMA is torchvision's: its decay adjusted to the global batch and epochs
/// (1 - (1 - 0.99998) x 1024 x 32 / 600), the buffers averaged, restarted over the 5 warmup
/// epochs; the same on 1 or 8 processes.
#[test]
fn the_torchvision_v2_recipe_has_torchvisions_ema() {
    use resnet_train::train::{config::read_file, step::ema::EmaBuffers};
    let c = read_file(&common::repo().join("configs/recipes/resnet50-torchvision-v2.toml")).unwrap();
    c.validate().unwrap();
    for world in [1, 8] {
        let e = c.for_world(world).unwrap().ema_config(world, 1000);
        let want = 1.0 - (1.0 - 0.99998) * 1024.0 * 32.0 / 600.0;
        assert!((e.decay - want).abs() < 1e-12, "{} vs {want}", e.decay);
        assert!(e.per_update && e.every == 32 && e.buffers == EmaBuffers::Average);
        assert_eq!(e.restart_until, 5000);
    }
}

/// `schedule` resolves a global-batch recipe as the trainer does: the same global batch and peak
/// learning rate on 1 or 8 processes.
#[test]
fn schedule_splits_a_recipes_global_batch_over_the_world() {
    for world in ["1", "8"] {
        let out = std::process::Command::new(common::bin())
            .args([
                "schedule",
                "--config",
                "configs/recipes/resnet50-imagenet-200ep-relu.toml",
                "--world-size",
                world,
                "--json",
            ])
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert!(out.status.success(), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["global_batch"], 1024, "{world}: {v}");
        // ImageNet-1k's 1,281,167 images: 1251 steps of 1024 (per rank: whole batches).
        assert_eq!(v["steps_per_epoch"], 1251, "{world}: {v}");
        assert!((v["peak_lr"].as_f64().unwrap() - 0.4).abs() < 1e-12, "{world}: {v}");
    }
}
