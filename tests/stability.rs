//! Stability monitors: per-site statistics against a direct computation, and the mechanism the
//! stability work is about: at the paper's init PolyReLU (k >= 2) raises the residual stream to
//! the k-th power block after block, so a ResNet-50 forward pass leaves the fp16 range in layer1
//! and explodes past 1e20 (or to inf/NaN) within layer1-3 even in fp32 — after which libtorch's
//! batch norm turns the stream into zeros or NaN — while PolyNorm stays bounded and relu-like
//! PolyReLU starts finite.

mod common;

use resnet_train::model::{ActConfig, ActInit, ActKind, Arch, ResNet, ResNetConfig};
use resnet_train::train::step::stability::{first_beyond, first_nonfinite, forward_monitored, FP16_MAX};
use tch::{nn, Device, Kind, Tensor};

fn model(kind: ActKind, order: i64, init: ActInit, arch: Arch) -> (nn::VarStore, ResNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut cfg = ResNetConfig::new(arch, ActConfig::new(kind, order));
    cfg.act.init = init;
    let m = resnet_train::model::seeded(0, || ResNet::new(&vs.root(), cfg)).unwrap();
    (vs, m)
}

fn input(n: i64, px: i64) -> Tensor {
    resnet_train::model::seeded(1, || Tensor::randn([n, 3, px, px], (Kind::Float, Device::Cpu)))
}

