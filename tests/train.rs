//! The training engine: exact resume, schedules against closed forms, the loss scaler with
//! injected inf gradients, config precedence, eval parity, mixed precision on CPU, and learning on
//! real images. (Weight-decay groups and SGD's update rule are unit tests in src/train/step/optim.)

mod common;

use resnet_train::data::synthetic;
use resnet_train::ffi;
use resnet_train::model::{ActInit, ActKind, Arch};
use resnet_train::train::config::{TrainArgs, TrainConfig};
use resnet_train::train::run::metrics::RunLog;
use resnet_train::train::step::amp::{GradScaler, Precision};
use resnet_train::train::step::schedule::{ScheduleKind, ScheduleStyle};
use resnet_train::train::trainer::train;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn tiny_config(data: &Path, out: &Path, name: &str) -> TrainConfig {
    TrainConfig {
        data: Some(data.to_path_buf()),
        arch: Arch::Resnet18,
        act: ActKind::Polynorm,
        epochs: 2,
        batch_size: 8,
        lr_base: 0.4,
        warmup_epochs: 0.5,
        smoothing: 0.1,
        train_size: 32,
        eval_size: 32,
        device: "cpu".into(),
        workers: 2,
        log_every: 1000,
        keep_last: 1,
        name: Some(name.into()),
        output: out.to_path_buf(),
        // Not ImageNet's: `eval` must use what the checkpoint records to give the run's numbers.
        mean: vec![0.5, 0.45, 0.4],
        std: vec![0.25, 0.2, 0.3],
        ..TrainConfig::default()
    }
}

fn losses(run: &Path) -> Vec<(usize, f64, f64)> {
    common::step_records(run).into_iter().map(|r| (r.step, r.loss, r.lr)).collect()
}

