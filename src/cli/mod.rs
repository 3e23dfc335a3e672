//! Command-line interface: one file per subcommand, each turning flags into one library call.
pub mod ablate;
pub mod average;
pub mod bench;
pub mod bench_act;
pub mod bench_data;
pub mod check_act;
pub mod coefficients;
pub mod eval;
pub mod export;
pub mod fork;
pub mod init;
pub mod launch;
pub mod make_demo_data;
pub mod predict;
pub mod report;
pub mod schedule;
pub mod study;
pub mod train;

use clap::{Parser, Subcommand};

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
    /// A model for use elsewhere: TorchScript, or the weights alone; with a model card.
    Export(export::ExportArgs),
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
        Some(Command::Export(a)) => export::run(a),
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
