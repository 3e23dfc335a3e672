//! Command-line interface: one file per subcommand, each turning flags into one library call.
pub mod ablate;
pub mod average;
pub mod bench;
pub mod bench_act;
pub mod bench_data;
pub mod check_act;
pub mod coefficients;
pub mod eval;
pub mod fork;
pub mod init;
pub mod launch;
pub mod make_demo_data;
pub mod predict;
pub mod report;
pub mod schedule;
pub mod study;
pub mod train;

use crate::model::{ActConfig, ActImpl, ActInit, ActKind, Arch, NormAxis, ResNetConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "resnet-train",
    version,
    about = "Train and evaluate ResNets with ReLU, PolyReLU or PolyNorm activations",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: train (the flags of `resnet-train train`).
    #[command(flatten)]
    pub train: crate::train::config::TrainArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train (the default when no subcommand is given). With no --data: the embedded dataset.
    Train(Box<crate::train::config::TrainArgs>),
    /// Top-1 / top-5 / loss of a checkpoint on a folder of class folders.
    Eval(eval::EvalArgs),
    /// Plot train loss and eval top-1/top-5 of one or several runs (SVG or PNG).
    Report(report::ReportArgs),
    /// The learned PolyReLU/PolyNorm coefficients of model files, site by site (table, JSON, figure).
    Coefficients(coefficients::CoefficientsArgs),
    /// Write a freshly initialised model to a safetensors file.
    Init(init::InitArgs),
    /// Average checkpoints' weights into one model file (a run's best N by eval metric).
    Average(average::AverageArgs),
    /// Copy a run at its last checkpoint into a new run that continues on its own (WSD branching).
    Fork(fork::ForkArgs),
    /// The learning rate a config trains with, epoch by epoch (no training).
    Schedule(Box<schedule::ScheduleArgs>),
    /// Classify images with a model file (torchvision's ResNet eval preprocessing).
    Predict(predict::PredictArgs),
    /// Write the embedded default dataset (10 procedural classes, real JPEG files) as an ImageFolder.
    MakeDemoData(make_demo_data::MakeDemoDataArgs),
    /// Stability grid: activation x order x precision (x init x remedy), N steps per cell.
    Ablate(ablate::AblateArgs),
    /// Full training runs over variants x seeds, and whether each variant's difference is real.
    Study(study::StudyArgs),
    /// Data-parallel training on this node's processes (torchrun's environment; c10d).
    Launch(launch::LaunchArgs),
    // Developer tools (listed last): measurements and kernel checks.
    /// [developer] A training config's step on synthetic data (compare with torch_train_bench.py).
    Bench(bench::BenchArgs),
    /// [developer] The input pipeline's decode + augment throughput.
    BenchData(bench_data::BenchDataArgs),
    /// [developer] The fused PolyReLU/PolyNorm against the eager path on a device (run it first on a GPU).
    CheckAct(check_act::CheckActArgs),
    /// [developer] One BatchNorm + activation site, forward and backward, at ResNet-50's site shapes.
    BenchAct(bench_act::BenchActArgs),
}