#[test]
fn interrupted_and_resumed_run_matches_an_uninterrupted_one() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap(); // 80 train, 20 val: 10 steps per epoch
    let full = train(tiny_config(&data, dir.path(), "full"), None).unwrap();
    assert_eq!((full.steps, full.epochs_done), (20, 2));

    // Stop mid-epoch (step 7), again in the second epoch (13), then finish.
    let mut cfg = tiny_config(&data, dir.path(), "resumed");
    cfg.max_steps = 7;
    cfg.checkpoint_every = 3;
    assert!(train(cfg, None).unwrap().stopped_early);
    let run = dir.path().join("resumed");
    let mut again = TrainConfig::resume(&run, &TrainArgs::default()).unwrap();
    again.max_steps = 13;
    assert!(train(again, Some(&run)).unwrap().stopped_early);
    let rest = TrainConfig::resume(&run, &TrainArgs::default()).unwrap();
    assert_eq!(rest.max_steps, 0, "max_steps is per invocation, not saved");
    let resumed = train(rest, Some(&run)).unwrap();
    assert_eq!(resumed.steps, 20);

    assert_eq!(losses(&dir.path().join("full")), losses(&run), "per-step losses and lrs differ after resume");
    let summary = |p: &Path| RunLog::read_summary(&p.join("summary.csv"));
    let (a, b) = (summary(&dir.path().join("full")), summary(&run));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.epoch, x.eval_top1, x.eval_loss), (y.epoch, y.eval_top1, y.eval_loss));
    }
    // The run folder holds what a user expects.
    for f in [
        "config.toml",
        "summary.csv",
        "metrics.jsonl",
        "last.safetensors",
        "best.safetensors",
        "epoch-1.safetensors",
        "sessions.jsonl",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // One session per process that trained it, from where it started, with what it ran on.
    let sessions = resnet_train::train::run::sessions::read(&run).unwrap();
    let starts: Vec<(usize, usize)> = sessions.iter().map(|s| (s.first_step, s.first_epoch)).collect();
    assert_eq!(starts, vec![(0, 0), (7, 0), (13, 1)], "--max-steps saves where it stops");
    for s in &sessions {
        assert!(s.libtorch.starts_with("2.11.0"), "{}", s.libtorch);
        assert!(s.libtorch_loaded.ends_with("libtorch_cpu.so"), "{}", s.libtorch_loaded);
        assert!(s.program.starts_with("resnet-train ") && s.cores >= 1 && s.memory_gib > 0.0, "{s:?}");
        assert_eq!((s.world_size, s.pid), (1, std::process::id()));
        assert!(s.device.starts_with("Cpu"), "{}", s.device);
        assert!(s.started_utc.len() == 20 && s.started_utc.ends_with('Z'), "{}", s.started_utc);
    }
    assert!(!run.join("epoch-0.safetensors").exists(), "keep_last = 1 prunes older epochs");
    // Checkpoints record the eval preprocessing (predict's and eval's default): resize
    // floor(32 / 0.875) (timm's rule), crop 32, bilinear.
    let best = resnet_train::model::weights::read(&run.join("best.safetensors")).unwrap();
    assert_eq!(best.eval_size(), Some((36, 32)));
    assert_eq!(best.eval_filter(), resnet_train::data::resize::Filter::Bilinear);
    let norm = best.normalization();
    assert_eq!((norm.mean, norm.std), ([0.5, 0.45, 0.4], [0.25, 0.2, 0.3]));
    assert_eq!(best.class_names().unwrap().len(), 10);

    // TensorBoard: the event files parse (TFRecord checksums, Event protos) and hold the losses.
    let full_dir = dir.path().join("full");
    let mut scalars = Vec::new();
    for e in std::fs::read_dir(full_dir.join("tb")).unwrap() {
        scalars.extend(resnet_train::train::run::tensorboard::read_scalars(&e.unwrap().path()).unwrap());
    }
    let tb_loss: Vec<(i64, f32)> =
        scalars.iter().filter(|(t, _, _)| t == "train/loss").map(|(_, s, v)| (*s, *v)).collect();
    let jsonl: Vec<(i64, f32)> = losses(&full_dir).iter().map(|(s, l, _)| (*s as i64, *l as f32)).collect();
    assert_eq!(tb_loss, jsonl);
    assert_eq!(scalars.iter().filter(|(t, _, _)| t == "epoch/eval_top1").count(), 2);

    // The report figure of both runs.
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        let runs = vec![
            resnet_train::experiments::report::load(&full_dir).unwrap(),
            resnet_train::experiments::report::load(&run).unwrap(),
        ];
        for ext in ["svg", "png"] {
            let fig = dir.path().join(format!("curves.{ext}"));
            resnet_train::experiments::report::draw(&runs, &fig).unwrap();
            assert!(std::fs::metadata(&fig).unwrap().len() > 1000);
        }
        let svg = std::fs::read_to_string(dir.path().join("curves.svg")).unwrap();
        assert!(svg.contains("eval top-1") && svg.contains("resumed") && svg.contains("full"));
        assert!(svg.contains("eval loss vs epoch") && svg.contains("learning rate vs epoch"));
    } else {
        eprintln!("SKIP report figure: no DejaVuSans.ttf (scripts/bootstrap.sh installs fonts-dejavu-core)");
    }

    // The standalone eval command gives the in-training numbers for the same weights.
    let json = dir.path().join("eval.json");
    let out = std::process::Command::new(common::bin())
        .args(["eval", "--checkpoint"])
        .arg(run.join("epoch-1.safetensors"))
        .arg("--data")
        .arg(&data)
        .args(["--size", "32", "--device", "cpu", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!((v["top1"].as_f64().unwrap() - b[1].eval_top1.unwrap()).abs() < 1e-4);
    assert!((v["loss"].as_f64().unwrap() - b[1].eval_loss.unwrap()).abs() < 1e-4);
    // Without --size/--crop-pct, eval uses the preprocessing the checkpoint records (the run's).
    let out = std::process::Command::new(common::bin())
        .args(["eval", "--checkpoint"])
        .arg(run.join("epoch-1.safetensors"))
        .arg("--data")
        .arg(&data)
        .args(["--device", "cpu", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let w: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((&w["resize"], &w["crop"], &w["interpolation"]), (&36.into(), &32.into(), &"bilinear".into()));
    assert_eq!(w["top1"], v["top1"]);
    assert_eq!(w["loss"], v["loss"]);
}

#[test]
fn adamw_lamb_with_ema_and_bce_resume_exactly_and_the_ema_is_evaluated_and_loadable() {
    use resnet_train::train::step::optim::OptKind;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap(); // 10 steps per epoch
    for (opt, bce) in [(OptKind::Adamw, false), (OptKind::Lamb, true)] {
        let name = format!("{opt:?}").to_lowercase();
        let cfg = |run: &str| TrainConfig {
            opt,
            lr_base: 0.004,
            lr_base_scale: Some(resnet_train::train::step::schedule::LrScaling::Linear),
            weight_decay: 0.05,
            model_ema: true,
            model_ema_decay: 0.9,
            model_ema_warmup: true,
            bce_loss: bce,
            bce_target_thresh: bce.then_some(0.2),
            bce_sum: bce,
            bce_pos_weight: bce.then_some(1.5),
            // timm's filters: drawn per image in training (resumes exactly), bicubic eval.
            train_interpolation: resnet_train::data::transform::TrainFilter::Random,
            interpolation: resnet_train::data::resize::Filter::Bicubic,
            ..tiny_config(&data, dir.path(), run)
        };
        let full = train(cfg(&format!("{name}-full")), None).unwrap();
        assert!(full.last_ema_eval.is_some());
        // Interrupted mid-epoch 0 and mid-epoch 1 (the optimizer moments and the EMA are in `last`).
        let mut c = cfg(&format!("{name}-resumed"));
        c.max_steps = 4;
        c.checkpoint_every = 2;
        train(c, None).unwrap();
        let run = dir.path().join(format!("{name}-resumed"));
        let mut again = TrainConfig::resume(&run, &TrainArgs::default()).unwrap();
        again.max_steps = 14;
        train(again, Some(&run)).unwrap();
        train(TrainConfig::resume(&run, &TrainArgs::default()).unwrap(), Some(&run)).unwrap();
        let full_dir = dir.path().join(format!("{name}-full"));
        assert_eq!(losses(&full_dir), losses(&run), "{name}: per-step losses differ after resume");
        let summary = |p: &Path| RunLog::read_summary(&p.join("summary.csv"));
        let (a, b) = (summary(&full_dir), summary(&run));
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.eval_top1, x.eval_loss, x.ema_top1, x.ema_top5),
                (y.eval_top1, y.eval_loss, y.ema_top1, y.ema_top5)
            );
            assert!(x.ema_top1.is_some() && x.ema_top5.is_some(), "summary.csv has the EMA's columns");
        }
        // The EMA weights of an epoch checkpoint evaluate to the summary's EMA top-1, with the
        // eval preprocessing the checkpoint records (resize 36 bicubic, crop 32).
        let out = std::process::Command::new(common::bin())
            .args(["eval", "--weights", "ema", "--checkpoint"])
            .arg(run.join("epoch-1.safetensors"))
            .arg("--data")
            .arg(&data)
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want = format!("top-1 {:.2}%", b[1].ema_top1.unwrap());
        assert!(text.contains(&want), "{text} lacks {want}");
        assert!(text.contains("(resize 36 bicubic, crop 32)"), "{text}");
        // `best` holds whichever of the model and its EMA evaluated better, and says which.
        let best = resnet_train::model::weights::read(&run.join("best.safetensors")).unwrap();
        let kind = best.metadata.get("resnet_train.weights").cloned().unwrap_or_default();
        assert!(kind == "model" || kind == "ema", "{kind}");
    }
    // A checkpoint without an EMA says so.
    let dir2 = common::tmpdir();
    let plain = train(TrainConfig { epochs: 1, ..tiny_config(&data, dir2.path(), "plain") }, None).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["eval", "--weights", "ema", "--checkpoint"])
        .arg(plain.run_dir.join("last.safetensors"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no EMA weights"), "{err}");
}

/// The per-step style (a new learning rate every step, warmup from 0) against closed forms, for
/// every decay kind: 10 steps per epoch, 1 warmup epoch, 11 epochs, peak 0.4, min 0.01.
#[test]
fn schedules_match_closed_forms() {
    let schedule = |extra: &str| {
        let toml = format!("lr = 0.4\nepochs = 11\nwarmup_epochs = 1.0\nmin_lr = 0.01\n{extra}");
        let cfg: TrainConfig = toml::from_str(&toml).unwrap();
        cfg.validate().unwrap();
        cfg.lr_schedule(10, 256)
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let s = schedule("");
    assert_eq!(
        (s.kind, s.style, s.warmup, s.length),
        (ScheduleKind::Cosine, ScheduleStyle::PerStep, 10, 110)
    );
    assert!(close(s.lr(0), 0.04)); // linear warmup: (step + 1) / warmup * peak
    assert!(close(s.lr(9), 0.4) && close(s.lr(10), 0.4));
    assert!(close(s.lr(60), 0.01 + 0.5 * 0.39 * (1.0 + (std::f64::consts::PI * 0.5).cos())));
    assert!(close(s.lr(110), 0.01));
    // Poly: (1 - f)^power; tanh: timm's curve from tanh(-7) to tanh(3), then min_lr.
    let poly = schedule("schedule = \"poly\"\npoly_power = 2.0");
    assert!(close(poly.lr(60), 0.01 + 0.39 * 0.25) && close(poly.lr(109), 0.01 + 0.39 * 0.0001));
    let tanh = schedule("schedule = \"tanh\"");
    assert!(close(tanh.lr(60), 0.01 + 0.5 * 0.39 * (1.0 - (-7.0 * 0.5 + 3.0 * 0.5f64).tanh())));
    assert!(close(tanh.lr(110), 0.01) && tanh.lr(109) > 0.01);
    assert!(close(schedule("schedule = \"constant\"").lr(100), 0.4));
    // wsd: the peak after the warmup, then 1 - sqrt(f) to min_lr over the last 0.25 x 100 = 25
    // steps (Python's round: 24.5 would be 24; here 25); the cooldown after `epochs` at min_lr.
    let wsd = schedule("schedule = \"wsd\"\ndecay_epochs = 0.25\ncooldown_epochs = 1");
    assert_eq!(wsd.wsd.as_ref().map(|w| (w.span, w.decay)), Some((100, 25)));
    assert!(close(wsd.lr(9), 0.4) && close(wsd.lr(10), 0.4) && close(wsd.lr(85), 0.4));
    assert!(close(wsd.lr(86), 0.01 + 0.39 * (1.0 - (1.0f64 / 25.0).sqrt())));
    assert!(close(wsd.lr(109), 0.01 + 0.39 * (1.0 - (24.0f64 / 25.0).sqrt())));
    assert!([110, 119].iter().all(|&t| close(wsd.lr(t), 0.01)));
    // rsqrt: peak / sqrt(1 + t / timescale) after the warmup (timescale: the warmup, 10 steps),
    // floored at min_lr, then a linear decay over the last 2 epochs.
    let rsqrt = schedule("schedule = \"rsqrt\"\ndecay_epochs = 2.0");
    assert!(close(rsqrt.lr(10), 0.4) && close(rsqrt.lr(40), 0.4 / 4f64.sqrt()));
    let stable_at_95 = 0.4 / (1.0 + 85.0 / 10.0f64).sqrt();
    assert!(close(rsqrt.lr(95), 0.01 + (stable_at_95 - 0.01) * (1.0 - 5.0 / 20.0)));
    let floored = schedule("schedule = \"rsqrt\"\nlr_stable_timescale = 0.001\nlr_decay_fn = \"exp\"");
    assert!(close(floored.lr(50), 0.01) && close(floored.lr(109), 0.01));
    // Step and multistep count after the warmup; min_lr is a floor.
    let st = schedule("schedule = \"step\"\nstep_epochs = 3");
    assert_eq!([st.lr(10), st.lr(39)], [0.4, 0.4]);
    assert!(close(st.lr(40), 0.04) && close(st.lr(69), 0.04) && st.lr(70) == 0.01); // 0.004, floored
    let ms = schedule("schedule = \"multistep\"\ndecay_milestones = [2, 5]\nstep_gamma = 0.5");
    assert_eq!(
        [ms.lr(10), ms.lr(29), ms.lr(30), ms.lr(59), ms.lr(60), ms.lr(109)],
        [0.4, 0.4, 0.2, 0.2, 0.1, 0.1]
    );
}

/// `schedule_style = "timm"` against timm's own schedulers stepped as timm's train.py steps them
/// (tests/golden/make_timm_schedules_golden.py), and `"torchvision"` against torch's LinearLR /
/// CosineAnnealingLR / StepLR chained as torchvision's classification reference chains them
/// (make_torchvision_schedules_golden.py): the same learning rate at every optimizer step, and
/// the same number of epochs trained (warmup prefix and cooldown included).
#[test]
fn timm_and_torchvision_styles_equal_their_schedulers() {
    for (file, style, min_cases) in
        [("timm_schedules.json", "timm", 32), ("torchvision_schedules.json", "torchvision", 11)]
    {
        let path = common::repo().join("tests/golden").join(file);
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = golden["cases"].as_array().unwrap();
        assert!(cases.len() >= min_cases, "{file}");
        for case in cases {
            let name = format!("{style} {}", case["name"].as_str().unwrap());
            let mut keys = case["keys"].clone();
            keys["schedule_style"] = style.into();
            let cfg: TrainConfig = serde_json::from_value(keys).unwrap();
            cfg.validate().unwrap();
            assert_eq!(
                cfg.total_epochs() as u64,
                case["epochs_trained"].as_u64().unwrap(),
                "{name}: epochs trained"
            );
            let steps_per_epoch = case["steps_per_epoch"].as_u64().unwrap() as usize;
            let schedule = cfg.lr_schedule(steps_per_epoch, 256);
            let want: Vec<f64> =
                case["lrs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(want.len(), cfg.total_epochs() * steps_per_epoch, "{name}");
            for (step, want) in want.iter().enumerate() {
                let got = schedule.lr(step);
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1e-6),
                    "{name}: step {step}: {got} vs {want}"
                );
            }
        }
    }
}

/// The schedule keys' consistency: timm-only keys need the timm style, whose warmup is whole
/// epochs; a step schedule has no end to cool down after. Each error names the flag.
#[test]
fn schedule_keys_are_checked() {
    let err = |toml: &str| {
        let cfg: TrainConfig = toml::from_str(toml).unwrap();
        cfg.validate().err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(err("warmup_lr = 1e-6").contains("--warmup-lr is timm's"));
    assert!(err("warmup_prefix = true").contains("--warmup-prefix is timm's"));
    assert!(err("sched_on_updates = true").contains("--sched-on-updates is timm's"));
    assert!(err("schedule_style = \"timm\"\nwarmup_epochs = 0.5")
        .contains("--warmup-epochs must be a whole number"));
    assert!(err("schedule_style = \"timm\"\nwarmup_lr = -1.0").contains("--warmup-lr must be"));
    assert!(err("schedule = \"step\"\ncooldown_epochs = 2").contains("--cooldown-epochs applies"));
    assert!(
        err("schedule = \"multistep\"\ncooldown_epochs = 2").contains("the multistep schedule has no end")
    );
    // timm's cycles, k-decay and noise; torchvision's warmup method: their styles only.
    for key in ["lr_cycle_limit = 2", "lr_cycle_mul = 2.0", "lr_cycle_decay = 0.5", "lr_k_decay = 2.0"] {
        let flag = format!("--{} is timm's", key.split(' ').next().unwrap().replace('_', "-"));
        assert!(err(key).contains(&flag), "{key}");
    }
    assert!(err("lr_noise = [0.5]").contains("--lr-noise is timm's"));
    assert!(err("lr_warmup_method = \"constant\"").contains("--lr-warmup-method is torchvision's"));
    let timm = |extra: &str| err(&format!("schedule_style = \"timm\"\n{extra}"));
    assert!(
        timm("schedule = \"step\"\nlr_cycle_limit = 2").contains("--lr-cycle-limit applies to timm's cycle")
    );
    assert!(timm("schedule = \"tanh\"\nlr_k_decay = 2.0").contains("--lr-k-decay applies"));
    assert!(timm("lr_cycle_limit = 0").contains("--lr-cycle-limit must be in 1..=1000"));
    assert!(timm("lr_cycle_mul = -1.0").contains("--lr-cycle-mul must be a finite number > 0"));
    assert!(timm("lr_noise = [0.5, 0.2]").contains("--lr-noise must be one fraction"));
    assert!(timm("lr_noise = [0.1, 0.5, 0.9]").contains("--lr-noise must be one fraction"));
    assert!(timm("lr_noise = [0.5]\nlr_noise_pct = 0.001").contains("must be at least 0.01"));
    assert!(
        err("schedule = \"multistep\"\ndecay_milestones = [30, 20]").contains("--decay-milestones must be")
    );
    assert!(err("schedule = \"multistep\"\ndecay_milestones = []").contains("--decay-milestones must be"));
    assert!(err("schedule = \"poly\"\npoly_power = 0.0").contains("--poly-power must be"));
    // wsd / rsqrt keys: theirs only; a final decay that fits after the warmup; no torchvision style.
    assert!(err("decay_epochs = 0.3")
        .contains("--decay-epochs applies to the wsd and rsqrt schedules, not cosine"));
    assert!(err("lr_decay_fn = \"linear\"").contains("--lr-decay-fn applies to the wsd and rsqrt"));
    assert!(err("schedule = \"wsd\"\nlr_stable_timescale = 2.0")
        .contains("--lr-stable-timescale applies to the rsqrt"));
    assert!(err("schedule = \"wsd\"\nschedule_style = \"torchvision\"")
        .contains("torchvision's reference has none"));
    assert!(err("schedule = \"rsqrt\"").contains("set --lr-stable-timescale"));
    assert!(err("schedule = \"rsqrt\"\nlr_stable_timescale = -1.0").contains("--lr-stable-timescale must be"));
    assert!(
        err("schedule = \"wsd\"\nepochs = 2\nwarmup_epochs = 2.0").contains("needs epochs after its warmup")
    );
    assert!(err("schedule = \"wsd\"\nepochs = 10\ndecay_epochs = 11.0").contains("--decay-epochs must be"));
    assert!(err("schedule = \"wsd\"\ndecay_epochs = 0.0").contains("--decay-epochs must be"));
    // Per epoch, 0.1 of 4 epochs rounds to no decay at all (timm refuses it too); per step it is 0.4 epochs.
    assert!(timm("schedule = \"wsd\"\nepochs = 4\ndecay_epochs = 0.1").contains("at least one whole epoch"));
    assert_eq!(timm("schedule = \"wsd\"\nepochs = 4\ndecay_epochs = 0.1\nsched_on_updates = true"), "");
    assert!(
        timm("schedule = \"wsd\"\nlr_cycle_limit = 2").contains("--lr-cycle-limit applies to timm's cycle")
    );
    assert_eq!(timm("schedule = \"wsd\"\nwarmup_epochs = 2.0\ncooldown_epochs = 2\nlr_noise = [0.5]"), "");
    assert!(err("trust_coeff = 0.01").contains("--trust-coeff applies to lars"));
    assert!(err("opt = \"larc\"\ntrust_coeff = 0.0").contains("--trust-coeff must be positive"));
    assert_eq!(err("opt = \"nlarc\"\ntrust_coeff = 0.02"), "");
    // Betas and epsilon only where the optimizer has them (the default, momentum, has neither).
    assert!(err("opt_betas = [0.9, 0.99]").contains("--opt-betas applies to adam, adamw, cadamw, nadamw"));
    assert!(err("opt = \"lion\"\nopt_betas = [0.9, 1.0]").contains("--opt-betas must be two numbers"));
    assert!(err("opt = \"adam\"\nopt_betas = [0.9]").contains("--opt-betas must be two numbers"));
    assert_eq!(err("opt = \"lion\"\nopt_betas = [0.95, 0.98]"), "");
    // Adan takes three betas, and only three.
    assert_eq!(err("opt = \"adanw\"\nopt_betas = [0.98, 0.92, 0.99]"), "");
    assert!(err("opt = \"adan\"\nopt_betas = [0.98, 0.92]").contains("--opt-betas must be three numbers"));
    assert!(err("opt = \"radam\"\nopt_betas = [0.9, 0.99, 0.9]").contains("--opt-betas must be two numbers"));
    assert_eq!(err("opt = \"laprop\"\ncorrected_weight_decay = true\nopt_eps = 1e-12"), "");
    assert!(
        err("opt = \"radam\"\ncorrected_weight_decay = true").contains("--corrected-weight-decay applies to")
    );
    assert_eq!(err("opt_betas = [0.9, 0.999]"), "", "what every config.toml of older runs holds");
    assert!(err("opt = \"lion\"\nopt_eps = 1e-6")
        .contains("--opt-eps applies to lars, larc, nlars, nlarc, adam,"));
    assert!(err("opt = \"adamw\"\nopt_eps = 0.0").contains("--opt-eps must be positive"));
    assert_eq!(err("opt = \"nlars\"\nopt_eps = 1e-6"), "");
    assert_eq!(err("opt = \"rmsproptf\"\nopt_eps = 1e-3"), "");
    assert!(err("opt = \"rmsproptf\"\nopt_betas = [0.9, 0.99]").contains("--opt-betas applies to"));
    // AugMix splits: 2..=8, with an augmentation for the augmented splits, no Mixup; JSD and resplit need them.
    let augmix = "aa = \"augmix-m3-w3\"\naug_splits = 3";
    assert!(err("aug_splits = 1").contains("--aug-splits must be 0 (off) or in 2..=8"));
    assert!(err("aug_splits = 3").contains("--aug-splits needs an augmentation"));
    assert!(err("jsd_loss = true").contains("--jsd-loss, --resplit and --split-bn need --aug-splits"));
    assert!(err("resplit = true\naa = \"augmix-m3-w3\"").contains("need --aug-splits"));
    assert!(
        err(&format!("{augmix}\nmixup = 0.2")).contains("--aug-splits with Mixup/CutMix is not supported")
    );
    assert!(err(&format!("{augmix}\njsd_loss = true\nbce_loss = true")).contains("choose one"));
    assert_eq!(err(&format!("{augmix}\njsd_loss = true\nresplit = true\nreprob = 0.25")), "");
    assert_eq!(err("aug_splits = 2\ncolor_jitter = [0.4]"), "");
    assert!(err("split_bn = true").contains("--split-bn need --aug-splits"));
    assert!(err(&format!("{augmix}\nsplit_bn = true\nsync_bn = true")).contains("--split-bn with --sync-bn"));
    assert!(err("mean = [0.5, 0.5]").contains("--mean and --std must be three numbers"));
    assert!(err("std = [0.2, 0.0, 0.2]").contains("--mean and --std must be three numbers"));
    assert_eq!(timm("lr_cycle_limit = 3\nlr_cycle_mul = 2.0\nlr_noise = [0.2, 0.9]\nlr_k_decay = 0.5"), "");
    assert_eq!(
        err("schedule_style = \"timm\"\nwarmup_epochs = 5.0\nwarmup_prefix = true\ncooldown_epochs = 3"),
        ""
    );
    // Files written before `lr` was absolute: `lr` per 256 images, scaled by `lr_scaling`, read as
    // the same learning rate at a global batch of 2048 (8 x 256).
    let dir = common::tmpdir();
    for (rule, peak) in [("linear", 0.8), ("sqrt", 0.1 * 8f64.sqrt()), ("none", 0.1)] {
        let file = dir.path().join(format!("{rule}.toml"));
        std::fs::write(&file, format!("lr = 0.1\nlr_scaling = \"{rule}\"\nopt = \"adamw\"")).unwrap();
        let cfg = resnet_train::train::config::read_file(&file).unwrap();
        assert!((cfg.lr_schedule(10, 2048).peak_lr - peak).abs() < 1e-15, "{rule}");
    }
    // The torchvision style with a cooldown: cosine to min_lr over `epochs`, then min_lr.
    let cfg: TrainConfig =
        toml::from_str("epochs = 4\ncooldown_epochs = 2\nmin_lr = 0.001\nlr_base = 0.1").unwrap();
    assert_eq!(cfg.total_epochs(), 6);
    let s = cfg.lr_schedule(10, 256);
    assert!((s.lr(0) - 0.1).abs() < 1e-12 && (s.lr(20) - 0.0505).abs() < 1e-12);
    assert!([40, 45, 59].iter().all(|&step| (s.lr(step) - 0.001).abs() < 1e-15));
}

#[test]
fn grad_scaler_skips_on_inf_backs_off_and_grows() {
    let mut s = GradScaler::new(true, Device::Cpu);
    assert_eq!(s.scale_value(), 65536.0);
    s.growth_interval = 3;
    let g = || vec![Tensor::from_slice(&[65536.0f32, 131072.0]), Tensor::from_slice(&[0.0f32])];
    // Good step: gradients are unscaled, no overflow.
    let grads = g();
    assert!(!s.unscale(&grads).unwrap());
    assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), vec![1.0, 2.0]);
    s.update().unwrap();
    // Injected inf: overflow found, scale halves, the growth counter resets.
    let bad = vec![Tensor::from_slice(&[f32::INFINITY, 1.0]), Tensor::from_slice(&[f32::NAN])];
    assert!(s.unscale(&bad).unwrap());
    s.update().unwrap();
    assert_eq!(s.scale_value(), 32768.0);
    // growth_interval good steps in a row: scale doubles.
    for _ in 0..3 {
        assert!(!s.unscale(&g()).unwrap());
        s.update().unwrap();
    }
    assert_eq!(s.scale_value(), 65536.0);
    // Disabled (bf16/fp32): scale 1 and no pass over the gradients; the gradient norm, which the
    // trainer computes every step, is what finds non-finite gradients there.
    let mut off = GradScaler::new(false, Device::Cpu);
    assert!(!off.unscale(&bad).unwrap());
    off.update().unwrap();
    assert_eq!(off.scale_value(), 1.0);
    assert!(!ffi::foreach_clip_grad_norm(&bad, 0.0).unwrap().double_value(&[]).is_finite());
}

