//! Data-parallel training on libtorch's c10d (Gloo on CPU): the collectives against closed forms,
//! DDP's gradient semantics against gradient accumulation, and `resnet-train launch` end to end.

use resnet_train::dist::{checksum, Dist, DistBackend, DistEnv};
use resnet_train::ffi::dist::ReduceOp;
use std::time::Duration;
use tch::{Kind, Tensor};

/// A TCP port that was free a moment ago (the OS picks it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a local port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        world,
        local_rank: rank,
        local_world: world,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        source: "test",
        agent_store: false,
    }
}

/// Runs `f(rank, dist)` on `world` threads, each a rank of one Gloo process group.
fn on_ranks<T: Send + 'static>(world: usize, f: fn(&Dist) -> T) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            std::thread::spawn(move || {
                let dist = Dist::init(
                    env(rank, world, port),
                    DistBackend::Auto,
                    tch::Device::Cpu,
                    Duration::from_secs(60),
                )
                .expect("rendezvous");
                f(&dist)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

/// `dist_bn`: before evaluating and saving, every rank holds rank 0's BatchNorm statistics
/// (broadcast, DDP's) or the mean over the ranks (reduce, timm's default), the model's and the
/// EMA's; the trained parameters are not touched. Rank r's statistics are set to r + 1.
#[test]
fn dist_bn_broadcasts_or_averages_the_running_statistics() {
    use resnet_train::dist::DistBn;
    use resnet_train::train::{config::TrainConfig, step::engine::Engine};
    for (mode, want) in [(DistBn::Broadcast, 1.0), (DistBn::Reduce, 1.5)] {
        let port = free_port();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || {
                    let dist = Dist::init(
                        env(rank, 2, port),
                        DistBackend::Auto,
                        tch::Device::Cpu,
                        Duration::from_secs(60),
                    )
                    .expect("rendezvous");
                    let cfg = TrainConfig {
                        arch: resnet_train::model::Arch::Resnet18,
                        model_ema: true,
                        dist_bn: mode,
                        ..TrainConfig::default()
                    };
                    let mut engine = Engine::new(cfg, tch::Device::Cpu, 10).unwrap();
                    engine.dist = Some(std::rc::Rc::new(dist));
                    let stats = engine.bn_statistics();
                    assert_eq!(stats.len(), 2 * 2 * 20, "model and EMA: mean and var of 20 BatchNorms");
                    for t in &stats {
                        let _ = t.shallow_clone().fill_(rank as f64 + 1.0);
                    }
                    let before = engine.vs.variables()["layer1.0.bn1.weight"].copy();
                    engine.sync_from_main(false).unwrap();
                    let got: Vec<f64> =
                        stats.iter().map(|t| t.mean(Kind::Double).double_value(&[])).collect();
                    let unchanged = engine.vs.variables()["layer1.0.bn1.weight"].equal(&before);
                    (got, unchanged)
                })
            })
            .collect();
        for h in ranks {
            let (got, unchanged) = h.join().expect("rank thread");
            assert!(got.iter().all(|&v| v == want), "{mode:?}: {got:?}");
            assert!(unchanged, "{mode:?}: trained parameters are left alone");
        }
    }
}