#[test]
fn monitors_agree_with_a_direct_computation() {
    let (_vs, m) = model(ActKind::Polynorm, 3, ActInit::Paper, Arch::Resnet18);
    let x = input(2, 64);
    let (logits, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
    let mut direct = Vec::new();
    let again = tch::no_grad(|| {
        m.forward_observed(&x, true, &mut |site, t| direct.push((site.to_string(), t.copy())))
    });
    assert_eq!(stats.len(), 17);
    assert!(logits.allclose(&again, 1e-5, 1e-5, false));
    for (s, (site, t)) in stats.iter().zip(&direct) {
        assert_eq!(&s.site, site);
        assert_eq!(s.nonfinite, 0);
        let want = t.abs().max().double_value(&[]);
        assert!((s.max_abs - want).abs() <= 1e-6 * want.max(1.0), "{site}: {} vs {want}", s.max_abs);
    }
    // Non-finite values are counted, and max |x| is taken over the finite ones.
    let (_vs, m) = model(ActKind::Polyrelu, 8, ActInit::Paper, Arch::Resnet18);
    let big = input(1, 64) * 1e6;
    let (_, stats) = tch::no_grad(|| forward_monitored(&m, &big, true)).unwrap();
    let first = first_nonfinite(&stats).expect("order 8 on a 1e6-scaled input overflows");
    assert!(first.nonfinite > 0 && first.max_abs.is_finite());
}

#[test]
fn polyrelu_overflows_within_layer1_to_3_at_paper_init_polynorm_stays_bounded() {
    // As measured with the PyTorch reference: ResNet-50, batch 8, 128 px, train mode, fp32
    // (k = 2: ~1e2 after layer1.0, ~1e7 after layer1.2; here 98 and 3.3e7).
    let x = input(8, 128);
    for order in [2, 3] {
        let (_vs, m) = model(ActKind::Polyrelu, order, ActInit::Paper, Arch::Resnet50);
        let (_, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
        let in_layers_1_to_3 =
            |site: &str| ["layer1.", "layer2.", "layer3."].iter().any(|p| site.starts_with(p));
        let fp16 = first_beyond(&stats, FP16_MAX)
            .unwrap_or_else(|| panic!("PolyReLU k={order} stayed in fp16 range"));
        assert!(fp16.site.starts_with("layer1."), "k={order}: leaves the fp16 range at {}", fp16.site);
        let blown =
            first_beyond(&stats, 1e20).unwrap_or_else(|| panic!("PolyReLU k={order} stayed below 1e20"));
        assert!(in_layers_1_to_3(&blown.site), "k={order}: explodes at {}", blown.site);
        // After the explosion the stream is dead: zeros or non-finite at the last site.
        let last = stats.last().unwrap();
        assert!(last.max_abs == 0.0 || last.nonfinite > 0, "k={order}: {last:?}");
        eprintln!(
            "PolyReLU k={order}: beyond fp16 at {}, beyond 1e20 at {} ({:.2e})",
            fp16.site, blown.site, blown.max_abs
        );

        let (_vs, m) = model(ActKind::Polynorm, order, ActInit::Paper, Arch::Resnet50);
        let (_, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
        let worst = stats.iter().map(|s| s.max_abs).fold(0.0, f64::max);
        assert!(first_nonfinite(&stats).is_none() && worst < 100.0, "PolyNorm k={order}: max |x| {worst}");
        eprintln!("PolyNorm k={order}: max |activation| {worst:.1}");

        let (_vs, m) = model(ActKind::Polyrelu, order, ActInit::ReluLike, Arch::Resnet50);
        let (_, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
        assert!(first_nonfinite(&stats).is_none(), "relu-like PolyReLU k={order} starts finite");
    }
}

fn tiny_run(
    data: &std::path::Path,
    out: &std::path::Path,
    name: &str,
) -> resnet_train::train::config::TrainConfig {
    resnet_train::train::config::TrainConfig {
        data: Some(data.to_path_buf()),
        arch: Arch::Resnet18,
        act: ActKind::Polyrelu,
        order: 3,
        epochs: 1,
        batch_size: 8,
        lr_base: 0.1,
        train_size: 32,
        eval_size: 32,
        device: "cpu".into(),
        workers: 2,
        monitor_every: 1,
        max_consecutive_skips: 3,
        keep_last: 0,
        name: Some(name.into()),
        output: out.to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn guard_stops_a_diverging_fp16_polyrelu_run_naming_the_site_and_clamp_rescues_it() {
    use resnet_train::train::step::amp::Precision;
    use resnet_train::train::trainer::train;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    resnet_train::data::synthetic::write_dataset(&data, 4, 1, 32, 9).unwrap();
    let mut cfg = tiny_run(&data, dir.path(), "fp16-polyrelu");
    cfg.precision = Precision::Fp16;
    let err = train(cfg, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, resnet_train::error::Error::Diverged(_)), "{msg}");
    assert!(msg.contains("3 consecutive steps") && msg.contains("layer1."), "{msg}");
    eprintln!("{msg}");
    // Every skipped step is in the metrics, with the per-site statistics of the monitored steps.
    let recs = common::step_records(&dir.path().join("fp16-polyrelu"));
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r.skipped && r.activations.len() == 17));
    // A stopped run is left (and diagnosed) as it is, not rolled back: 3 back-offs from 2^16.
    assert_eq!(recs[2].loss_scale, 8192.0);

    // The remedy: clamping the polynomial's input keeps the same run going. (The first fp16 steps
    // may still be skipped while the loss scaler backs off from 2^16, as with GradScaler; the
    // default max_consecutive_skips = 25 leaves room for that.)
    let mut cfg = tiny_run(&data, dir.path(), "fp16-polyrelu-clamp");
    cfg.precision = Precision::Fp16;
    cfg.act_clamp = Some(1.0);
    cfg.epochs = 4;
    cfg.max_consecutive_skips = 25;
    let s = train(cfg, None).unwrap();
    assert_eq!(s.steps, 20);
    let recs = common::step_records(&s.run_dir);
    let taken = recs.iter().filter(|r| !r.skipped).count();
    assert!(taken >= 10, "only {taken} of 20 steps taken");
    assert!(recs.iter().all(|r| r.activations.iter().all(|a| a.nonfinite == 0)), "no activation overflowed");
}

#[test]
fn activations_run_in_fp32_under_autocast_by_default_as_cuda_autocast_runs_the_reference() {
    // polycom.py computes x ** i and rsqrt(y.pow(2).mean()), and CUDA autocast runs pow and rsqrt
    // in fp32: the reference's activations are fp32 under fp16 autocast. Our default does the same
    // on every device. In fp16 instead (act_fp32 = false), PolyNorm_4's RMS squares x^4: 5^8 =
    // 390625 overflows fp16, and the x^4 term silently becomes 0, in value and gradient.
    let vs = nn::VarStore::new(Device::Cpu);
    let default =
        resnet_train::model::Activation::new(&vs.root() / "a", ActConfig::new(ActKind::Polynorm, 4));
    let lowp_cfg = ActConfig { fp32: false, ..ActConfig::new(ActKind::Polynorm, 4) };
    let lowp = resnet_train::model::Activation::new(&vs.root() / "b", lowp_cfg);
    let values = [5.0f32, 1.0, -2.0, 0.5];
    let x32 = Tensor::from_slice(&values).view([1, 4, 1, 1]);
    let expected = tch::no_grad(|| default.forward(&x32));
    let run = |a: &resnet_train::model::Activation| {
        let x = x32.to_kind(Kind::Half).set_requires_grad(true);
        let y = {
            let _ac = resnet_train::ffi::AutocastGuard::new(Device::Cpu, Kind::Half).unwrap();
            a.forward(&x)
        };
        y.sum(Kind::Float).backward();
        (y.detach().to_kind(Kind::Float), x.grad())
    };
    let (y, grad32) = run(&default);
    assert_eq!(y.kind(), Kind::Float);
    assert!(y.allclose(&expected, 1e-6, 1e-6, false), "{y} vs {expected}");
    assert!(bool::try_from(grad32.isfinite().all()).unwrap());
    let (y, grad) = run(&lowp);
    assert!((&y - &expected).abs().max().double_value(&[]) > 0.1, "the fp16 RMS lost the x^4 term");
    let grad_err = (grad.to_kind(Kind::Float) - grad32.to_kind(Kind::Float)).abs().max().double_value(&[]);
    assert!(grad_err > 0.01, "and its gradient (fp16 rounding alone: ~1e-4): {grad} vs {grad32}");
    let clamp = ActConfig { clamp: Some(0.5), ..ActConfig::new(ActKind::Polyrelu, 2) };
    let a = resnet_train::model::Activation::new(&vs.root() / "c", clamp);
    let big = Tensor::from_slice(&[10.0f32, -3.0, 0.25]);
    let y: Vec<f32> = Vec::try_from(&a.forward(&big)).unwrap();
    // w = [1/2, 1/2]: relu(clamp(x))/2 + relu(clamp(x))^2/2.
    assert_eq!(y, vec![0.375, 0.0, 0.15625]);
}

#[test]
fn injected_loss_spike_rolls_back_lowers_lr_and_is_logged_and_bounded() {
    use resnet_train::train::trainer::train;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    resnet_train::data::synthetic::write_dataset(&data, 4, 1, 32, 3).unwrap();
    let mut cfg = tiny_run(&data, dir.path(), "spike");
    cfg.act = ActKind::Polynorm;
    cfg.epochs = 2;
    cfg.monitor_every = 0;
    cfg.spike_warmup = 3;
    cfg.snapshot_every = 2;
    cfg.inject_spike_at = Some(6);
    let s = train(cfg.clone(), None).unwrap();
    assert_eq!(s.steps, 10);
    let recs = common::step_records(&s.run_dir);
    let event = recs[6].event.as_deref().expect("the rollback is logged at step 6");
    assert!(event.contains("restored the snapshot of step 6") && event.contains("x0.5"), "{event}");
    assert!(recs[6].skipped && recs.iter().filter(|r| r.event.is_some()).count() == 1);
    // The learning rate is halved from then on (same schedule, x0.5).
    let base = |r: &resnet_train::train::run::metrics::StepRecord| r.lr;
    let mut plain = cfg.clone();
    plain.inject_spike_at = None;
    plain.name = Some("plain".into());
    let p = train(plain, None).unwrap();
    let precs = common::step_records(&p.run_dir);
    assert!((base(&recs[7]) - 0.5 * base(&precs[7])).abs() < 1e-12);
    assert!((base(&recs[5]) - base(&precs[5])).abs() < 1e-12);
    // A comparison shows it: the run's row counts the rollback, and its variant is marked as
    // intervened on (`report --table`, a study's study.md).
    use resnet_train::experiments::study::{table_of_runs, to_markdown, Interventions};
    let g = Interventions::read(&s.run_dir);
    assert_eq!((g.skipped, g.rollbacks, g.remedies.len()), (0, 1, 0), "{g:?}");
    assert!(!Interventions::read(&p.run_dir).any());
    let (table, results) = table_of_runs(&[p.run_dir.clone(), s.run_dir.clone()], &[], None).unwrap();
    let md = to_markdown(&table, &results);
    let row =
        |name: &str| md.lines().find(|l| l.starts_with(&format!("| {name} "))).unwrap_or("").to_string();
    assert!(row("spike †").contains("| 1 |"), "{md}");
    assert!(!row("plain").contains('†'), "{md}");
    // Bounded: with no rollbacks allowed, the same spike stops the run with a diagnosis.
    let mut strict = cfg;
    strict.max_rollbacks = 0;
    strict.name = Some("strict".into());
    let err = train(strict, None).unwrap_err().to_string();
    assert!(err.contains("--max-rollbacks") && err.contains("step 6"), "{err}");
}

#[test]
fn ablation_rows_summarise_the_step_records() {
    use resnet_train::experiments::ablate::{Cell, Remedy, Row};
    use resnet_train::train::run::metrics::StepRecord;
    use resnet_train::train::step::amp::Precision;
    use resnet_train::train::step::stability::SiteStats;
    let site = |s: &str, max_abs: f64, nonfinite: i64| SiteStats { site: s.into(), max_abs, nonfinite };
    let rec = |step: usize, loss: f64, skipped: bool, acts: Vec<SiteStats>| StepRecord {
        step,
        epoch: 0,
        loss,
        lr: 0.1,
        grad_norm: 1.0,
        loss_scale: 65536.0 / 2f64.powi(step as i32),
        skipped,
        img_per_s: 1.0,
        data_s: 0.0,
        step_s: 1.0,
        elapsed_s: 0.0,
        activations: acts,
        coefficients: Vec::new(),
        event: None,
    };
    let records = vec![
        rec(0, 2.0, false, vec![site("act1", 3.0, 0), site("layer1.0.act1", 50.0, 0)]),
        rec(1, 1.0, false, vec![site("act1", 4.0, 0), site("layer2.1.act2", 9e4, 0)]),
        rec(
            2,
            f64::NAN,
            true,
            vec![site("act1", 4.0, 0), site("layer3.0.act1", 1e30, 0), site("layer3.1.act2", 0.0, 7)],
        ),
    ];
    let cell = Cell {
        act: ActKind::Polyrelu,
        order: Some(2),
        precision: Precision::Fp16,
        init: Some(ActInit::Paper),
        remedy: Remedy::None,
    };
    assert_eq!(cell.name(), "polyrelu-k2-fp16-paper-none");
    let r = Row::from_records(&cell, &records, Some("stopped".into()), 1.0);
    assert_eq!((r.steps_run, r.steps_survived, r.first_nonfinite_step), (3, 2, Some(2)));
    assert_eq!(r.first_nonfinite_site.as_deref(), Some("layer3.1.act2"));
    assert_eq!((r.skipped_steps, r.min_loss, r.final_loss_scale), (1, 1.0, 16384.0));
    assert!(r.final_loss.is_nan() && r.first_loss.is_nan(), "means over windows holding a NaN");
    assert_eq!(r.stage_max_abs[..3], [4.0, 50.0, 9e4]);
    assert!(r.stage_max_abs[3].is_infinite() && r.max_abs_act.is_infinite() && r.stage_max_abs[4] == 0.0);
    assert!(r.diverged);
    // A finite run: not diverged; a non-finite loss without a non-finite site names the loss.
    let r = Row::from_records(&cell, &records[..2], None, 1.0);
    assert_eq!((r.steps_survived, r.first_loss, r.final_loss, r.diverged), (2, 1.5, 1.5, false));
    let records = vec![rec(0, 2.0, false, vec![]), rec(1, f64::INFINITY, true, vec![])];
    let r = Row::from_records(&cell, &records, None, 1.0);
    assert_eq!((r.first_nonfinite_step, r.first_nonfinite_site.as_deref()), (Some(1), Some("loss")));
    for text in ["none", "act-fp32", "act-lowp", "clamp:1.5", "clip:2"] {
        assert_eq!(text.parse::<Remedy>().unwrap().to_string(), text);
    }
    for bad in ["clamp", "clamp:-1", "clip:x", "fp32"] {
        assert!(bad.parse::<Remedy>().is_err(), "{bad}");
    }
}

#[test]
fn fp16_ablation_polyrelu_diverges_polynorm_trains_and_an_interrupted_ablation_resumes() {
    use resnet_train::experiments::ablate::{self, AblationConfig, CSV_HEADER};
    use resnet_train::train::step::amp::Precision;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    resnet_train::data::synthetic::write_dataset(&data, 4, 1, 32, 9).unwrap();
    let mut cfg = AblationConfig {
        steps: 12,
        acts: vec![ActKind::Polyrelu, ActKind::Polynorm],
        orders: vec![3],
        precisions: vec![Precision::Fp16],
        name: "abl".into(),
        output: dir.path().to_path_buf(),
        ..Default::default()
    };
    let t = &mut cfg.train;
    (t.data, t.arch, t.zero_init_residual, t.batch_size, t.train_size, t.eval_size) =
        (Some(data), Arch::Resnet18, true, 4, 32, 32);
    (t.device, t.workers, t.channels_last, t.max_consecutive_skips) = ("cpu".into(), 2, true, 10);
    let first = ablate::run(&cfg).unwrap();
    assert_eq!(first.ran, 2);
    let (polyrelu, polynorm) = (&first.rows[0], &first.rows[1]);
    // PolyReLU_3 leaves fp16's range in the forward pass at once and the guard stops it.
    assert!(polyrelu.diverged && polyrelu.steps_survived == 0, "{polyrelu:?}");
    assert!(polyrelu.max_abs_act > FP16_MAX && polyrelu.diagnosis.as_deref().unwrap().contains("layer"));
    // PolyNorm_3 takes its steps once the loss scaler has backed off, with bounded activations.
    assert!(
        !polynorm.diverged && polynorm.steps_survived == 12 && polynorm.max_abs_act < 100.0,
        "{polynorm:?}"
    );
    assert!(polynorm.skipped_steps < 10 && polynorm.final_loss.is_finite());
    let abl = dir.path().join("abl");
    for ext in ["svg", "png"] {
        resnet_train::experiments::report::draw_ablation(
            &first.rows,
            cfg.steps,
            &abl.join(format!("ablation.{ext}")),
        )
        .unwrap();
    }
    let csv = std::fs::read_to_string(abl.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some(CSV_HEADER));
    assert_eq!(csv.lines().count(), 3);
    for f in ["ablation.md", "ablation.svg", "ablation.png", "ablation.toml"] {
        assert!(abl.join(f).metadata().unwrap().len() > 100, "{f}");
    }
    // Interrupted during the second cell: its folder exists but holds no cell.toml. Running the
    // ablation again skips the finished cell and redoes the unfinished one, to the same result.
    std::fs::remove_file(abl.join("cells/polynorm-k3-fp16-paper-none/cell.toml")).unwrap();
    let again = ablate::run(&cfg).unwrap();
    assert_eq!(again.ran, 1);
    // (Compared as text: NaN losses are equal there.)
    let strip = |rows: &[ablate::Row]| {
        format!("{:?}", rows.iter().map(|r| ablate::Row { seconds: 0.0, ..r.clone() }).collect::<Vec<_>>())
    };
    assert_eq!(strip(&again.rows), strip(&first.rows));
    // A different grid in the same folder is refused, not mixed in.
    cfg.steps = 5;
    let err = ablate::run(&cfg).unwrap_err().to_string();
    assert!(err.contains("ablation.toml") && err.contains("different"), "{err}");
}

#[test]
fn divergence_guard_applies_the_configured_remedy_and_continues_also_after_resume() {
    use resnet_train::train::config::{TrainArgs, TrainConfig};
    use resnet_train::train::step::amp::Precision;
    use resnet_train::train::step::stability::Remedy;
    use resnet_train::train::trainer::train;
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    resnet_train::data::synthetic::write_dataset(&data, 4, 1, 32, 9).unwrap();
    let mut cfg = tiny_run(&data, dir.path(), "remedy");
    cfg.precision = Precision::Fp16;
    cfg.epochs = 6;
    cfg.max_consecutive_skips = 10; // room for the loss scaler's back-off from 2^16 after the remedy
    cfg.max_steps = 12; // interrupted after the remedy, then resumed
    cfg.divergence_remedies = vec![Remedy::Clamp(1.0)];
    let first = train(cfg, None).unwrap();
    assert!(first.stopped_early);
    let run = dir.path().join("remedy");
    let recs = common::step_records(&run);
    let at =
        recs.iter().position(|r| r.event.as_deref().is_some_and(|e| e.contains("applied remedy clamp:1")));
    let at = at.unwrap_or_else(|| panic!("no remedy event: {recs:?}"));
    assert_eq!(at, 9, "after max_consecutive_skips = 10 skipped steps");
    assert!(recs[..=at].iter().all(|r| r.skipped));
    assert_eq!(recs[at].loss_scale, 65536.0, "the loss scale of the snapshot (step 0) is back");
    // The resumed run keeps the clamp (the checkpoint's model config and state say so) and trains.
    let rest = train(TrainConfig::resume(&run, &TrainArgs::default()).unwrap(), Some(&run)).unwrap();
    assert_eq!(rest.steps, 30);
    let recs = common::step_records(&run);
    let taken = recs[at + 1..].iter().filter(|r| !r.skipped).count();
    assert!(taken >= 10, "only {taken} of {} steps after the remedy were taken", recs.len() - at - 1);
    assert!(recs[at + 1..].iter().all(|r| r.activations.iter().all(|a| a.nonfinite == 0)));
    let file = resnet_train::model::weights::read(&run.join("last.safetensors")).unwrap();
    assert_eq!(file.model_config(&run).unwrap().act.clamp, Some(1.0));
    // Without remedies left, the guard stops with a diagnosis that names what was tried.
    let mut cfg = tiny_run(&data, dir.path(), "remedy-exhausted");
    cfg.precision = Precision::Fp16;
    cfg.epochs = 3;
    cfg.divergence_remedies = vec![Remedy::Clip(1.0)]; // does not stop the forward overflow
    let err = train(cfg, None).unwrap_err().to_string();
    assert!(err.contains("after the remedies clip:1") && err.contains("layer1."), "{err}");
}