#[test]
fn clip_grad_norm_matches_closed_form() {
    let grads = vec![Tensor::from_slice(&[3.0f32]), Tensor::from_slice(&[4.0f32, 0.0])];
    let norm = ffi::foreach_clip_grad_norm(&grads, 1.0).unwrap().double_value(&[]);
    assert!((norm - 5.0).abs() < 1e-6);
    let clipped: f64 =
        grads.iter().map(|g| g.square().sum(Kind::Float).double_value(&[])).sum::<f64>().sqrt();
    assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    let untouched = vec![Tensor::from_slice(&[0.3f32])];
    let _ = ffi::foreach_clip_grad_norm(&untouched, 1.0).unwrap();
    assert!((untouched[0].double_value(&[0]) - 0.3).abs() < 1e-7);
}

#[test]
fn config_precedence_and_unknown_keys() {
    let dir = common::tmpdir();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "epochs = 7\nlr = 0.3\nact = \"polynorm\"\n").unwrap();
    use clap::Parser;
    let parse = |argv: &[&str]| {
        let cli = resnet_train::cli::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            Some(resnet_train::cli::Command::Train(a)) => *a,
            None => cli.train,
            _ => panic!("not train"),
        }
    };
    let f = file.to_str().unwrap();
    let args = parse(&["resnet-train", "--config", f, "--lr", "0.5"]);
    let c = TrainConfig::resolve(&args).unwrap();
    assert_eq!((c.epochs, c.lr, c.act, c.batch_size), (7, Some(0.5), ActKind::Polynorm, 256)); // flag > file > default
    std::fs::write(&file, "epochs = 7\nlearning_rate = 0.3\n").unwrap();
    let err = TrainConfig::resolve(&args).unwrap_err().to_string();
    assert!(err.contains("c.toml") && err.contains("learning_rate"), "{err}");
    // Every flag reaches the config (a flag that parses but is never applied is a silent bug).
    let a = parse(&[
        "resnet-train",
        "train",
        "--act-clamp",
        "2.5",
        "--act-fp32",
        "true",
        "--monitor-every",
        "3",
        "--max-consecutive-skips",
        "4",
        "--min-loss-scale",
        "0.5",
        "--spike-factor",
        "6",
        "--max-rollbacks",
        "7",
        "--act-init",
        "relu-like",
        "--order",
        "5",
        "--precision",
        "bf16",
        "--clip-grad",
        "1.5",
        "--opt",
        "lamb",
        "--model-ema",
        "true",
        "--smoothing",
        "0.2",
    ]);
    let c = TrainConfig::resolve(&a).unwrap();
    assert_eq!(
        (c.opt, c.model_ema, c.smoothing),
        (resnet_train::train::step::optim::OptKind::Lamb, true, 0.2)
    );
    assert_eq!(
        (c.act_clamp, c.act_fp32, c.monitor_every, c.max_consecutive_skips, c.min_loss_scale),
        (Some(2.5), true, 3, 4, 0.5)
    );
    assert_eq!((c.spike_factor, c.max_rollbacks, c.order, c.clip_grad), (6.0, 7, 5, 1.5));
    assert_eq!((c.act_init, c.precision), (ActInit::ReluLike, Precision::Bf16));
    // Every shipped config parses and validates (ablations/ holds ablation grids, studies/ studies,
    // whose recipe files are named from the repository root: the tests' working folder).
    let configs = common::repo().join("configs");
    let files =
        ["recipes", "ablations", "studies"].map(|kind| std::fs::read_dir(configs.join(kind)).unwrap());
    for p in files.into_iter().flatten().map(|e| e.unwrap().path()) {
        let name = p.strip_prefix(&configs).unwrap().display().to_string();
        if name.starts_with("ablations/") {
            resnet_train::experiments::ablate::AblationConfig::read(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        } else if name.starts_with("studies/") {
            resnet_train::experiments::study::StudyConfig::read(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        } else if p.extension().is_some_and(|x| x == "toml") {
            let a = TrainArgs { config: Some(p.clone()), ..TrainArgs::default() };
            TrainConfig::resolve(&a).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

#[test]
fn mixed_precision_steps_run_on_cpu() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 2).unwrap();
    for precision in [Precision::Bf16, Precision::Fp16] {
        let mut cfg = tiny_config(&data, dir.path(), &format!("{precision:?}"));
        cfg.precision = precision;
        cfg.epochs = 1;
        let s = train(cfg, None).unwrap();
        assert_eq!(s.steps, 5);
        let recs = common::step_records(&s.run_dir);
        let scale = recs.last().unwrap().loss_scale;
        assert_eq!(scale == 1.0, precision == Precision::Bf16, "{precision:?}: loss scale {scale}");
        assert!(recs.iter().all(|r| r.loss.is_finite()));
    }
}

#[test]
fn learns_on_tiny_imagenet_10() {
    let Some(shared) = common::shared("learns_on_tiny_imagenet_10") else { return };
    let dir = common::tmpdir();
    let mut cfg = tiny_config(&shared.join("data/tiny-imagenet-10"), dir.path(), "tin");
    cfg.act = ActKind::Relu;
    cfg.epochs = 3;
    cfg.batch_size = 64;
    cfg.lr_base = 0.2;
    cfg.clip_grad = 2.0;
    cfg.train_size = 32;
    cfg.eval_size = 32;
    cfg.keep_last = 0;
    let s = train(cfg, None).unwrap();
    let top1 = s.last_eval.unwrap().top1;
    // Measured: 40.4% (2 cores, 47 s; 42.2% at 48 px in 90 s); the data order and augmentations
    // are fixed by the seed, so the number is reproducible on a given libtorch build.
    eprintln!("tiny-imagenet-10, ResNet-18, 3 epochs at 32 px: top-1 {top1:.1}% (chance 10%)");
    assert!(top1 > 35.0, "top-1 {top1}% after 3 epochs");
}

#[test]
fn regularisers_are_active_and_a_resumed_run_draws_what_the_uninterrupted_one_drew() {
    // Stochastic depth and random erasing's fill draw from libtorch's generator, which the engine
    // seeds with (seed, step, rank) before each step; Mixup/CutMix and the erased boxes from
    // generators keyed by (seed, step, rank, micro-batch[, sample]).
    // Separate processes: libtorch's generator is global to a process.
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap(); // 80 train: 10 steps of 8
    let run = |name: &str, extra: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .arg("train")
            .arg("--data")
            .arg(&data)
            .args([
                "--arch",
                "resnet18",
                "--act",
                "relu",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--lr-base",
                "0.2",
            ])
            .args([
                "--train-size",
                "32",
                "--eval-size",
                "32",
                "--device",
                "cpu",
                "--workers",
                "1",
                "--output",
            ])
            .arg(dir.path())
            .args(["--name", name])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let regularised = [
        "--drop-path",
        "0.3",
        "--mixup",
        "0.2",
        "--cutmix",
        "1.0",
        "--smoothing",
        "0.1",
        "--reprob",
        "0.5",
        "--aa",
        "rand-m9-mstd0.5-inc1",
        "--color-jitter",
        "0.4",
        "--color-jitter-prob",
        "0.8",
        "--grayscale-prob",
        "0.2",
        "--gaussian-blur-prob",
        "0.3",
        "--drop-block",
        "0.2",
        "--bn-momentum",
        "0.05",
        "--bn-eps",
        "1e-4",
        // At the start only (a resume loads the checkpoint's head over the fresh one).
        "--head-init-scale",
        "0.5",
        "--head-init-bias",
        "-0.1",
    ];
    run("full", &regularised);
    run("cut", &[&regularised[..], &["--max-steps", "4"]].concat());
    let out = std::process::Command::new(common::bin())
        .arg("--resume")
        .arg(dir.path().join("cut"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run("plain", &[]);
    let full = losses(&dir.path().join("full"));
    assert_eq!(full.len(), 10);
    assert_eq!(
        full,
        losses(&dir.path().join("cut")),
        "a resumed drop-path + DropBlock + mixup + cutmix + erasing + RandAugment + ColorJitter + \
         grayscale + blur run differs"
    );
    assert_ne!(full, losses(&dir.path().join("plain")), "the regularisers changed nothing");
}

#[test]
fn the_time_spent_waiting_for_data_is_logged_and_an_input_bound_run_is_told_so() {
    // A slow disk (every image read 100 ms longer, one decode worker) against a tiny model: most
    // of each step is waiting for the loader, which each step record, TensorBoard's
    // train/data_wait_fraction and the epoch's line report, with what to change.
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 2, 1, 16, 1).unwrap(); // 20 train images: 2 steps of 8
    let out = std::process::Command::new(common::bin())
        .args(["train", "--arch", "resnet18", "--act", "relu", "--epochs", "1", "--batch-size", "8"])
        .args([
            "--train-size",
            "16",
            "--eval-size",
            "16",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--log-every",
            "1",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--output")
        .arg(dir.path())
        .args(["--name", "slow"])
        .env("RESNET_TRAIN_SLOW_READ_MS", "100")
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("note: input-bound: training waited for decoded batches"), "{text}");
    assert!(text.contains("(--workers 1, ") && text.contains("more workers"), "{text}");
    assert!(text.contains("data wait"), "{text}");
    let recs = common::step_records(&dir.path().join("slow"));
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert!(r.step_s > 0.0 && (0.0..=r.step_s).contains(&r.data_s), "{r:?}");
        assert!((r.img_per_s * r.step_s - 8.0).abs() < 1e-6, "{r:?}");
    }
    // The first batch has nothing prefetched: its 8 reads of 100 ms are all waited for.
    assert!(recs[0].data_s >= 0.75 && recs[0].data_s / recs[0].step_s > 0.5, "{:?}", recs[0]);
}

#[test]
fn head_init_scales_the_classifier_and_sets_its_bias_and_the_ema_starts_from_it() {
    // timm's train.py: fc.weight *= scale, fc.bias *= scale, then fc.bias = bias.
    use resnet_train::train::step::engine::Engine;
    let cfg = TrainConfig {
        arch: Arch::Resnet18,
        act: ActKind::Relu,
        small_stem: true,
        device: "cpu".into(),
        model_ema: true,
        ..TrainConfig::default()
    };
    let mut e = Engine::new(cfg, Device::Cpu, 10).unwrap();
    let fc = |e: &Engine| {
        let s: std::collections::BTreeMap<String, Tensor> = e.model_state().into_iter().collect();
        (s["fc.weight"].copy(), s["fc.bias"].copy(), s["layer1.0.conv1.weight"].copy())
    };
    let (w0, b0, conv0) = fc(&e);
    e.init_head(Some(0.25), None).unwrap();
    let (w1, b1, conv1) = fc(&e);
    assert!(w1.equal(&(&w0 * 0.25)) && b1.equal(&(&b0 * 0.25)) && conv1.equal(&conv0));
    e.init_head(None, Some(-2.0)).unwrap();
    let (w2, b2, _) = fc(&e);
    assert!(w2.equal(&w1) && b2.equal(&b2.full_like(-2.0)));
    let ema: std::collections::BTreeMap<String, Tensor> = e.ema_weights().unwrap().into_iter().collect();
    assert!(ema["fc.weight"].equal(&w2) && ema["fc.bias"].equal(&b2), "the EMA starts from the new head");
    let bad = TrainConfig { head_init_scale: Some(f64::NAN), ..TrainConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("--head-init-scale"));
}

#[test]
fn relu_like_polyrelu_with_frozen_coefficients_trains_exactly_as_relu() {
    // w = [1, 0, 0], b = 0 frozen (`act_lr_scale = 0`): PolyReLU is relu(x) in value and gradient,
    // so the run is ReLU's, step for step (the coefficients draw no random numbers at init).
    // BatchNorm stays a separate operator (`fused-act`), as ReLU's: folded into the activation it
    // is applied on load, which rounds differently from libtorch's batch norm.
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 8, 2, 32, 5).unwrap();
    let run = |name: &str, act: ActKind, scale: f64| {
        let cfg = TrainConfig {
            act,
            order: 3,
            act_init: resnet_train::model::ActInit::ReluLike,
            act_lr_scale: scale,
            act_impl: resnet_train::model::ActImpl::FusedAct,
            epochs: 1,
            monitor_every: 5,
            ..tiny_config(&data, dir.path(), name)
        };
        train(cfg, None).unwrap();
        common::step_records(&dir.path().join(name))
    };
    let relu = run("relu", ActKind::Relu, 1.0);
    let frozen = run("frozen", ActKind::Polyrelu, 0.0);
    let learned = run("learned", ActKind::Polyrelu, 1.0);
    assert_eq!(relu.len(), 10);
    let trace = |r: &[resnet_train::train::run::metrics::StepRecord]| -> Vec<(f64, f64)> {
        r.iter().map(|s| (s.loss, s.grad_norm)).collect()
    };
    assert_eq!(trace(&frozen), trace(&relu), "frozen relu-like PolyReLU differs from ReLU");
    assert_ne!(trace(&learned), trace(&relu), "learning the coefficients changes the run");
    for rec in frozen.iter().filter(|r| !r.coefficients.is_empty()) {
        assert!(
            rec.coefficients.iter().all(|c| c.weight == [1.0, 0.0, 0.0] && c.bias == 0.0),
            "step {}",
            rec.step
        );
    }
    let last_logged = learned.iter().rev().find(|r| !r.coefficients.is_empty()).unwrap();
    let moved = last_logged.coefficients.iter().any(|c| c.weight[2] != 0.0);
    assert!(moved, "with act_lr_scale 1 the cubic coefficients move");
}

/// `initial_checkpoint`: a run starts from a file's weights instead of its seeded init. A
/// 1000-class torchvision-style ReLU ResNet-18 started as a 10-class PolyNorm model: every
/// convolution and BatchNorm takes the file's values, the classifier (another size) and the
/// activation coefficients (none in the file) keep their init, and the run says so (as it says
/// other class names, or BlurPool on one side only). A resumed run needs the file no more;
/// another architecture is refused naming the file.
#[test]
fn initial_checkpoint_starts_a_run_from_a_files_weights() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 40, 4).unwrap();
    let start = dir.path().join("relu-1000.safetensors");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin()).args(args).output().unwrap();
        (out.status.success(), common::output_text(&out))
    };
    let (ok, text) = run(&[
        "init",
        "--arch",
        "resnet18",
        "--act",
        "relu",
        "--seed",
        "7",
        "--out",
        start.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let train = |extra: &[&str]| {
        let mut args =
            vec!["train", "--config", "configs/recipes/smoke-cpu.toml", "--data", data.to_str().unwrap()];
        args.extend(["--output", dir.path().to_str().unwrap(), "--workers", "1"]);
        args.extend(extra);
        let out = std::process::Command::new(common::bin())
            .current_dir(common::repo())
            .args(&args)
            .output()
            .unwrap();
        (out.status.success(), common::output_text(&out))
    };
    // A learning rate of 1e-30 leaves every weight as loaded (BatchNorm's running statistics move).
    let (ok, text) = train(&[
        "--initial-checkpoint",
        start.to_str().unwrap(),
        "--lr",
        "1e-30",
        "--max-steps",
        "1",
        "--name",
        "ft",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("model weights from") && text.contains("relu-1000.safetensors"), "{text}");
    assert!(text.contains("has 1000 classes, the data 10: the classifier (fc) starts at its init"), "{text}");
    assert!(
        text.contains("is a ReLU model: the activation coefficients start at their init (PolyNorm order 3)"),
        "{text}"
    );
    let file = resnet_train::model::weights::read(&start).unwrap();
    let last = resnet_train::model::weights::read(&dir.path().join("ft/last.safetensors")).unwrap();
    let mut compared = 0;
    for (name, t) in &file.tensors {
        if name.starts_with("fc.") || name.contains("running_") || name.ends_with("num_batches_tracked") {
            continue;
        }
        let got = &last.tensors[name];
        assert!((got - t).abs().max().double_value(&[]) < 1e-20, "{name} is not the file's");
        compared += 1;
    }
    assert_eq!(compared, 60, "ResNet-18: 20 convolutions and 20 BatchNorms (weight, bias)");
    assert_eq!(last.tensors["fc.weight"].size(), [10, 512]);
    let third = (1.0f32 / 3.0) as f64;
    assert_eq!(Vec::<f64>::try_from(&last.tensors["layer1.0.act1.weight"]).unwrap(), vec![third; 3]);

    // Resuming continues from the run's checkpoint: the starting file may be gone.
    std::fs::remove_file(&start).unwrap();
    let ft = dir.path().join("ft");
    let (ok, text) = train(&["--resume", ft.to_str().unwrap(), "--max-steps", "2"]);
    assert!(ok && !text.contains("model weights from"), "{text}");

    // As many classes under other names: taken, and said.
    let other = dir.path().join("other");
    synthetic::write_dataset(&other, 2, 1, 40, 4).unwrap();
    for split in ["train", "val"] {
        std::fs::rename(other.join(split).join("circle"), other.join(split).join("a_circle")).unwrap();
    }
    let ft_last = ft.join("last.safetensors");
    let out = std::process::Command::new(common::bin())
        .current_dir(common::repo())
        .args(["train", "--config", "configs/recipes/smoke-cpu.toml", "--workers", "1", "--max-steps", "1"])
        .args([
            "--name",
            "renamed",
            "--data",
            other.to_str().unwrap(),
            "--output",
            dir.path().to_str().unwrap(),
        ])
        .args(["--initial-checkpoint", ft_last.to_str().unwrap(), "--blurpool"])
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("classes differ from the data's (class 0: checker in the file, a_circle in the data)"),
        "{text}"
    );
    // The same weights in a network with FFCV's BlurPool: taken, and said.
    assert!(text.contains("was trained without BlurPool, the run trains with it"), "{text}");
    assert!(!text.contains("start at their init"), "same activation: coefficients taken: {text}");

    // Another architecture: refused, naming the file.
    let r34 = dir.path().join("r34.safetensors");
    let (ok, text) = run(&["init", "--arch", "resnet34", "--out", r34.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (ok, text) =
        train(&["--initial-checkpoint", r34.to_str().unwrap(), "--max-steps", "1", "--name", "r34"]);
    assert!(
        !ok && text.contains("r34.safetensors")
            && text.contains("holds a resnet34, the run trains a resnet18"),
        "{text}"
    );
}

/// `mixup_off_epoch` (timm's): Mixup/CutMix mix up to that epoch and not from it on. Epoch 0
/// trains exactly as with Mixup always on; every step of epoch 1 differs from it.
#[test]
fn mixup_stops_at_mixup_off_epoch() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 2, 1, 32, 5).unwrap(); // 20 train images: 2 steps per epoch
    let run = |name: &str, off: usize| {
        let mut cfg = tiny_config(&data, dir.path(), name);
        (cfg.mixup, cfg.cutmix, cfg.mixup_off_epoch, cfg.workers) = (0.8, 1.0, off, 1);
        train(cfg, None).unwrap();
        losses(&dir.path().join(name))
    };
    let (always, off) = (run("always", 0), run("off-at-1", 1));
    assert_eq!((always.len(), off.len()), (4, 4));
    assert_eq!(always[..2], off[..2], "epoch 0 mixes in both");
    assert!(always[2..].iter().zip(&off[2..]).all(|(a, b)| a.1 != b.1), "{always:?} {off:?}");
}

/// WSD's cooldown branching with `fork`: a wsd run stopped where its decay would start (step 10
/// of 15), forked. The fork resumed as is ends exactly as the run itself resumed (per-step
/// losses and learning rates); a fork resumed with `--epochs 5` holds the stable learning rate
/// until its own decay (steps 21-24); resuming the source leaves the forks' files alone, and a
/// resume that moves the decay says where the learning rate continues. A fork killed before its
/// folder is renamed into place leaves nothing under the new name and can be made again.
#[test]
fn wsd_forks_branch_the_stable_phase_into_their_own_decays() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 5).unwrap(); // 5 steps per epoch
    let mut cfg = tiny_config(&data, dir.path(), "stable");
    (cfg.act, cfg.epochs, cfg.max_steps, cfg.warmup_epochs) = (ActKind::Relu, 3, 10, 1.0);
    (cfg.schedule, cfg.decay_epochs) = (ScheduleKind::Wsd, Some(1.0));
    assert!(train(cfg, None).unwrap().stopped_early);
    let stable = dir.path().join("stable");
    let fork = |to: &str, fault: &str| {
        let mut c = std::process::Command::new(common::bin());
        c.arg("fork").arg(&stable).arg(dir.path().join(to));
        if !fault.is_empty() {
            c.env("RESNET_TRAIN_FAULT", fault);
        }
        let out = c.output().unwrap();
        (out.status.success(), common::output_text(&out))
    };
    let hidden = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".same"))
    };
    let (ok, text) = fork("same", "fork:rename@1");
    assert!(!ok && !dir.path().join("same").exists() && hidden(), "{text}");
    let (ok, text) = fork("same", "");
    assert!(ok && text.contains("at step 10 (epoch 1, batch 5)") && !hidden(), "{text}");
    assert!(fork("longer", "").0 && fork("earlier", "").0);
    let (ok, text) = fork("same", "");
    assert!(!ok && text.contains("already exists"), "{text}");
    let (ok, text) = fork("data", "");
    assert!(!ok && text.contains("already exists"), "{text}");
    let out =
        std::process::Command::new(common::bin()).arg("fork").arg(&data).arg(dir.path().join("x")).output();
    let text = common::output_text(&out.unwrap());
    assert!(text.contains("not a run folder"), "{text}");
    let (ok, text) = fork("stable/inner", "");
    assert!(!ok && text.contains("inside the run it forks"), "{text}");
    // A run in use (a live process holds its lock) is not forked.
    let lock = resnet_train::train::run::run_dir::RunLock::acquire(&stable).unwrap();
    let (ok, text) = fork("busy", "");
    assert!(!ok && text.contains("is in use by process") && !dir.path().join("busy").exists(), "{text}");
    drop(lock);
    let same = dir.path().join("same");
    let config = std::fs::read_to_string(same.join("config.toml")).unwrap();
    assert!(config.contains("name = \"same\""), "{config}");

    // The source resumed, and the fork resumed as is: the same steps.
    let resume = |run: &Path, flags: &[&str]| {
        use clap::Parser;
        let mut argv = vec!["resnet-train", "--resume", run.to_str().unwrap()];
        argv.extend(flags);
        let args = resnet_train::cli::Cli::try_parse_from(argv).unwrap().train;
        train(TrainConfig::resume(run, &args).unwrap(), Some(run)).unwrap()
    };
    // `schedule --branches` says where a 3-epoch branch of the 5-epoch run forks: step 10, where
    // this run was stopped; a budget that is not shorter is refused.
    let sched = |extra: &[&str]| {
        let mut c = std::process::Command::new(common::bin());
        c.args([
            "schedule",
            "--images",
            "40",
            "--batch-size",
            "8",
            "--lr-base",
            "0.4",
            "--warmup-epochs",
            "1",
        ]);
        let out = c
            .args(["--schedule", "wsd", "--decay-epochs", "1", "--epochs", "5", "--json"])
            .args(extra)
            .output();
        let out = out.unwrap();
        (out.status.success(), common::output_text(&out))
    };
    let (ok, text) = sched(&["--branches", "3"]);
    assert!(ok && text.contains(r#""branches":[{"epochs":3,"max_steps":10}]"#), "{text}");
    let (ok, text) = sched(&["--branches", "5"]);
    assert!(!ok && text.contains("--branches 5: a branch needs"), "{text}");
    let longer = dir.path().join("longer");
    let longer_before = std::fs::read(longer.join("last.safetensors")).unwrap();
    // Resumed at its --max-steps, a run trains nothing (before, it took one more step).
    let again = resume(&stable, &["--max-steps", "10"]);
    assert!(again.stopped_early && again.steps == 10 && common::logged_steps(&stable) == 10);
    assert_eq!(resume(&stable, &[]).steps, 15);
    assert_eq!(std::fs::read(longer.join("last.safetensors")).unwrap(), longer_before, "the fork changed");
    assert_eq!(resume(&same, &[]).steps, 15);
    assert_eq!(losses(&stable), losses(&same));
    // The longer budget: the peak until step 20, then its own 5-step decay (1 - sqrt).
    assert_eq!(resume(&longer, &["--epochs", "5"]).steps, 25);
    let lrs: Vec<f64> = losses(&longer).iter().map(|r| r.2).collect();
    assert_eq!(lrs[..10], losses(&stable).iter().map(|r| r.2).collect::<Vec<_>>()[..10]);
    assert!(lrs[4..21].iter().all(|&lr| (lr - 0.4 / 256.0 * 8.0).abs() < 1e-12), "{lrs:?}");
    assert!(lrs[20..].windows(2).all(|w| w[1] < w[0]), "{lrs:?}");
    assert!((lrs[24] - lrs[20] * (1.0 - 0.8f64.sqrt())).abs() < 1e-12, "{lrs:?}");

    // A resume that moves the decay earlier says so: at step 10 a 2-epoch decay has begun.
    let out = std::process::Command::new(common::bin())
        .args(["train", "--resume"])
        .arg(dir.path().join("earlier"))
        .args(["--decay-epochs", "2", "--max-steps", "11"])
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(text.contains("the changed schedule continues at lr") && text.contains("at step 10"), "{text}");
}

#[test]
fn augmix_splits_with_the_jsd_loss_train_and_resume_exactly() {
    // timm's AugMix recipe shape: aug_splits 3, JSD loss, split BatchNorm, random erasing
    // sparing the clean split.
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    synthetic::write_dataset(&data, 4, 1, 32, 5).unwrap(); // 40 train: 5 steps of 8 samples (24 images)
                                                           // In child processes: random erasing reseeds libtorch's global generator every step, which
                                                           // would race with the other tests' seeded inits in this process.
    let run_cli = |args: &[&str]| {
        let out = std::process::Command::new(common::bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let train_cli = |name: &str, extra: &[&str]| {
        let (data, out) = (data.display().to_string(), dir.path().display().to_string());
        let base = [
            "train",
            "--data",
            &data,
            "--output",
            &out,
            "--name",
            name,
            "--arch",
            "resnet18",
            "--act",
            "polynorm",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr-base",
            "0.4",
            "--warmup-epochs",
            "0.5",
            "--smoothing",
            "0.1",
            "--train-size",
            "32",
            "--eval-size",
            "32",
            "--device",
            "cpu",
            "--workers",
            "2",
            "--aa",
            "augmix-m3-w3",
            "--aug-splits",
            "3",
            "--split-bn",
            "--resplit",
            "--reprob",
            "0.5",
        ];
        run_cli(&[&base[..], extra].concat());
    };
    train_cli("full", &["--jsd-loss"]);
    train_cli("cut", &["--jsd-loss", "--max-steps", "2"]);
    let run = dir.path().join("cut");
    run_cli(&["--resume", &run.display().to_string()]);
    train_cli("ce", &[]);
    let full = losses(&dir.path().join("full"));
    assert_eq!(full.len(), 5);
    assert!(full.iter().all(|(_, l, _)| l.is_finite()));
    assert_eq!(full, losses(&run), "a resumed AugMix + JSD run differs");
    // The JSD term is added to the clean split's cross-entropy: the first step's loss (same
    // weights, same batch) is above plain cross-entropy over all three splits.
    let ce = losses(&dir.path().join("ce"));
    assert!(full[0].1 > ce[0].1, "JSD {} vs cross-entropy {}", full[0].1, ce[0].1);
    // The checkpoints carry the auxiliary BNs (resumable), and load for evaluation, which
    // uses the main BNs: eval's numbers are the run's.
    let best = dir.path().join("full/best.safetensors");
    let file = resnet_train::model::weights::read(&best).unwrap();
    assert!(file.tensors.contains_key("layer1.0.bn2.aux_bn.1.running_mean"));
    let out = std::process::Command::new(common::bin())
        .args(["eval", "--checkpoint"])
        .arg(&best)
        .arg("--data")
        .arg(&data)
        .args(["--device", "cpu", "--json"])
        .arg(dir.path().join("eval.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap()).unwrap();
    let summary = RunLog::read_summary(&dir.path().join("full/summary.csv"));
    let (top1, run_top1) = (eval["top1"].as_f64().unwrap(), summary[0].eval_top1.unwrap());
    assert!((top1 - run_top1).abs() < 1e-6, "eval {top1} vs the run's {run_top1}");
}