#[test]
fn gloo_collectives_match_closed_forms() {
    let out = on_ranks(3, |d| {
        let r = d.rank() as f64;
        // Sum, max and min of (r, -r, r^2) over ranks 0, 1, 2.
        let sum = d.reduce_f64(&[r, -r, r * r], ReduceOp::Sum).unwrap();
        let max = d.reduce_f64(&[r, -r], ReduceOp::Max).unwrap();
        let min = d.reduce_f64(&[r, -r], ReduceOp::Min).unwrap();
        // Averaging: rank r holds tensors filled with r (two dtypes, one bucket each, and a
        // channels_last-strided one); the mean over ranks is 1 everywhere.
        let grads = [
            Tensor::full([3, 4], r, (Kind::Float, tch::Device::Cpu)),
            Tensor::full([5], r, (Kind::Double, tch::Device::Cpu)),
            Tensor::full([2, 3, 4, 5], r, (Kind::Float, tch::Device::Cpu)).permute([0, 2, 3, 1]),
        ];
        d.average(&grads).unwrap();
        let means: Vec<f64> = grads.iter().map(|g| g.mean(Kind::Double).double_value(&[])).collect();
        let spread: Vec<f64> = grads.iter().map(|g| (g - 1.0).abs().max().double_value(&[])).collect();
        // Broadcast: every rank ends with rank 0's values.
        let w = [Tensor::arange(6, (Kind::Float, tch::Device::Cpu)) * (r + 1.0)];
        d.broadcast_from_main(&w).unwrap();
        let w0 = Vec::<f32>::try_from(&w[0]).unwrap();
        let same = d.check_same("a value", 7.0).is_ok();
        let differ = d.check_same("the rank", r).unwrap_err().to_string();
        let any = (d.any(d.rank() == 2).unwrap(), d.any(false).unwrap());
        d.barrier().unwrap();
        (sum, max, min, means, spread, w0, same, differ, any)
    });
    for (sum, max, min, means, spread, w0, same, differ, any) in out {
        assert_eq!(sum, vec![3.0, -3.0, 5.0]);
        assert_eq!(max, vec![2.0, 0.0]);
        assert_eq!(min, vec![0.0, -2.0]);
        assert_eq!(means, vec![1.0; 3]);
        assert_eq!(spread, vec![0.0; 3]);
        assert_eq!(w0, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(same);
        assert!(differ.contains("the rank differs between ranks (0 .. 2)"), "{differ}");
        assert_eq!(any, (true, false));
    }
}

#[test]
fn rendezvous_waits_for_every_rank_then_times_out_with_a_clear_error() {
    // Rank 1 of 2 alone: nobody hosts the store.
    let port = free_port();
    let start = std::time::Instant::now();
    let err = Dist::init(env(1, 2, port), DistBackend::Gloo, tch::Device::Cpu, Duration::from_millis(1500))
        .err()
        .expect("no rank 0");
    let msg = err.to_string();
    assert!(msg.contains(&format!("rendezvous at 127.0.0.1:{port} (rank 1 of 2)")), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
}

#[test]
fn checksum_is_the_sum_of_absolute_values() {
    let t = [
        ("b".to_string(), Tensor::from_slice(&[1.0f32, -2.0, 3.5])),
        ("a".into(), Tensor::from_slice(&[-0.5f64])),
    ];
    assert_eq!(checksum(t).unwrap(), 7.0);
}

fn engine_config() -> resnet_train::train::config::TrainConfig {
    resnet_train::train::config::TrainConfig {
        arch: resnet_train::model::Arch::Resnet18,
        act: resnet_train::model::ActKind::Polynorm,
        small_stem: true,
        device: "cpu".into(),
        monitor_every: 0,
        seed: 3,
        clip_grad: 5.0,
        ..Default::default()
    }
}

/// Rank r's micro-batch of step s: 4 images, labels of 10 classes (closed forms: no global
/// generator shared by the rank threads).
fn shard(step: usize, rank: usize) -> (Tensor, Tensor) {
    let k = (7 * step + 13 * rank + 1) as f64;
    let x = (Tensor::arange(4 * 3 * 16 * 16, (Kind::Float, tch::Device::Cpu)) * (0.37 * k))
        .sin()
        .reshape([4, 3, 16, 16]);
    let y = (Tensor::arange(4, (Kind::Int64, tch::Device::Cpu)) * (step as i64 + 3) + rank as i64 * 5)
        .remainder(10);
    (x, y)
}

/// Name-sorted float values of the engine's trained weights, and with `buffers` of every float
/// variable (BatchNorm's running statistics too).
fn values(engine: &resnet_train::train::step::engine::Engine, buffers: bool) -> Vec<(String, Vec<f32>)> {
    let mut w: Vec<(String, Tensor)> = engine
        .vs
        .variables()
        .into_iter()
        .filter(|(_, t)| if buffers { t.kind() == Kind::Float } else { t.requires_grad() })
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w.into_iter().map(|(k, t)| (k, Vec::<f32>::try_from(&t.reshape([-1])).unwrap())).collect()
}

/// Rank `rank` of a 2-rank Gloo job on `port`: an engine with `config`, started from rank 0's
/// weights.
fn rank_engine(
    rank: usize,
    port: u16,
    config: resnet_train::train::config::TrainConfig,
) -> resnet_train::train::step::engine::Engine {
    let dist = Dist::init(env(rank, 2, port), DistBackend::Auto, tch::Device::Cpu, Duration::from_secs(60))
        .expect("rendezvous");
    let mut e = resnet_train::train::step::engine::Engine::new(config, tch::Device::Cpu, 10).unwrap();
    e.dist = Some(std::rc::Rc::new(dist));
    e.sync_from_main(true).unwrap();
    e
}

#[test]
fn two_ranks_take_the_steps_of_one_process_accumulating_their_batches() {
    // One multi-rank engine test at a time: each runs two ranks on threads of this process (with
    // libtorch's process-wide state), and the suite's other tests already use both cores.
    let _serial = common::global_lock();
    // DDP's contract: 2 ranks with a micro-batch each train exactly like 1 process accumulating
    // those 2 micro-batches (BatchNorm sees the same per-micro-batch statistics either way): the
    // same mean gradient, loss, clip, optimizer step and guard decisions.
    use resnet_train::train::step::optim::OptKind;
    // Each layout with the fused optimizer kernels (PyTorch's fused SGD and AdamW walk parameter,
    // gradient and state with one index on the CPU and refuse differing layouts on CUDA): a
    // channels_last parameter's gradient must reach them laid out as the parameter, bucket slice
    // or not.
    for (channels_last, opt) in
        [(false, OptKind::Momentum), (true, OptKind::Momentum), (true, OptKind::Adamw)]
    {
        let config = resnet_train::train::config::TrainConfig { channels_last, opt, ..engine_config() };
        two_ranks_match_one_process(&format!("channels_last {channels_last}, {opt:?}"), config);
    }
}

fn two_ranks_match_one_process(case: &str, config: resnet_train::train::config::TrainConfig) {
    use resnet_train::train::step::engine::Engine;
    use resnet_train::train::step::guards::GuardState;
    const STEPS: usize = 3;
    let mut single = Engine::new(config.clone(), tch::Device::Cpu, 10).unwrap();
    let mut gs = GuardState::default();
    let mut single_losses = Vec::new();
    for step in 0..STEPS {
        let r = single.step(&[shard(step, 0), shard(step, 1)], 0.2, step, &mut gs).unwrap();
        single_losses.push((r.loss, r.grad_norm));
    }
    let single_w = values(&single, false);

    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut e = rank_engine(rank, port, config);
                let mut gs = GuardState::default();
                let mut losses = Vec::new();
                for step in 0..STEPS {
                    let r = e.step(&[shard(step, rank)], 0.2, step, &mut gs).unwrap();
                    losses.push((r.loss, r.grad_norm));
                }
                // DDP's overlap (on by default): every bucket's all-reduce started from the
                // gradient hooks during backward, none had to wait for its end.
                let (early, buckets, views) = e.overlap_stats().expect("the reducer is on");
                assert!(
                    buckets >= 1 && early == buckets,
                    "{early} of {buckets} buckets started during backward"
                );
                // DDP's gradient_as_bucket_view: the averages stayed in the buckets, every
                // gradient a slice of one (no copy back).
                let params = e.vs.trainable_variables().len();
                assert_eq!(views, params, "{views} of {params} gradients are bucket slices");
                (losses, values(&e, false))
            })
        })
        .collect();
    for h in handles {
        let (losses, w) = h.join().unwrap();
        for ((l, g), (sl, sg)) in losses.iter().zip(&single_losses) {
            assert!((l - sl).abs() <= 1e-6 * sl.abs(), "{case}: loss {l} vs {sl}");
            assert!((g - sg).abs() <= 1e-5 * sg.abs(), "{case}: grad norm {g} vs {sg}");
        }
        assert_eq!(w.len(), single_w.len());
        for ((k, a), (_, b)) in w.iter().zip(&single_w) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff <= 1e-6, "{case}: {k}: the ranks' weights differ from one process's by {diff}");
        }
    }
}