/// The flags that define a model's shape and initial values.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    #[arg(long, value_enum, default_value = "resnet50")]
    pub arch: Arch,
    /// Activation at every site.
    #[arg(long, value_enum, default_value = "relu")]
    pub act: ActKind,
    /// Polynomial order k of PolyReLU/PolyNorm (1..=8).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..=crate::model::activation::MAX_ORDER))]
    pub order: i64,
    /// Axis of PolyNorm's root mean square.
    #[arg(long, value_enum, default_value = "channel")]
    pub norm_axis: NormAxis,
    /// Initial polynomial coefficients: paper (w = 1/k) or relu-like (w = [1, 0, ...]).
    #[arg(long, value_enum, default_value = "paper")]
    pub act_init: ActInit,
    #[arg(long, default_value_t = 1000, value_parser = crate::train::config::range::int::<i64>(1, 1_000_000), allow_negative_numbers = true)]
    pub num_classes: i64,
    /// Zero-init each residual block's last BN gamma.
    #[arg(long)]
    pub zero_init_residual: bool,
    /// 3x3 stride-1 stem without max-pool, for inputs of 64 px and less.
    #[arg(long)]
    pub small_stem: bool,
    /// FFCV's BlurPool before the strided convolutions (see the `blurpool` config key).
    #[arg(long)]
    pub blurpool: bool,
    /// Clamp the polynomial's input to [-C, C] (a stability remedy).
    #[arg(long, value_parser = crate::train::config::range::float(0.0, 1e6, crate::train::config::range::Ends::AboveMin), allow_negative_numbers = true)]
    pub act_clamp: Option<f64>,
    /// Compute the activations in fp32 under autocast (false: in fp16/bf16).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub act_fp32: bool,
    /// With --act-fp32 under bf16/fp16: return the activations in that dtype instead of fp32.
    #[arg(long)]
    pub act_out_lowp: bool,
    /// PolyReLU/PolyNorm as one fused operator with its own backward (fused; where it applies,
    /// else eager) or as the reference's tensor expression (eager). Same values either way.
    #[arg(long, value_enum, default_value = "fused")]
    pub act_impl: ActImpl,
}

impl ModelArgs {
    pub fn to_config(&self) -> ResNetConfig {
        ResNetConfig {
            arch: self.arch,
            act: ActConfig {
                kind: self.act,
                order: self.order,
                axis: self.norm_axis,
                init: self.act_init,
                clamp: self.act_clamp,
                fp32: self.act_fp32,
                out_lowp: self.act_out_lowp,
                implementation: self.act_impl,
            },
            num_classes: self.num_classes,
            zero_init_residual: self.zero_init_residual,
            small_stem: self.small_stem,
            drop_path_rate: 0.0,
            drop_block_rate: 0.0,
            drop_rate: 0.0,
            blurpool: self.blurpool,
            bn_splits: 0,
            bn_momentum: None,
            bn_eps: None,
        }
    }
}

pub fn run(cli: Cli) -> crate::error::Result<()> {
    crate::runtime::check_environment()?;
    // Commands that print a report (and open no sockets) end quietly when their reader goes away.
    if matches!(
        cli.command,
        Some(
            Command::Eval(_)
                | Command::Report(_)
                | Command::Predict(_)
                | Command::Coefficients(_)
                | Command::Schedule(_)
        )
    ) {
        crate::ffi::process::end_quietly_on_closed_stdout();
    }
    match cli.command {
        None => train::run(cli.train),
        Some(Command::Train(a)) => train::run(*a),
        Some(Command::Eval(a)) => eval::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Report(a)) => report::run(a),
        Some(Command::Coefficients(a)) => coefficients::run(a),
        Some(Command::Init(a)) => init::run(a),
        Some(Command::Average(a)) => average::run(a),
        Some(Command::Schedule(a)) => schedule::run(*a),
        Some(Command::Fork(a)) => fork::run(a),
        Some(Command::Predict(a)) => predict::run(a),
        Some(Command::MakeDemoData(a)) => make_demo_data::run(a),
        Some(Command::BenchData(a)) => bench_data::run(a),
        Some(Command::Ablate(a)) => ablate::run(a),
        Some(Command::Study(a)) => study::run(a),
        Some(Command::CheckAct(a)) => check_act::run(a),
        Some(Command::BenchAct(a)) => bench_act::run(a),
        Some(Command::Launch(a)) => launch::run(a),
    }
}

/// `--cpu-kernels` of the bench commands: selects that build of the fused activations' CPU
/// kernels for the process (`auto`: the instruction set ATen's own kernels use on this CPU), for
/// same-run comparisons; the answer names the build in use.
pub fn use_cpu_kernels(isa: crate::ffi::CpuIsa) -> crate::error::Result<crate::ffi::CpuIsa> {
    crate::ffi::set_polycom_cpu_isa(isa).map_err(|e| {
        crate::error::Error::Usage(format!("--cpu-kernels {}: {e}", format!("{isa:?}").to_lowercase()))
    })?;
    crate::ffi::polycom_cpu_isa()
}
