//! The user commands `init` and `predict`, run as a user runs them.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::bin()).args(args).output().expect("binary runs");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr))
}

#[test]
fn init_then_predict_json_on_real_images() {
    let Some(shared) = common::shared("init_then_predict_json_on_real_images") else { return };
    let dir = common::tmpdir();
    let w = dir.path().join("r18.safetensors");
    let w = w.to_str().unwrap();
    let (code, out, err) =
        run(&["init", "--arch", "resnet18", "--act", "polynorm", "--order", "2", "--seed", "3", "--out", w]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("11689512") || out.contains(&format!("{}", 11_689_512 + 17 * 3)), "{out}");

    let imgs = shared.join("data/imagenet-samples");
    let a = imgs.join("n01440764_tench.JPEG");
    let b = imgs.join("n02096051_Airedale.JPEG");
    let classes = shared.join("data/imagenet-meta/LOC_synset_mapping.txt");
    let (code, out, err) = run(&[
        "predict",
        "--checkpoint",
        w,
        "--classes",
        classes.to_str().unwrap(),
        "--topk",
        "3",
        "--json",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (line, img) in lines.iter().zip([&a, &b]) {
        assert_eq!(line["file"], img.to_str().unwrap());
        let idx = line["top_indices"].as_array().unwrap();
        let probs: Vec<f64> =
            line["top_probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
        let logits: Vec<f64> =
            line["logits"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
        assert_eq!((idx.len(), probs.len(), logits.len()), (3, 3, 1000));
        assert!(probs.windows(2).all(|p| p[0] >= p[1]), "sorted");
        // Probabilities are the softmax of the logits.
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        let top = idx[0].as_u64().unwrap() as usize;
        assert!(((logits[top] - max).exp() / z - probs[0]).abs() < 1e-5);
        assert_eq!(line["top_names"].as_array().unwrap().len(), 3);
    }
    // Plain output names the file and classes.
    let (code, out, _) = run(&["predict", "--checkpoint", w, a.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("n01440764_tench.JPEG") && out.contains("p="), "{out}");
}

/// `init --config F` writes the weights a run of F starts with: the engine's model, built from
/// the same config and seed, tensor for tensor.
#[test]
fn init_from_a_config_writes_the_weights_its_run_starts_with() {
    use resnet_train::train::config::{read_file, Overrides};
    let dir = common::tmpdir();
    let w = dir.path().join("m.safetensors");
    let config = common::repo().join("configs/recipes/smoke-cpu.toml");
    let flags = ["--act", "polynorm", "--order", "2", "--seed", "7"];
    let (code, _, err) = run(&[
        &["init", "--config", config.to_str().unwrap(), "--num-classes", "5", "--out", w.to_str().unwrap()],
        &flags[..],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    let cfg = Overrides::parse(&flags).unwrap().apply(&read_file(&config).unwrap()).unwrap();
    let engine = resnet_train::train::step::engine::Engine::new(cfg, tch::Device::Cpu, 5).unwrap();
    let file = resnet_train::model::weights::read(&w).unwrap().tensors;
    let vars = engine.vs.variables();
    assert!(
        !vars.is_empty() && vars.len() <= file.len(),
        "{} variables, {} in the file",
        vars.len(),
        file.len()
    );
    for (name, t) in vars {
        let saved = file.get(&name).unwrap_or_else(|| panic!("{name} is not in the file"));
        assert!(saved.to_kind(tch::Kind::Float).equal(&t.to_kind(tch::Kind::Float)), "{name} differs");
    }
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = common::tmpdir();
    let w = dir.path().join("m.safetensors");
    let w = w.to_str().unwrap();
    for (args, needle) in [
        (vec!["init", "--arch", "resnet51", "--out", w], "resnet51"),
        (vec!["init", "--act", "gelu", "--out", w], "gelu"),
        (vec!["init", "--act", "polynorm", "--order", "0", "--out", w], "1..=8"),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
    let (code, _, err) = run(&["init", "--arch", "resnet18", "--num-classes", "4", "--out", w]);
    assert_eq!(code, 0, "{err}");
    let junk = dir.path().join("junk.JPEG");
    std::fs::write(&junk, b"\xff\xd8\xff not really a jpeg").unwrap();
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    for img in [&junk, &empty, &dir.path().join("absent.png")] {
        let (code, _, err) = run(&["predict", "--checkpoint", w, img.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(
            err.contains(img.file_name().unwrap().to_str().unwrap()) && !err.contains("panicked"),
            "{err}"
        );
    }
    let (code, _, err) = run(&["predict", "--checkpoint", junk.to_str().unwrap(), empty.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("junk.JPEG") && err.contains("safetensors") && !err.contains("panicked"), "{err}");
    let (code, _, err) = run(&["predict", "--checkpoint", w, "--device", "cuda:7", empty.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("--device") && !err.contains("panicked"), "{err}");
}

#[test]
fn bench_data_scan_only_reports_the_index() {
    let dir = common::tmpdir();
    resnet_train::data::synthetic::write_dataset(dir.path(), 3, 0, 16, 0).unwrap();
    let train = dir.path().join("train");
    let (code, out, err) = run(&["bench-data", "--data", train.to_str().unwrap(), "--scan-only"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["files"].as_u64(), v["classes"].as_u64(), v["same_index"].as_bool()),
        (Some(30), Some(10), Some(true))
    );
}

#[test]
fn ablate_from_the_shipped_config_with_flags_and_its_errors() {
    let dir = common::tmpdir();
    let data = dir.path().join("data");
    resnet_train::data::synthetic::write_dataset(&data, 3, 1, 16, 4).unwrap();
    let config = common::repo().join("configs/ablations/cpu.toml");
    let (config, data, out) =
        (config.to_str().unwrap(), data.to_str().unwrap(), dir.path().to_str().unwrap());
    let args = [
        "ablate",
        "--config",
        config,
        "--acts",
        "relu,polynorm",
        "--orders",
        "2",
        "--precisions",
        "bf16",
        "--steps",
        "2",
        "--data",
        data,
        "--train-size",
        "16",
        "--batch-size",
        "4",
        "--output",
        out,
        "--name",
        "a",
    ];
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("2 cells") && stdout.contains("ablation.csv"), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("a/ablation.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].starts_with("relu,-,bf16,-,none,2,2,")
            && rows[1].starts_with("polynorm,2,bf16,paper,none,2,2,")
    );
    // Run again: nothing to do. A different grid under the same name: refused, naming the file.
    let (code, stdout, _) = run(&args);
    assert!(code == 0 && stdout.contains("(0 run now)"), "{stdout}");
    let mut other = args.to_vec();
    other[8] = "fp16";
    let (code, _, err) = run(&other);
    assert!(code != 0 && err.contains("ablation.toml") && !err.contains("panicked"), "{err}");
    // Bad values name the flag or the file.
    let (code, _, err) = run(&["ablate", "--config", config, "--remedies", "clamp:-1"]);
    assert!(code == 2 && err.contains("clamp:-1"), "{err}");
    let train_config = common::repo().join("configs/recipes/demo.toml");
    let (code, _, err) = run(&["ablate", "--config", train_config.to_str().unwrap()]);
    assert!(code != 0 && err.contains("demo.toml") && err.contains("unknown field"), "{err}");
}

/// Runs `check-act` with `args` (and environment `env`) and asserts that every case passed: 768
/// fused-vs-eager cases (512, and 256 with act_out_lowp for bf16/fp16 inputs) and 384
/// folded-BatchNorm cases (2 ops x 2 layouts x 2 modes x 3 channel counts x the type settings and
/// residuals: fp32 and fp64 with none or one of z's type; bf16 and fp16, with and without
/// act_out_lowp, with none, one of z's type or an fp32 one), and a float64 PolyNorm ResNet-50's
/// gradients, fused against eager, within 1e-9; each summary naming `device`, and batch norm's
/// backward folded into the CUDA kernels in `cuda_bn_folds` (.0 of the BatchNorm cases, .1 of
/// ResNet-50's sites).
fn assert_check_act_passes(args: &[&str], env: &[(&str, &str)], device: &str, cuda_bn_folds: (i64, i64)) {
    let out = Command::new(common::bin()).args(args).envs(env.iter().copied()).output().expect("binary runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (code, out, err) = (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr));
    assert_eq!(code, 0, "{out}\n{err}");
    let summaries: Vec<serde_json::Value> =
        out.lines().rev().take(4).map(|l| serde_json::from_str(l).expect("a JSON summary")).collect();
    let (fused, folded, model, inner) = (&summaries[3], &summaries[2], &summaries[1], &summaries[0]);
    assert_eq!((&fused["check"], &fused["failures"]), (&"fused-vs-eager".into(), &0.into()), "{out}");
    assert_eq!(fused["cases"], 768, "{out}");
    assert_eq!((&folded["check"], &folded["failures"]), (&"bn-fold".into(), &0.into()), "{out}");
    assert_eq!(folded["cases"], 384, "{out}");
    assert_eq!(folded["cuda_bn_folds"], cuda_bn_folds.0, "{out}");
    assert_eq!((&model["check"], &model["ok"]), (&"resnet50-grads".into(), &true.into()), "{out}");
    assert!(model["worst_rel_err"].as_f64().is_some_and(|e| e < 1e-9), "{out}");
    assert_eq!(model["cuda_bn_folds"], cuda_bn_folds.1, "{out}");
    // The training forward's inner sites in the autocast type: bit for bit on the CPU (simulated
    // CUDA kernels included).
    assert_eq!((&inner["check"], &inner["ok"]), (&"inner-sites".into(), &true.into()), "{out}");
    assert_eq!((&inner["bitwise"], &inner["worst_rel_diff"]), (&true.into(), &0.0.into()), "{out}");
    for summary in [fused, folded, model, inner] {
        assert!(summary["device"].as_str().is_some_and(|d| d.starts_with(device)), "{out}");
    }
}

/// `check-act` (the first command to run on a GPU) on the CPU: every case agrees with the eager
/// path, and BatchNorm folded into the operator with the separate operators; a device without
/// the fused kernels is a clear error.
#[test]
fn check_act_on_cpu_passes_every_case() {
    assert_check_act_passes(&["check-act", "--device", "cpu"], &[], "Cpu", (0, 0));
    let (code, _, err) = run(&["check-act", "--device", "cuda:7"]);
    assert_ne!(code, 0);
    assert!(err.contains("--device cuda:7"), "{err}");
}

/// The CUDA kernels' own source (src/ffi/polycom.cu), compiled for the host and run under the
/// SIMT emulator, passes the same cases as on a GPU: their indexing, reductions, shuffles and
/// bf16/fp16 rounding are checked on every machine, not only when a GPU is lent. (The emulator
/// itself: tests/fused_activation.rs `simt_emulator_reports_misused_shuffles`.) Batch norm's
/// backward runs folded into the channels-last backward kernels in the 64 training cases at 24
/// and 5 channels (whole vectors per lane, and single channels; PolyNorm and PolyReLU; fp32 and
/// fp64: 2 residual settings each; bf16 and fp16: 3, with and without act_out_lowp), not at 768
/// channels (more per lane than those kernels hold), and at the 30 of the float64 ResNet-50's 49
/// sites with 64 to 256 channels; in none with `RESNET_TRAIN_CUDA_TUNING=bn_fold=0`, which a GPU
/// session compares against: same results.
#[test]
fn check_act_simulating_the_cuda_kernels_passes_every_case() {
    let args = ["check-act", "--device", "cpu", "--simulate-cuda"];
    let device = "Cpu (CUDA kernels, simulated)";
    assert_check_act_passes(&args, &[], device, (64, 30));
    assert_check_act_passes(&args, &[("RESNET_TRAIN_CUDA_TUNING", "bn_fold=0")], device, (0, 0));
    let (code, _, err) = run(&["check-act", "--device", "cuda:0", "--simulate-cuda"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--simulate-cuda") && err.contains("--device cpu"), "{err}");
}

/// `bench` times the step a training config describes: every key that changes the step, from
/// `--config` or as a flag, reaches the engine it times (the JSON echoes the config it ran), and
/// a study's `bench_steps` goes through the same file.
#[test]
fn bench_takes_every_training_key_that_changes_the_step() {
    let dir = common::tmpdir();
    let file = dir.path().join("step.toml");
    std::fs::write(
        &file,
        "arch = \"resnet18\"\nact = \"polynorm\"\norder = 2\nblurpool = true\nclip_grad = 1.0\n\
         clip_mode = \"agc\"\nmodel_ema = true\nsync_bn = true\nsmoothing = 0.1\nmixup = 0.2\n\
         drop_path = 0.05\nopt = \"lamb\"\nact_clamp = 3.0\nzero_init_residual = true\ntrain_size = 32\n\
         global_batch = 4\nmax_device_batch = 2\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["bench", "--config", file.to_str().unwrap(), "--act-impl", "eager", "--bce-loss"])
        .args(["--steps", "1", "--warmup", "0", "--classes", "10", "--json"])
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    let row: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).expect("one JSON line");
    let c = &row["config"];
    for (key, want) in [
        ("act", "\"polynorm\""),
        ("order", "2"),
        ("blurpool", "true"),
        ("clip_grad", "1.0"),
        ("clip_mode", "\"agc\""),
        ("model_ema", "true"),
        ("sync_bn", "true"),
        ("smoothing", "0.1"),
        ("mixup", "0.2"),
        ("drop_path", "0.05"),
        ("opt", "\"lamb\""),
        ("act_clamp", "3.0"),
        ("zero_init_residual", "true"),
        ("act_impl", "\"eager\""),
        ("bce_loss", "true"),
        // The global batch of 4 at most 2 per device: 2 images x 2 accumulated micro-batches.
        ("batch_size", "2"),
        ("accum_steps", "2"),
    ] {
        assert_eq!(c[key].to_string(), want, "{key}: {row}");
    }
    assert_eq!(
        (row["batch"].as_i64(), row["res"].as_i64(), row["accum_steps"].as_i64()),
        (Some(2), Some(32), Some(2))
    );
    // The old spellings --batch and --res stay, as --batch-size and --train-size.
    let out = Command::new(common::bin())
        .args(["bench", "--arch", "resnet18", "--batch", "3", "--res", "32", "--device", "cpu"])
        .args(["--steps", "1", "--warmup", "0", "--classes", "10", "--json"])
        .output()
        .unwrap();
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!((row["batch"].as_i64(), row["res"].as_i64()), (Some(3), Some(32)), "{row}");
}

/// `scripts/profile/onednn_split.py` (BENCHMARKS.md) splits a `bench` step into the oneDNN primitives'
/// time, which `ONEDNN_VERBOSE` reports, and the rest: the same primitives every step, and the
/// two parts add up to the step.
#[test]
fn onednn_split_divides_a_step_into_onednn_and_the_rest() {
    let bin = common::bin();
    let args = ["bench", "--json", "--arch", "resnet18", "--batch", "2", "--res", "32", "--device", "cpu"];
    let steps = ["--steps", "2", "--warmup", "1", "--threads", "1", "--precision", "bf16"];
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/profile/onednn_split.py"))
        .arg("--")
        .arg(bin)
        .args(args)
        .args(steps)
        .output()
        .expect("python3 runs");
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k}: {row}"));
    // ResNet-18: 20 convolutions forward, 19 backward-data (not the stem's input), 20
    // backward-weights, and the classifier's matmul; plus the weight reorders.
    assert!(f("onednn_execs_per_step") >= 60.0, "{row}");
    assert!(row["by_kind_ms"]["convolution backward_weights"].as_f64().is_some(), "{row}");
    assert!(f("onednn_ms") > 0.0 && f("rest_ms") > 0.0, "{row}");
    assert!((f("onednn_ms") + f("rest_ms") - f("ms_per_step")).abs() < 0.2, "{row}");
}

/// `bench-act` times one BatchNorm + activation site at each of ResNet-50's 49 site shapes for
/// ReLU and the fused operators (BatchNorm folded in, and the activation alone): a row per
/// (operator, shape) whose site counts add up to ResNet-50's 49, and a total per operator
/// against ReLU's.
#[test]
fn bench_act_times_every_resnet50_site_shape() {
    let args =
        ["bench-act", "--device", "cpu", "--batch", "2", "--res", "32", "--iters", "1", "--warmup", "0"];
    let (code, out, err) = run(&[&args[..], &["--json", "--channels-last"]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    let (totals, rows): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.get("total").is_some());
    let names: Vec<&str> = totals.iter().map(|t| t["total"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["relu", "polynorm fused", "polynorm fused-act", "polyrelu fused", "polyrelu fused-act"]
    );
    assert_eq!(totals[0]["vs_relu"], 1.0);
    assert!(totals.iter().all(|t| t["ms_all_49_sites"].as_f64().unwrap() > 0.0), "{out}");
    assert_eq!(rows.len(), 12 * 5, "{out}");
    let sites: u64 = rows.iter().filter(|r| r["op"] == "relu").map(|r| r["sites"].as_u64().unwrap()).sum();
    assert_eq!(sites, 49);
    let (code, _, err) = run(&[&args[..], &["--order", "9"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'9' for '--order") && err.contains("1..=8"), "{err}");
}

/// `check-act --compile-for ARCH` fills the kernel cache without a GPU (what a GPU session carries
/// so that its processes skip the compile): once compiled, then found; per tuning its own image; a
/// wrong architecture is a clear error naming the flag.
#[test]
fn check_act_compile_for_fills_the_kernel_cache() {
    let Some(nvrtc) = common::nvrtc_or_skip("check_act_compile_for_fills_the_kernel_cache") else { return };
    let cache = common::tmpdir();
    let compile = |arch: &str| {
        let o = Command::new(common::bin())
            .args(["check-act", "--compile-for", arch])
            .env("RESNET_TRAIN_CACHE", cache.path())
            .env("RESNET_TRAIN_NVRTC", &nvrtc)
            .env("RESNET_TRAIN_CUDA_TUNING", "min_blocks=2")
            .output()
            .expect("binary runs");
        (o.status.code(), common::output_text(&o))
    };
    let (code, log) = compile("compute_90");
    assert!(
        code == Some(0) && log.contains("(tuning: min_blocks=2)") && log.contains("compiled into"),
        "{log}"
    );
    let (code, log) = compile("compute_90");
    assert!(code == Some(0) && log.contains("already in"), "{log}");
    let images: Vec<_> = std::fs::read_dir(cache.path().join("kernels")).unwrap().collect();
    assert_eq!(images.len(), 1);
    let (code, log) = compile("sm_1");
    assert!(
        code == Some(2) && log.contains("--compile-for sm_1") && log.contains("gpu-architecture"),
        "{log}"
    );
}

/// `scripts/prepare-device.sh` puts what a GPU session carries into one folder (here without the
/// kernel compiles, `TUNINGS=""`; `check_act_compile_for_fills_the_kernel_cache` covers those).
#[test]
fn prepare_device_script_fills_the_carry_folder() {
    if common::shared("prepare_device_script_fills_the_carry_folder").is_none() {
        return;
    }
    let dest = common::tmpdir();
    let o = Command::new("bash")
        .arg("scripts/prepare-device.sh")
        .current_dir(common::repo())
        .env("DEST", dest.path())
        .env("BIN", common::bin())
        .env("TUNINGS", "")
        .output()
        .expect("bash runs");
    assert!(o.status.success(), "{}", common::output_text(&o));
    for f in [
        "resnet-train",
        "gpu-check.sh",
        "gpu-session.sh",
        "bench/torch_train_bench.py",
        "reference/polycom.py",
    ] {
        assert!(dest.path().join(f).exists(), "{f} missing: {}", common::output_text(&o));
    }
}

/// `scripts/reliability/kill-resume-random.sh` (docs/reliability.md: SIGKILL at random instants, resume,
/// compare with the uninterrupted run) runs one short trial, so that its comparison keeps up with
/// what the records hold (a wall-clock field it did not know made every trial "DIFFERENT").
#[test]
fn kill_resume_random_script_finds_the_resumed_run_identical() {
    let o = Command::new("bash")
        .arg("scripts/reliability/kill-resume-random.sh")
        .current_dir(common::repo())
        .env("BIN", common::bin())
        .env("N", "1")
        .env("EPOCHS", "1")
        .output()
        .expect("bash runs");
    let log = common::output_text(&o);
    assert!(o.status.success() && log.contains("identical: 1 of 1"), "{log}");
}

/// `scripts/gpu-session.sh`, the one script a lent GPU runs (rarely: a few minutes, a few times a
/// month), runs every section on the CPU with small sizes and no PyTorch, so that none of its
/// commands or flags can rot unseen between GPU sessions: every command exits 0, each section
/// leaves its rows and logs, one rank through the process group trains (`dist`), and no more
/// files come back than the device tool returns (8).
#[test]
fn gpu_session_script_runs_every_section_on_the_cpu() {
    let tmp = common::tmpdir();
    let (out, data) = (tmp.path().join("out"), tmp.path().join("data"));
    resnet_train::data::synthetic::write_dataset(&data, 4, 2, 32, 5).unwrap();
    let train_flags = format!("--data {} --batch-size 8 --train-size 32 --eval-size 32", data.display());
    let o = Command::new("bash")
        .arg("scripts/gpu-session.sh")
        .current_dir(common::repo())
        .env("OUT", &out)
        .env("WORK", tmp.path().join("work"))
        .env("BUDGET", "100000")
        .env("BIN", common::bin())
        .env("DEVICE", "cpu")
        .env("PYTORCH", "0")
        .env("DIST_BACKEND", "gloo")
        .env("MODEL", "--arch resnet18 --batch 2 --res 32")
        .env("STEPS", "--steps 1 --warmup 0")
        .env("SITE_SHAPE", "--batch 2 --res 32 --iters 1 --warmup 0")
        .env("TRAIN_EPOCHS", "1")
        .env("TRAIN_FLAGS", &train_flags)
        .env("ABLATE_STEPS", "2")
        .env(
            "ABLATE_FLAGS",
            format!("--arch resnet18 --train-size 32 --batch-size 4 --device cpu --data {}", data.display()),
        )
        .output()
        .expect("bash runs");
    let log = common::output_text(&o);
    assert!(o.status.success() && log.contains("failures: 0"), "{log}");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{log}"));
    let rows: Vec<serde_json::Value> =
        read("bench.jsonl").lines().map(|l| serde_json::from_str(l).expect("JSON rows")).collect();
    // lowp 2 x 5, dist 2 x 2, bench 5 (PyTorch's rows skipped), fp16 3.
    assert_eq!(rows.len(), 22, "{log}");
    let one_rank: Vec<_> = rows.iter().filter(|r| r.get("dist_backend").is_some()).collect();
    assert_eq!(one_rank.len(), 2, "{log}");
    assert!(one_rank.iter().all(|r| r["dist_backend"] == "Gloo" && r["world"] == 1), "{one_rank:?}");
    let checks = read("act-check.jsonl");
    let last_two: Vec<&str> = checks.lines().rev().take(2).collect();
    assert!(
        last_two[1].contains("\"resnet50-grads\"") && last_two[1].contains("\"ok\":true"),
        "{last_two:?}"
    );
    assert!(last_two[0].contains("\"inner-sites\"") && last_two[0].contains("\"ok\":true"), "{last_two:?}");
    // The two summaries (fused-vs-eager, bn-fold) among the cases' rows.
    let summaries: Vec<&str> = checks.lines().filter(|l| l.contains("\"cases\"")).collect();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    assert!(summaries.iter().all(|l| l.contains("\"failures\":0")), "{summaries:?}");
    // 5 bf16 tunings (bn_fold=0 among them), fp16, and bf16 with fp32 output, 5 totals each; the
    // fastest folded bf16 PolyNorm's tuning (of the bf16-output runs) is kept.
    assert_eq!(read("sites.jsonl").matches("\"total\"").count(), 35, "{log}");
    assert!(log.contains("tuning from here on: "), "{log}");
    assert!(read("dist.log").contains("ranks      1 processes (1 per node, torchrun)"), "{log}");
    for f in ["dist.log", "train.log"] {
        assert!(read(f).contains("finished:"), "{f}: {}", read(f));
    }
    assert!(read("ablate.log").contains("ablation   done: 5 cells"), "{}", read("ablate.log"));
    let files = std::fs::read_dir(&out).unwrap().count();
    assert!(out.join("results.tar.gz").exists() && files <= 8, "{files} files in {}", out.display());
}

#[test]
fn coefficients_of_init_files_and_of_a_run_equal_what_training_logged() {
    let dir = common::tmpdir();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let json = |out: &str| -> Vec<serde_json::Value> {
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let weights = |v: &serde_json::Value, site: usize| -> Vec<f64> {
        v["sites"][site]["weight"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    // Fresh files hold the paper's init (w_i = 1/k, b = 0) or the relu-like one (w = [1, 0]).
    let (paper, relu_like, relu) =
        (p("paper.safetensors"), p("relu-like.safetensors"), p("relu.safetensors"));
    for (act, order, init, out) in [
        ("polynorm", "3", "paper", &paper),
        ("polyrelu", "2", "relu-like", &relu_like),
        ("relu", "3", "paper", &relu),
    ] {
        let (code, _, err) = run(&[
            "init",
            "--arch",
            "resnet18",
            "--act",
            act,
            "--order",
            order,
            "--act-init",
            init,
            "--out",
            out,
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&["coefficients", "--json", &paper, &relu_like, &relu]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(
        v[0]["sites"].as_array().unwrap().len(),
        17,
        "ResNet-18: the stem and 2 sites in each of 8 blocks"
    );
    assert_eq!(v[0]["sites"][0]["site"], "act1");
    assert_eq!(v[0]["sites"][16]["site"], "layer4.1.act2");
    for site in 0..17 {
        assert_eq!(weights(&v[0], site), vec![(1.0f32 / 3.0) as f64; 3]);
        assert_eq!(v[0]["sites"][site]["bias"], 0.0);
        assert_eq!(weights(&v[1], site), vec![1.0, 0.0]);
    }
    assert!(
        v[2]["sites"].as_array().unwrap().is_empty() && err.contains("a ReLU model: no coefficients"),
        "{err}"
    );
    for file in [&paper, &relu] {
        let (code, _, err) = run(&["coefficients", "--weights", "ema", file]);
        assert!(code != 0 && err.contains("holds no EMA weights") && err.contains(file.as_str()), "{err}");
    }

    // A run logs every site's coefficients on monitored steps (metrics.jsonl and TensorBoard);
    // the last logged step's values are the last checkpoint's.
    let out_dir = p("runs");
    let (code, _, err) = run(&[
        "--config",
        "configs/recipes/smoke-cpu.toml",
        "--act",
        "polyrelu",
        "--order",
        "2",
        "--max-steps",
        "7",
        "--monitor-every",
        "3",
        "--output",
        &out_dir,
        "--name",
        "r",
    ]);
    assert_eq!(code, 0, "{err}");
    let run_dir = dir.path().join("runs/r");
    let records = common::step_records(&run_dir);
    let logged: Vec<_> = records.iter().filter(|r| !r.coefficients.is_empty()).collect();
    assert_eq!(logged.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 3, 6]);
    assert_ne!(logged[0].coefficients, logged[2].coefficients, "training changes the coefficients");
    let last = run_dir.join("last.safetensors");
    let (code, out, err) = run(&["coefficients", "--json", last.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let saved: Vec<resnet_train::model::SiteCoefficients> =
        serde_json::from_value(json(&out)[0]["sites"].clone()).unwrap();
    assert_eq!(saved, logged[2].coefficients);
    let tb: Vec<(String, i64, f32)> = std::fs::read_dir(run_dir.join("tb"))
        .unwrap()
        .flat_map(|e| resnet_train::train::run::tensorboard::read_scalars(&e.unwrap().path()).unwrap())
        .collect();
    for c in &saved {
        for (tag, want) in
            [(format!("act_coef/{}/w2", c.site), c.weight[1]), (format!("act_coef/{}/b", c.site), c.bias)]
        {
            let got = tb.iter().find(|(t, s, _)| *t == tag && *s == 6).map(|x| x.2);
            assert_eq!(got, Some(want as f32), "{tag}");
        }
    }
    // The run folder: the coefficients over training, as logged.
    let (code, out, err) = run(&["coefficients", "--json", run_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["steps"].as_array().unwrap().iter().map(|s| s["step"].as_u64().unwrap()).collect::<Vec<_>>(),
        [0, 3, 6]
    );
    let at6: Vec<resnet_train::model::SiteCoefficients> =
        serde_json::from_value(v["steps"][2]["sites"].clone()).unwrap();
    assert_eq!(at6, saved);
    let (code, _, err) = run(&["coefficients", run_dir.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert!(code == 2 && err.contains("one run folder"), "{err}");
    // The figures: each coefficient across depth, one line per file; over training, a line per site.
    let fig = p("coefficients.svg");
    let (code, _, err) = run(&["coefficients", last.to_str().unwrap(), &relu_like, "--out", &fig]);
    if err.contains("DejaVuSans") {
        eprintln!(
            "SKIP coefficients figure: no DejaVuSans.ttf (scripts/bootstrap.sh installs fonts-dejavu-core)"
        );
    } else {
        assert_eq!(code, 0, "{err}");
        let svg = std::fs::read_to_string(&fig).unwrap();
        assert!(
            svg.contains("w2 by site") && svg.contains("r/last.safetensors"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        let (code, _, err) = run(&["coefficients", run_dir.to_str().unwrap(), "--out", &fig]);
        assert_eq!(code, 0, "{err}");
        let svg = std::fs::read_to_string(&fig).unwrap();
        assert!(svg.contains("w1 over training") && svg.contains("layer4.1.act2"));
    }
}

/// timm's checkpoint history and avg_checkpoints: a 4-epoch run with `checkpoint_hist = 2` ranked
/// by eval loss keeps exactly the two best epochs' files (each recording its evaluation, equal to
/// summary.csv's), and `average` writes their mean, which `eval` reads. Mismatched inputs are
/// errors naming the file.
#[test]
fn checkpoint_hist_keeps_the_best_epochs_and_average_writes_their_mean() {
    use resnet_train::train::run::checkpoint::EpochEval;
    let dir = common::tmpdir();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    resnet_train::data::synthetic::write_dataset(&dir.path().join("data"), 6, 3, 40, 5).unwrap();
    let train = |name: &str, extra: &[&str]| {
        let args =
            ["--config", "configs/recipes/smoke-cpu.toml", "--data", &p("data"), "--output", &p("runs")];
        let (code, _, err) =
            run(&[&args[..], &["--name", name, "--batch-size", "4", "--log-every", "100"], extra].concat());
        assert_eq!(code, 0, "{err}");
    };
    train("hist", &["--epochs", "4", "--keep-last", "0", "--checkpoint-hist", "2", "--eval-metric", "loss"]);
    let run_dir = dir.path().join("runs/hist");
    // `schedule` predicts the run's learning rate: every epoch's first and last step.
    let images =
        resnet_train::data::dataset::ImageFolder::open(&dir.path().join("data/train")).unwrap().len();
    let images = images.to_string();
    let mut args =
        vec!["schedule", "--config", "configs/recipes/smoke-cpu.toml", "--batch-size", "4", "--epochs", "4"];
    args.extend(["--images", &images, "--json"]);
    let (figure, font) = (p("lr.svg"), "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    if std::path::Path::new(font).exists() {
        args.extend(["--out", &figure]);
    } else {
        eprintln!("SKIP the schedule figure: no {font} (scripts/bootstrap.sh installs fonts-dejavu-core)");
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!std::path::Path::new(font).exists() || std::fs::metadata(&figure).unwrap().len() > 1000);
    let predicted: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = common::step_records(&run_dir);
    let per_epoch = predicted["steps_per_epoch"].as_u64().unwrap() as usize;
    assert_eq!((predicted["epochs"].as_u64(), steps.len()), (Some(4), 4 * per_epoch));
    for e in 0..4 {
        assert_eq!(predicted["first_lr"][e].as_f64().unwrap(), steps[e * per_epoch].lr, "epoch {e}");
        assert_eq!(predicted["last_lr"][e].as_f64().unwrap(), steps[(e + 1) * per_epoch - 1].lr, "epoch {e}");
    }
    let summary = std::fs::read_to_string(run_dir.join("summary.csv")).unwrap();
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let losses: Vec<f64> = summary
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col("eval_loss")).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 4);
    let mut by_loss: Vec<usize> = (0..4).collect();
    by_loss.sort_by(|&a, &b| losses[a].total_cmp(&losses[b]));
    let mut kept: Vec<usize> = resnet_train::train::run::checkpoint::epoch_files(&run_dir)
        .unwrap()
        .into_iter()
        .map(|(epoch, path)| {
            let meta = resnet_train::model::weights::read_metadata(&path).unwrap();
            let eval = EpochEval::of_file(&meta).expect("the epoch's evaluation is recorded");
            // summary.csv rounds to 6 decimals.
            assert!(
                eval.epoch == epoch && (eval.model.loss - losses[epoch]).abs() < 1e-6,
                "{}",
                path.display()
            );
            epoch
        })
        .collect();
    kept.sort();
    let mut best_two = by_loss[..2].to_vec();
    best_two.sort();
    assert_eq!(kept, best_two, "eval losses {losses:?}");
    // best.safetensors is the lowest-loss epoch's.
    let best_meta = resnet_train::model::weights::read_metadata(&run_dir.join("best.safetensors")).unwrap();
    assert_eq!(EpochEval::of_file(&best_meta).unwrap().epoch, by_loss[0]);

    // The mean of the two kept files, tensor by tensor.
    let (code, out, err) =
        run(&["average", &p("runs/hist"), "--metric", "loss", "--n", "5", "--out", &p("avg.safetensors")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("averaged 2 checkpoints"), "{out}");
    let read = |path: &std::path::Path| resnet_train::model::weights::read(path).unwrap().tensors;
    let avg = read(&dir.path().join("avg.safetensors"));
    let files: Vec<_> =
        best_two.iter().map(|e| read(&run_dir.join(format!("epoch-{e}.safetensors")))).collect();
    assert!(avg.len() > 100 && avg.keys().all(|k| !k.starts_with("train_state")));
    for (name, t) in &avg {
        let want = (&files[0][name] + &files[1][name]) / 2.0;
        assert!(common::rel_err(t, &want) < 1e-6, "{name}");
    }
    let (code, out, err) =
        run(&["eval", "--checkpoint", &p("avg.safetensors"), "--data", &p("data"), "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("top-1"), "{out}");

    // Unranked files need --no-sort; another model is refused, naming the file.
    let (code, _, err) = run(&["average", &p("avg.safetensors"), "--out", &p("x.safetensors")]);
    assert!(code != 0 && err.contains("avg.safetensors") && err.contains("--no-sort"), "{err}");
    let (code, _, err) =
        run(&["init", "--arch", "resnet18", "--num-classes", "6", "--out", &p("relu.safetensors")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&[
        "average",
        "--no-sort",
        &p("avg.safetensors"),
        &p("relu.safetensors"),
        "--out",
        &p("x.safetensors"),
    ]);
    assert!(code != 0 && err.contains("relu.safetensors") && err.contains("another"), "{err}");
    let (code, _, err) = run(&["average", &p("runs/hist"), "--weights", "ema", "--out", &p("x.safetensors")]);
    assert!(code != 0 && err.contains("EMA was not evaluated"), "{err}");
    let (code, _, err) =
        run(&["average", "--no-sort", &p("avg.safetensors"), "--out", &p("avg.safetensors")]);
    assert!(code != 0 && err.contains("is one of the inputs"), "{err}");
    // A diverged checkpoint (NaN weights) is refused by name.
    let mut file = resnet_train::model::weights::read(&dir.path().join("avg.safetensors")).unwrap();
    let _ = file.tensors.get_mut("fc.bias").unwrap().fill_(f64::NAN);
    resnet_train::model::weights::write(&dir.path().join("nan.safetensors"), &file.tensors, file.metadata)
        .unwrap();
    let (code, _, err) = run(&[
        "average",
        "--no-sort",
        &p("avg.safetensors"),
        &p("nan.safetensors"),
        "--out",
        &p("x.safetensors"),
    ]);
    assert!(code != 0 && err.contains("nan.safetensors") && err.contains("fc.bias holds NaN"), "{err}");
    assert!(!dir.path().join("x.safetensors").exists());
}

/// ImageNet-ReaL accuracy (timm's validate.py `--real-labels`): each validation file is found in
/// real.json by its original name; an image is right at k when any of its top k is one of its
/// labels, and images without labels are left out. Checked against `predict`'s top classes for the
/// same files; a file under another name and a label the model lacks are errors naming the file.
#[test]
fn eval_scores_imagenet_real_labels_by_file_name() {
    let dir = common::tmpdir();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    resnet_train::data::synthetic::write_dataset(&dir.path().join("src"), 2, 0, 32, 9).unwrap();
    let sources: Vec<std::path::PathBuf> = walk(&dir.path().join("src/train"));
    let val = dir.path().join("val");
    let mut files = Vec::new();
    for (n, src) in sources.iter().take(6).enumerate() {
        let class = val.join(["a", "b", "c"][n % 3]);
        std::fs::create_dir_all(&class).unwrap();
        let dst = class.join(format!("ILSVRC2012_val_{:08}.JPEG", n + 1));
        std::fs::copy(src, &dst).unwrap();
        files.push(dst);
    }
    let real: Vec<Vec<i64>> = vec![vec![0], vec![1, 2], vec![], vec![2], vec![0, 1, 2], vec![1], vec![0]];
    std::fs::write(dir.path().join("real.json"), serde_json::to_string(&real).unwrap()).unwrap();
    let (code, _, err) = run(&[
        "init",
        "--arch",
        "resnet18",
        "--num-classes",
        "3",
        "--seed",
        "4",
        "--out",
        &p("m.safetensors"),
    ]);
    assert_eq!(code, 0, "{err}");
    let size = ["--size", "32", "--crop-pct", "1.0", "--device", "cpu"];
    let eval = |extra: &[&str]| {
        run(&[&["eval", "--checkpoint", &p("m.safetensors"), "--data", &p("val")], &size[..], extra].concat())
    };
    let (code, _, err) = eval(&["--real-labels", &p("real.json"), "--per-class", "--json", &p("eval.json")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("eval.json")).unwrap()).unwrap();

    // The same files through predict: the top class of each, scored here.
    let model = p("m.safetensors");
    let mut args = vec!["predict", "--checkpoint", &model, "--json", "--resize", "32", "--crop", "32"];
    let names: Vec<String> = files.iter().map(|f| f.to_str().unwrap().to_string()).collect();
    args.extend(names.iter().map(|s| s.as_str()));
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let (mut scored, mut right) = (0, 0);
    let mut class_right = [0usize; 3];
    for line in out.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = line["file"].as_str().unwrap();
        let n: usize = file[file.len() - 13..file.len() - 5].parse().unwrap();
        // Image n sits in class folder (n - 1) % 3 (a, b, c).
        class_right[(n - 1) % 3] +=
            (line["top_indices"][0].as_i64().unwrap() == ((n - 1) % 3) as i64) as usize;
        let labels = &real[n - 1];
        if !labels.is_empty() {
            scored += 1;
            right += labels.contains(&line["top_indices"][0].as_i64().unwrap()) as usize;
        }
    }
    assert_eq!(scored, 5, "image 3 has no ReaL label");
    assert_eq!(v["real"]["images"], 5);
    assert!((v["real"]["top1"].as_f64().unwrap() - 100.0 * right as f64 / 5.0).abs() < 1e-9, "{v}");
    assert_eq!(v["real"]["top5"], 100.0, "3 classes: the top 3 hold every label");
    // Per class (`--per-class`): 2 images each, top-1 as predict's top classes say.
    for (c, right) in class_right.iter().enumerate() {
        let row = &v["per_class"][c];
        assert_eq!(
            (row["name"].as_str(), row["images"].as_u64()),
            (Some(["a", "b", "c"][c]), Some(2)),
            "{v}"
        );
        assert_eq!(row["top1"].as_f64().unwrap(), 50.0 * *right as f64, "{v}");
    }

    // Errors that name the file.
    std::fs::write(dir.path().join("bad.json"), "[[0], [7]]").unwrap();
    let (code, _, err) = eval(&["--real-labels", &p("bad.json")]);
    assert!(code != 0 && err.contains("bad.json") && err.contains("label 7"), "{err}");
    std::fs::rename(&files[0], val.join("a/renamed.JPEG")).unwrap();
    let (code, _, err) = eval(&["--real-labels", &p("real.json")]);
    assert!(code != 0 && err.contains("renamed.JPEG") && err.contains("ILSVRC2012_val_"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `eval` on folders that are not the model's classes in its order, scored against predict's
/// logits: 12 folders named by class index (ImageNet-V2's layout; as text they sort 0, 1, 10, 11,
/// 2, ...) are the classes their numbers say; 3 folders named as 3 of the model's classes
/// (`--classes`, a LOC_synset_mapping.txt for a checkpoint that records none) are scored among
/// those 3 logits only (ImageNet-A/-R's protocol); other folders are an error naming the fix.
#[test]
fn eval_matches_class_folders_by_index_or_by_name() {
    let dir = common::tmpdir();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    resnet_train::data::synthetic::write_dataset(&dir.path().join("src"), 3, 0, 32, 9).unwrap();
    let sources = walk(&dir.path().join("src/train"));
    let (code, _, err) = run(&[
        "init",
        "--arch",
        "resnet18",
        "--num-classes",
        "12",
        "--seed",
        "5",
        "--out",
        &p("m.safetensors"),
    ]);
    assert_eq!(code, 0, "{err}");
    let wnids: Vec<String> = (0..12).map(|i| format!("n{:08}", 1000 + i)).collect();
    let mapping: String = wnids.iter().map(|w| format!("{w} class {w}\n")).collect();
    std::fs::write(p("synsets.txt"), mapping).unwrap();
    // Each image's logits, by file (predict: the same preprocessing, no class matching).
    let logits_of = |files: &[std::path::PathBuf]| -> Vec<Vec<f64>> {
        let mut args =
            vec!["predict".to_string(), "--checkpoint".into(), p("m.safetensors"), "--json".into()];
        args.extend(["--resize", "32", "--crop", "32"].map(String::from));
        args.extend(files.iter().map(|f| f.display().to_string()));
        let (code, out, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    // Top-1 (%) and the mean cross-entropy of images whose true model class is `class`, among the
    // logits of `allowed`.
    let reference = |cases: &[(std::path::PathBuf, usize)], allowed: &[usize]| -> (f64, f64) {
        let files: Vec<_> = cases.iter().map(|c| c.0.clone()).collect();
        let (mut hits, mut loss) = (0, 0.0);
        for (l, c) in logits_of(&files).iter().zip(cases) {
            hits += (allowed.iter().copied().max_by(|&a, &b| l[a].total_cmp(&l[b])) == Some(c.1)) as usize;
            loss += allowed.iter().map(|&a| l[a].exp()).sum::<f64>().ln() - l[c.1];
        }
        (100.0 * hits as f64 / cases.len() as f64, loss / cases.len() as f64)
    };
    let check = |v: &serde_json::Value, (top1, loss): (f64, f64)| {
        assert!((v["top1"].as_f64().unwrap() - top1).abs() < 1e-9, "{v} vs top-1 {top1}");
        assert!(
            (v["loss"].as_f64().unwrap() - loss).abs() < 1e-4 * loss.abs().max(1.0),
            "{v} vs loss {loss}"
        );
    };
    let eval = |data: &str, extra: &[&str]| {
        let (json, model) = (p("eval.json"), p("m.safetensors"));
        let args = [
            &["eval", "--checkpoint", &model, "--data", data, "--json", &json][..],
            &["--size", "32", "--crop-pct", "1.0", "--device", "cpu"],
            extra,
        ]
        .concat();
        let (code, _, err) = run(&args);
        let v = (code == 0).then(|| {
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&json).unwrap()).unwrap()
        });
        (v, err)
    };
    // 12 index-named folders, 2 images each.
    let mut cases = Vec::new();
    for class in 0..12 {
        let folder = dir.path().join("v2").join(class.to_string());
        std::fs::create_dir_all(&folder).unwrap();
        for j in 0..2 {
            let dst = folder.join(format!("{j}.jpg"));
            std::fs::copy(&sources[(class * 2 + j) % sources.len()], &dst).unwrap();
            cases.push((dst, class));
        }
    }
    let (v, err) = eval(&p("v2"), &["--per-class"]);
    let v = v.unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains("named by class index"), "{err}");
    let all: Vec<usize> = (0..12).collect();
    check(&v, reference(&cases, &all));
    let rows = v["per_class"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!((&rows[2]["class"], &rows[2]["name"]), (&serde_json::json!(10), &serde_json::json!("10")));
    // 3 folders named as classes 2, 5 and 11 (by the --classes file): scored among those 3.
    let mut cases = Vec::new();
    for (k, class) in [2usize, 5, 11].into_iter().enumerate() {
        let folder = dir.path().join("subset").join(&wnids[class]);
        std::fs::create_dir_all(&folder).unwrap();
        for j in 0..3 {
            let dst = folder.join(format!("{j}.jpg"));
            std::fs::copy(&sources[(k * 3 + j) % sources.len()], &dst).unwrap();
            cases.push((dst, class));
        }
    }
    let (v, err) = eval(&p("subset"), &["--classes", &p("synsets.txt")]);
    let v = v.unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains("3 of the model's 12 classes"), "{err}");
    check(&v, reference(&cases, &[2, 5, 11]));
    assert_eq!(v["top5"].as_f64().unwrap(), 100.0, "3 classes: the top 3 hold every label");
    // Without the names, or with ReaL labels over a subset: errors that say why.
    let (v, err) = eval(&p("subset"), &[]);
    assert!(v.is_none() && err.contains("give them with --classes"), "{err}");
    std::fs::write(p("real.json"), "[]").unwrap();
    let (v, err) = eval(&p("subset"), &["--classes", &p("synsets.txt"), "--real-labels", &p("real.json")]);
    assert!(v.is_none() && err.contains("--real-labels scores all 12 classes"), "{err}");
}

/// Every `--flag` the documentation shows (README.md, docs/, configs/README.md) is one that
/// `resnet-train` or `imagenet-prep` takes (their `--help`, every subcommand), so a renamed flag
/// cannot leave commands in the docs that users copy and that then fail. Flags of other programs
/// the docs show (torchrun, srun, pip) and clap's aliases are listed by name.
#[test]
fn every_flag_in_the_documentation_exists() {
    let flags = |text: &str| -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for (i, _) in text.match_indices("--") {
            let before = text[..i].chars().next_back();
            let name: String =
                text[i + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            let starts_word = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'));
            if starts_word
                && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                out.insert(format!("--{}", name.trim_end_matches('-')));
            }
        }
        out
    };
    let help = |bin: &str, args: &[&str]| {
        let o = Command::new(bin).args(args).arg("--help").output().expect("binary runs");
        assert!(o.status.success(), "{bin} {args:?} --help: {}", common::output_text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut known = flags(&help(common::bin(), &[]));
    let subcommands =
        "train eval bench report coefficients init average fork schedule predict export make-demo-data \
         bench-data ablate check-act bench-act study launch";
    for sub in subcommands.split_whitespace() {
        known.extend(flags(&help(common::bin(), &[sub])));
    }
    let prep = env!("CARGO_BIN_EXE_imagenet-prep");
    for sub in ["train", "val", "verify", "resize", "shards"] {
        known.extend(flags(&help(prep, &[sub])));
    }
    // Not ours: torchrun's, SLURM's, pip's, cargo's, timm's (configs/README.md's "Coming from
    // timm"); the placeholder of configs/README.md; clap aliases.
    for other in
        "--no-python --nproc-per-node --ntasks-per-node --nodes --signal --requeue --no-deps --key-name --label-smoothing \
         --scale --img-size --input-size --amp --amp-dtype --patience-epochs --test"
            .split_whitespace()
    {
        known.insert(other.to_string());
    }
    let repo = common::repo();
    let mut docs = vec![repo.join("README.md"), repo.join("configs/README.md")];
    for entry in std::fs::read_dir(repo.join("docs")).expect("docs/") {
        let path = entry.expect("a docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut unknown = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        for flag in flags(&text).difference(&known) {
            unknown.push(format!("{}: {flag}", doc.display()));
        }
    }
    assert!(unknown.is_empty(), "flags in the docs that no command takes:\n{}", unknown.join("\n"));
}