#[test]
fn sync_bn_two_ranks_take_the_steps_of_one_process_with_their_joint_batch() {
    // One multi-rank engine test at a time: each runs two ranks on threads of this process (with
    // libtorch's process-wide state), and the suite's other tests already use both cores.
    let _serial = common::global_lock();
    // SyncBatchNorm's contract: 2 ranks x 4 images with --sync-bn train like 1 process with the
    // 8 images in one batch (BatchNorm over all 8 in both): same losses, gradient norms, weights
    // and running statistics, up to float32 rounding (the statistics are combined differently).
    use resnet_train::train::step::engine::Engine;
    use resnet_train::train::step::guards::GuardState;
    const STEPS: usize = 3;
    // Not torch's BN momentum and eps: the synchronised path must take them as libtorch's does.
    let config = || resnet_train::train::config::TrainConfig {
        sync_bn: true,
        bn_momentum: Some(0.3),
        bn_eps: Some(1e-3),
        ..engine_config()
    };
    let joint = |step: usize| {
        let (a, b) = (shard(step, 0), shard(step, 1));
        (Tensor::cat(&[a.0, b.0], 0), Tensor::cat(&[a.1, b.1], 0))
    };
    let mut single = Engine::new(config(), tch::Device::Cpu, 10).unwrap();
    let mut gs = GuardState::default();
    let mut single_losses = Vec::new();
    for step in 0..STEPS {
        let r = single.step(&[joint(step)], 0.2, step, &mut gs).unwrap();
        single_losses.push((r.loss, r.grad_norm));
    }
    let single_w = values(&single, true); // weights and BN running statistics
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(move |rank| {
            std::thread::spawn(move || {
                let mut e = rank_engine(rank, port, config());
                let mut gs = GuardState::default();
                let mut losses = Vec::new();
                for step in 0..STEPS {
                    let r = e.step(&[shard(step, rank)], 0.2, step, &mut gs).unwrap();
                    losses.push((r.loss, r.grad_norm));
                }
                (losses, values(&e, true))
            })
        })
        .collect();
    let mut worst = 0f32;
    for h in handles {
        let (losses, w) = h.join().unwrap();
        for ((l, g), (sl, sg)) in losses.iter().zip(&single_losses) {
            assert!((l - sl).abs() <= 1e-5 * sl.abs(), "loss {l} vs {sl}");
            assert!((g - sg).abs() <= 1e-4 * sg.abs(), "grad norm {g} vs {sg}");
        }
        assert_eq!(w.len(), single_w.len());
        for ((k, a), (_, b)) in w.iter().zip(&single_w) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            // Measured: at most ~1.3e-5 after 3 steps at lr 0.2 (float32, differently summed statistics).
            assert!(diff <= 5e-5, "{k}: the ranks' values differ from one process's by {diff}");
        }
    }
    eprintln!("SyncBatchNorm: largest weight / running-stat difference {worst:e}");
}

#[test]
fn fp16_with_an_inf_on_one_rank_only_makes_both_ranks_skip_that_step() {
    // One multi-rank engine test at a time: each runs two ranks on threads of this process (with
    // libtorch's process-wide state), and the suite's other tests already use both cores.
    let _serial = common::global_lock();
    // The loss scaler's found-inf decision is made on the averaged gradients and the all-reduced
    // loss, so a rank whose batch overflows takes every rank with it: both skip step 1 (and back
    // the scale off alike), and the weights stay identical across ranks.
    use resnet_train::train::step::guards::GuardState;
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let config = resnet_train::train::config::TrainConfig {
                    precision: resnet_train::train::step::amp::Precision::Fp16,
                    ..engine_config()
                };
                let mut e = rank_engine(rank, port, config);
                let mut gs = GuardState::default();
                let mut record = Vec::new();
                for step in 0..6 {
                    let (x, y) = shard(step, rank);
                    if step == 4 && rank == 1 {
                        let _ = x.get(0).get(0).get(0).get(0).fill_(f64::INFINITY);
                    }
                    let r = e.step(&[(x, y)], 0.2, step, &mut gs).unwrap();
                    record.push((r.skipped(), r.loss_scale));
                }
                (record, values(&e, false))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (rank, (record, _)) in results.iter().enumerate() {
        eprintln!("rank {rank}: (skipped, loss scale) per step: {record:?}");
        // The first steps skip while the scale backs off from 2^16 (fp16 gradients overflow);
        // once it has settled (step 3), step 4 (rank 1's inf) is skipped on both ranks, step 5 not.
        assert!(!record[3].0 && record[4].0 && !record[5].0, "rank {rank}: {record:?}");
        assert!(record[5].1 < record[3].1, "rank {rank}: the scale did not back off: {record:?}");
    }
    assert_eq!(results[0].0, results[1].0, "the ranks' loss scales differ");
    assert!(results[0].1 == results[1].1, "the ranks' weights differ after a skipped step");
}

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// 80 train / 40 val images of 10 classes at 32 px; ResNet-18, batch 4 per rank: with 2 ranks,
/// 10 steps per epoch; `last` every 3 steps.
fn ddp_setup(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    resnet_train::data::synthetic::write_dataset(&data, 8, 4, 32, 11).unwrap();
    let config = tmp.join("run.toml");
    let text = format!(
        "data = {data:?}\narch = \"resnet18\"\nact = \"polynorm\"\nepochs = 2\nbatch_size = 4\nlr_base = 0.2\n\
         warmup_epochs = 0.5\ntrain_size = 32\neval_size = 32\ndevice = \"cpu\"\nworkers = 1\n\
         log_every = 1000\nkeep_last = 1\ncheckpoint_every = 3\ndist_timeout = 60\noutput = {:?}\n",
        tmp.join("runs")
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn launch(port: u16, args: &[&str], fault: Option<(&str, &str)>) -> Output {
    launch_n(2, port, args, fault)
}

fn launch_n(nproc: usize, port: u16, args: &[&str], fault: Option<(&str, &str)>) -> Output {
    let mut c = Command::new(common::bin());
    let (nproc, port) = (nproc.to_string(), port.to_string());
    c.args(["launch", "--nproc-per-node", &nproc, "--grace", "5", "--master-port", &port, "--"]);
    c.args(args);
    if let Some((point, rank)) = fault {
        c.env("RESNET_TRAIN_FAULT", point).env("RESNET_TRAIN_FAULT_RANK", rank);
    }
    c.output().expect("binary runs")
}

fn text(o: &Output) -> String {
    common::output_text(o)
}

/// (step, loss, grad_norm) of every step, and summary.csv without its wall-clock column.
fn history(run: &Path) -> (Vec<(u64, f64, f64)>, Vec<String>) {
    let steps = common::step_records(run).iter().map(|r| (r.step as u64, r.loss, r.grad_norm)).collect();
    (steps, common::summary_without_time(run))
}

#[test]
fn launch_trains_two_ranks_and_their_sharded_eval_is_the_single_process_eval() {
    let tmp = common::tmpdir();
    let config = ddp_setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let out = launch(free_port(), &["train", "--config", cfg, "--name", "ddp"], None);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ranks      2 processes (2 per node, torchrun)"), "{log}");
    // Rank 0 alone prints the run's console lines and writes the run folder.
    assert_eq!(log.matches("finished:").count(), 1, "{log}");
    let run = tmp.path().join("runs/ddp");
    let (steps, summary) = history(&run);
    assert_eq!(steps.len(), 20, "2 epochs x 80 images / (2 ranks x 4)");
    assert_eq!(summary.len(), 3, "{summary:?}");
    // Each rank evaluated its half of the 40 val images (20 each, none padded); the sums are the
    // single-process evaluation of the same checkpoint.
    let json = tmp.path().join("eval.json");
    let ev = Command::new(common::bin())
        .args(["eval", "--checkpoint"])
        .arg(run.join("last.safetensors"))
        .arg("--data")
        .arg(tmp.path().join("data"))
        .args(["--size", "32", "--device", "cpu", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(ev.status.success(), "{}", text(&ev));
    let single: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let last: Vec<&str> = summary[2].split(',').collect();
    let (loss, top1, top5): (f64, f64, f64) =
        (last[2].parse().unwrap(), last[3].parse().unwrap(), last[4].parse().unwrap());
    assert_eq!(single["images"], 40);
    assert_eq!(top1, single["top1"].as_f64().unwrap(), "{summary:?} vs {single}");
    assert_eq!(top5, single["top5"].as_f64().unwrap(), "{summary:?} vs {single}");
    assert!((loss - single["loss"].as_f64().unwrap()).abs() < 1e-5, "{summary:?} vs {single}");
}

/// SIGUSR1 to `launch` reaches every rank: they save `last` at the same step boundary, mid-epoch,
/// and the job goes on to its end (with timm's `--dist-bn reduce` at each save and evaluation).
#[test]
fn save_now_through_launch_saves_mid_epoch_and_the_job_goes_on() {
    let tmp = common::tmpdir();
    let config = ddp_setup(tmp.path());
    let port = free_port().to_string();
    let child = Command::new(common::bin())
        .args(["launch", "--nproc-per-node", "2", "--grace", "5", "--master-port", &port, "--", "train"])
        .arg("--config")
        .arg(&config)
        .args(["--name", "usr1", "--checkpoint-every", "0", "--dist-bn", "reduce"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = tmp.path().join("runs/usr1");
    common::wait_until(180, "the job did not start", || common::logged_steps(&run) >= 3);
    assert!(Command::new("kill").args(["-USR1", &child.id().to_string()]).status().unwrap().success());
    let last = run.join("last.safetensors");
    common::wait_until(180, "SIGUSR1 saved nothing", || last.exists());
    let (_, saved) = resnet_train::train::run::checkpoint::load_last(&last).unwrap();
    assert!((3..10).contains(&saved.step) && saved.epoch == 0, "saved at step {}", saved.step);
    let out = child.wait_with_output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches(&format!("SIGUSR1: saved the run at step {}", saved.step)).count(), 1, "{log}");
    assert_eq!(history(&run).0.len(), 20, "the job trained to its end");
}

/// A world of one (`launch --nproc-per-node 1`, as `torchrun --nproc-per-node 1`) runs as a plain
/// process, unless `--dist-backend` names a backend: then it takes the whole data-parallel path
/// (rendezvous, broadcast, bucketed all-reduce with DDP's overlap, sharded eval) on one rank -
/// how that path's overhead is measured on one GPU - and trains exactly as the plain process
/// does: an all-reduce over one rank and an average over one change no bit.
#[test]
fn one_rank_through_the_process_group_trains_exactly_as_one_process() {
    let tmp = common::tmpdir();
    let config = ddp_setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let plain = Command::new(common::bin())
        .args(["train", "--config", cfg, "--name", "plain", "--epochs", "1"])
        .output()
        .unwrap();
    assert!(plain.status.success(), "{}", text(&plain));
    let auto = launch_n(1, free_port(), &["train", "--config", cfg, "--name", "auto", "--epochs", "1"], None);
    let log = text(&auto);
    assert!(auto.status.success(), "{log}");
    assert!(!log.contains("ranks "), "a world of one with the auto backend joins no group:\n{log}");
    let args = ["train", "--config", cfg, "--name", "gloo", "--epochs", "1", "--dist-backend", "gloo"];
    let gloo = launch_n(1, free_port(), &args, None);
    let log = text(&gloo);
    assert!(gloo.status.success(), "{log}");
    assert!(log.contains("ranks      1 processes (1 per node, torchrun)"), "{log}");
    let want = history(&tmp.path().join("runs/plain"));
    assert_eq!(want.0.len(), 20, "1 epoch x 80 images / 4");
    assert_eq!(history(&tmp.path().join("runs/auto")), want);
    assert_eq!(history(&tmp.path().join("runs/gloo")), want);
}

#[test]
fn a_rank_killed_mid_run_stops_the_job_and_the_resumed_job_matches_the_uninterrupted_one() {
    let tmp = common::tmpdir();
    let config = ddp_setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let whole = launch(free_port(), &["train", "--config", cfg, "--name", "whole"], None);
    assert!(whole.status.success(), "{}", text(&whole));

    // Rank 1 is SIGKILLed after its 5th step (last checkpoint: step 3): the launcher names it,
    // stops rank 0 (blocked in the next all-reduce) and exits non-zero, without hanging.
    let start = std::time::Instant::now();
    let killed = launch(free_port(), &["train", "--config", cfg, "--name", "cut"], Some(("step@5", "1")));
    let log = text(&killed);
    assert!(!killed.status.success(), "{log}");
    assert!(log.contains("rank 1 failed (killed by signal 9)"), "{log}");
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());

    let run = tmp.path().join("runs/cut");
    let mid = tmp.path().join("runs/cut-alone");
    let copied = Command::new("cp").arg("-a").arg(&run).arg(&mid).status().unwrap();
    assert!(copied.success());

    // One process continues the killed run from its mid-epoch checkpoint (step s of epoch 0, 2 x 4
    // images a step): it has seen 2s of its 20 batches of 4, takes the other 20 - 2s, `step`
    // counts on from s, and its schedule's clock stands at step 2s of the 1-process schedule.
    let alone =
        Command::new(common::bin()).arg("--resume").arg(&mid).arg("--epochs").arg("1").output().unwrap();
    let msg = text(&alone);
    assert!(alone.status.success(), "{msg}");
    assert!(msg.contains("this job has 1"), "{msg}");
    let records = common::step_records(&mid);
    let steps: Vec<usize> = records.iter().map(|r| r.step).collect();
    let s = 20 - records.len();
    assert!((1..10).contains(&s), "{steps:?}");
    assert_eq!(steps, (0..records.len()).collect::<Vec<_>>(), "steps count on");
    assert!(records.iter().all(|r| r.epoch == 0), "{records:?}");
    // Linear warmup over 0.5 epoch (10 steps), peak 0.2 x 4 / 256: (2s + 1) / 10 of it.
    let want = 0.2 * 4.0 / 256.0 * (2 * s + 1) as f64 / 10.0;
    assert!((records[s].lr - want).abs() < 1e-12, "lr {} vs {want} at step {s}", records[s].lr);
    assert_eq!(common::summary_without_time(&mid).len(), 2, "header + 1 epoch");

    let resumed = launch(free_port(), &["train", "--resume", run.to_str().unwrap()], None);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(history(&run), history(&tmp.path().join("runs/whole")));

    // One process may continue the 2-process run, with a warning: the third epoch then takes 20
    // steps of 4 images (10 of 2 x 4 before), `step` keeps counting, and the schedule's clock
    // moves to the same point of training (epoch 2 of the 1-process schedule).
    let alone =
        Command::new(common::bin()).arg("--resume").arg(&run).arg("--epochs").arg("3").output().unwrap();
    let msg = text(&alone);
    assert!(alone.status.success(), "{msg}");
    assert!(
        msg.contains("warning: the run trained with 2 data-parallel process(es), this job has 1"),
        "{msg}"
    );
    let steps = common::step_records(&run);
    let third: Vec<_> = steps.iter().filter(|r| r.epoch == 2).collect();
    assert_eq!(third.len(), 20, "{third:?}");
    assert_eq!(third[0].step, 20);
    // The 1-process schedule at its step 40 of 60 (cosine, 0.5-epoch warmup), peak 0.2 x 4 / 256.
    let (peak, warm, total) = (0.2 * 4.0 / 256.0, 10.0, 60.0);
    let t: f64 = (40.0 - warm) / (total - warm);
    let want = 0.5 * peak * (1.0 + (std::f64::consts::PI * t).cos());
    assert!((third[0].lr - want).abs() < 1e-9, "lr {} vs {want}", third[0].lr);
    assert_eq!(common::summary_without_time(&run).len(), 4, "header + 3 epochs");
}

/// The NCCL backend object resolves c10d's NCCL process group from libtorch_cuda.so when a GPU
/// machine loads it (it has no NEEDED entries of its own: the binary loads libtorch_cuda.so with
/// RTLD_GLOBAL first). No GPU here, so this checks the link instead: every c10/torch symbol the
/// object needs is one that this libtorch's libraries define (a constructor whose signature
/// changed between the headers and the libraries would fail only on the GPU, at dlopen).
#[test]
fn the_nccl_backend_needs_only_symbols_that_libtorch_defines() {
    if !resnet_train::ffi::dist::nccl_built() {
        eprintln!("SKIP the_nccl_backend_needs_only_symbols_that_libtorch_defines: no NCCL backend built");
        return;
    }
    let nm = |args: &[&str], file: &Path| -> Option<Vec<String>> {
        let o = std::process::Command::new("nm").args(args).arg(file).output().ok()?;
        assert!(o.status.success(), "nm {args:?} {}: {}", file.display(), common::output_text(&o));
        Some(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().last())
                .map(|s| s.split('@').next().unwrap_or(s).to_string())
                .collect(),
        )
    };
    let dir = common::tmpdir();
    let object = dir.path().join("libresnet_train_nccl.so");
    std::fs::write(&object, resnet_train::ffi::dist::nccl_object()).unwrap();
    let Some(needed) = nm(&["-D", "--undefined-only"], &object) else {
        eprintln!("SKIP the_nccl_backend_needs_only_symbols_that_libtorch_defines: no nm (binutils)");
        return;
    };
    let lib = Path::new(env!("RESNET_TRAIN_LIBTORCH_LIB"));
    let mut defined = std::collections::HashSet::new();
    for name in ["libtorch_cuda.so", "libc10_cuda.so", "libtorch_cpu.so", "libc10.so"] {
        defined.extend(nm(&["-D", "--defined-only"], &lib.join(name)).expect("nm ran above"));
    }
    let ours: Vec<&String> = needed.iter().filter(|s| s.contains("c10") || s.contains("torch")).collect();
    assert!(ours.iter().any(|s| s.contains("ProcessGroupNCCL")), "{needed:?}");
    let missing: Vec<&&String> = ours.iter().filter(|s| !defined.contains(s.as_str())).collect();
    assert!(missing.is_empty(), "undefined in libtorch's libraries: {missing:?}");
}

#[test]
fn the_nccl_backend_is_compiled_when_its_headers_are_there_and_refused_without_cuda() {
    // CI compiles c10d's NCCL backend (src/ffi/dist_nccl.cpp) whenever bootstrap installed the
    // headers, so it cannot rot on CPU-only machines; only a GPU can run it.
    let site = Path::new(env!("RESNET_TRAIN_LIBTORCH_LIB")).join("../..");
    if site.join("nvidia/nccl/include/nccl.h").exists() {
        assert!(resnet_train::ffi::dist::nccl_built(), "NCCL headers present but the backend was not built");
    } else {
        eprintln!(
            "SKIP: no NCCL headers beside libtorch ({}): the NCCL backend is not built",
            site.display()
        );
    }
    let msg = Dist::init(env(0, 1, free_port()), DistBackend::Nccl, tch::Device::Cpu, Duration::from_secs(5))
        .err()
        .expect("NCCL on CPU")
        .to_string();
    assert!(msg.contains("--dist-backend nccl needs --device cuda"), "{msg}");
    if tch::Cuda::device_count() == 0 {
        // No GPU: the NCCL object cannot load (libtorch_cuda is not usable), with a clear error.
        let store = resnet_train::ffi::dist::Store::connect("127.0.0.1", free_port(), 0, 1, 5000).unwrap();
        let msg = resnet_train::ffi::dist::ProcessGroup::nccl(&store, "t/", 0, 1, 5000)
            .err()
            .expect("no CUDA")
            .to_string();
        assert!(msg.contains("NCCL:"), "{msg}");
    }
}

/// `global_batch`: the same experiment on one process and on two (SyncBN: BatchNorm sees the same
/// 8 images): each rank's batch is half, the steps and learning rates are the same and the losses
/// agree to fp32 re-association. A process count that does not divide it is refused, naming those
/// that do.
#[test]
fn a_global_batch_trains_the_same_experiment_on_one_or_two_processes() {
    let tmp = common::tmpdir();
    let config = ddp_setup(tmp.path());
    let cfg = config.to_str().unwrap();
    let args =
        ["train", "--config", cfg, "--global-batch", "8", "--sync-bn", "--max-steps", "3", "--epochs", "1"];
    let one = Command::new(common::bin()).args(args).args(["--name", "one"]).output().unwrap();
    assert!(one.status.success(), "{}", text(&one));
    let two = launch(free_port(), &[&args[..], &["--name", "two"]].concat(), None);
    assert!(two.status.success(), "{}", text(&two));
    for out in [&one, &two] {
        assert!(text(out).contains("x 10 steps, global batch 8"), "{}", text(out));
    }
    // The resolved experiment is said at start, heads config.toml and is in sessions.jsonl.
    for (name, out, line) in [
        ("one", &one, "1 process x batch 8 x accumulation 1 = global batch 8"),
        ("two", &two, "2 processes x batch 4 x accumulation 1 = global batch 8"),
    ] {
        assert!(text(out).contains(&format!("experiment {line}")), "{}", text(out));
        let run = tmp.path().join("runs").join(name);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.starts_with("# The run's settings as given") && config.contains(line), "{config}");
        let sessions = std::fs::read_to_string(run.join("sessions.jsonl")).unwrap();
        let session: serde_json::Value = serde_json::from_str(sessions.lines().next().unwrap()).unwrap();
        assert_eq!(session["experiment"]["global_batch"], 8, "{session}");
        assert_eq!(session["experiment"]["steps_per_epoch"], 10, "{session}");
        // And TensorBoard's HParams: the config as given and what it resolved to.
        use resnet_train::train::run::tensorboard::{read_hparams, HParam};
        let events: Vec<_> = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
        let h = read_hparams(&events[0]).unwrap();
        assert_eq!(h.get("resolved/global_batch"), Some(&HParam::Number(8.0)), "{h:?}");
        assert_eq!(h.get("act"), Some(&HParam::Text("polynorm".into())), "{h:?}");
        assert_eq!(h.get("sync_bn"), Some(&HParam::Bool(true)), "{h:?}");
    }
    let records = |name: &str| common::step_records(&tmp.path().join("runs").join(name));
    let (a, b) = (records("one"), records("two"));
    assert_eq!((a.len(), b.len()), (3, 3));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.lr), (y.step, y.lr));
        assert!((x.loss - y.loss).abs() <= 1e-4 * x.loss.abs(), "step {}: {} vs {}", x.step, x.loss, y.loss);
    }
    // A per-rank batch larger than each rank's share of the data: every rank refuses at start.
    let big = launch(free_port(), &["train", "--config", cfg, "--batch-size", "50", "--name", "big"], None);
    assert!(!big.status.success());
    assert!(
        text(&big).contains("80 training images give each of the 2 process(es) 40 per epoch"),
        "{}",
        text(&big)
    );
    assert!(!tmp.path().join("runs/big").exists());
    // A resume under another process count keeps the global batch, and so the experiment: the
    // one-process run continues on two, with no warning.
    let one_dir = tmp.path().join("runs/one");
    let more =
        launch(free_port(), &["train", "--resume", one_dir.to_str().unwrap(), "--max-steps", "5"], None);
    assert!(more.status.success(), "{}", text(&more));
    assert!(text(&more).contains("experiment 2 processes x batch 4 x accumulation 1 = global batch 8"));
    assert!(!text(&more).contains("warning: the run trained with"), "{}", text(&more));
    let resumed = records("one");
    assert_eq!(resumed.len(), 5);
    assert!(resumed.windows(2).all(|w| w[1].step == w[0].step + 1));
    // --dry-run under launch: every rank resolves, checks and times; nothing is written.
    let dry = launch(
        free_port(),
        &[&args[..], &["--name", "dry", "--dry-run", "--dry-run-steps", "1"]].concat(),
        None,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("dry run ") && text(&dry).contains("global batch 8"), "{}", text(&dry));
    assert!(!tmp.path().join("runs/dry").exists());
    let three = launch_n(3, free_port(), &[&args[..], &["--name", "three"]].concat(), None);
    assert!(!three.status.success());
    assert!(
        text(&three).contains("use 1, 2, 4, 8 process(es), or --global-batch 6 or 9"),
        "{}",
        text(&three)
    );
}
